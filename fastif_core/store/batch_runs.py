"""Several influence runs written in one transaction (the answers of one batched many-example query),
with the job that computed them marked done in the same transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastif_core.store import jobs_queue as jq
from fastif_core.store import results as res


def save_runs(
    store: Any,
    runs: Sequence[dict[str, Any]],
    *,
    job_id: int | None = None,
    owner: str | None = None,
    result: Callable[[list[int]], dict[str, Any]] | None = None,
) -> list[int]:
    """Store every run (``Store.save_influence_run``'s arguments as a dict: ``model_id``, ``example_id``,
    ``config``, ``scores``, ``num_candidates``, ``timings``, ``s_test_stats``); returns their ids in order.

    A run already stored under the same key is kept as is (retried writes are idempotent). With
    ``job_id``/``owner`` the job is done (``result(ids)``, default ``{"influence_run_ids": ids}``) in the same
    transaction, and LeaseLostError is raised, nothing written, if ``owner`` lost the job.
    """
    with store.transaction() as s:
        if job_id is not None:
            jq.owned(s, job_id, owner or "")
        ids = [
            res.save_run(
                s,
                r["model_id"],
                r["example_id"],
                r["config"],
                r["scores"],
                r.get("num_candidates"),
                r.get("timings"),
                r.get("s_test_stats"),
                job_id,
            ).id
            for r in runs
        ]
        if job_id is not None:
            jq.complete(s, job_id, owner or "", result(ids) if result else {"influence_run_ids": ids})
    return ids
