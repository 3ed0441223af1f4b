"""Influence questions asked of a prepared workspace: ask, store once, read back.

:func:`influence_query_many` answers M test examples in ONE batched run
(:func:`fastif_core.engine.influence.compute_many`: one batched s_test, one shared scoring pass) and stores
each answer as an influence run; :func:`influence_query` is the same path with M = 1. Examples computed
before with the same settings are answered from the store (``"cached": true``). Each answer is the JSON
object of ``fastif influence`` (its ``seconds`` are its share of the batch: batch stage time / M, plus its
own kNN search). The CLI, the worker (through a ``runner`` on its device group) and the applications call
these same functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastif_core.config import InfluenceConfig, config_hash, to_dict
from fastif_core.errors import ConfigError
from fastif_core.jobs import unique_ids
from fastif_core.progress import Progress
from fastif_core.queries.examples import open_store, require_example
from fastif_core.workspace.layout import LoadedWorkspace

# (loaded workspace, M test batches, candidate positions per test or None = all, config, progress) -> ManyInfluence
Runner = Callable[[LoadedWorkspace, list, "list[list[int]] | None", InfluenceConfig, "Progress | None"], Any]


def stored_config(cfg: InfluenceConfig) -> dict[str, Any]:
    """The settings that determine the scores, as stored with a run (``top`` only selects what is shown)."""
    data = to_dict(cfg)
    data.pop("top")
    return data


def cache_key(cfg: InfluenceConfig) -> str:
    """Hash under which a run is stored: the store hashes :func:`stored_config` the same way."""
    return config_hash(stored_config(cfg))


def serial_runner(
    loaded: LoadedWorkspace,
    batches: list,
    candidates: list[list[int]] | None,
    cfg: InfluenceConfig,
    progress: Progress | None,
) -> Any:
    """One process: M test gradients, one batched s_test, one shared scoring pass on the workspace's device."""
    from fastif_core.engine.influence import compute_many

    return compute_many(loaded.objective, batches, loaded.train, candidates, cfg, loaded.device, progress)


def check_request(manifest: dict[str, Any], cfg: InfluenceConfig) -> None:
    """Reject k larger than the training set before any work is done."""
    cfg.validate()
    n = int(manifest["num_train"])
    if cfg.k is not None and cfg.k > n:
        raise ConfigError(f"k={cfg.k} is larger than the training set ({n} examples): use k <= {n} or --full")


def influence_query(
    root: str | Path,
    example_id: str,
    cfg: InfluenceConfig,
    *,
    device: str = "cpu",
    loaded: LoadedWorkspace | None = None,
    runner: Runner = serial_runner,
    progress: Progress | None = None,
    show_progress: bool = False,
    job_id: int | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Most helpful / harmful training examples for ``example_id``: :func:`influence_query_many` of one
    example (a job's result is ``{"influence_run_id": id}``)."""
    return _query(
        root,
        [example_id],
        cfg,
        device,
        loaded,
        runner,
        progress,
        show_progress,
        job_id,
        owner,
        lambda ids: {"influence_run_id": ids[0]},
    )[0]


def influence_query_many(
    root: str | Path,
    example_ids: Sequence[str],
    cfg: InfluenceConfig,
    *,
    device: str = "cpu",
    loaded: LoadedWorkspace | None = None,
    runner: Runner = serial_runner,
    progress: Progress | None = None,
    show_progress: bool = False,
    job_id: int | None = None,
    owner: str | None = None,
) -> list[dict[str, Any]]:
    """Each example's answer, in the given order, from one batched run (examples already stored under these
    settings are read back, ``"cached": true``). Every id is checked before any work; with
    ``job_id``/``owner`` the new runs and the job's ``done`` land in one transaction."""
    return _query(
        root,
        example_ids,
        cfg,
        device,
        loaded,
        runner,
        progress,
        show_progress,
        job_id,
        owner,
        lambda ids: {"influence_run_ids": ids},
    )


def _query(
    root: str | Path,
    example_ids: Sequence[str],
    cfg: InfluenceConfig,
    device: str,
    loaded: LoadedWorkspace | None,
    runner: Runner,
    progress: Progress | None,
    show_progress: bool,
    job_id: int | None,
    owner: str | None,
    job_result: Callable[[list[int]], dict[str, Any]],
) -> list[dict[str, Any]]:
    from fastif_core.store.batch_runs import save_runs

    store, manifest = open_store(root)
    try:
        check_request(manifest, cfg)
        ids, model_id = unique_ids(example_ids), int(manifest["model_id"])
        examples = {i: require_example(store, i, model_id) for i in ids}
        answers: dict[str, dict[str, Any]] = {}
        for i in ids:
            if (found := store.find_influence_run(model_id, i, cache_key(cfg))) is not None:
                answers[i] = run_to_dict(store.get_influence_run(found.id), cfg.top, cached=True)
        todo = [i for i in ids if i not in answers]
        if todo:
            loaded = loaded or LoadedWorkspace.load(root, device)
            bar = _tqdm(show_progress)  # after loading: a damaged workspace is one line on stderr, no bar
            runs, notes = _compute(loaded, todo, examples, cfg, runner, _chain(progress, bar))
            if bar is not None:
                bar.close()
            saved = save_runs(store, runs, job_id=job_id, owner=owner, result=job_result)
            for i, run_id in zip(todo, saved, strict=True):
                answers[i] = {
                    **run_to_dict(store.get_influence_run(run_id), cfg.top, cached=False),
                    "warnings": notes[i],
                }
        return [answers[i] for i in ids]
    finally:
        store.close()


def _compute(
    loaded: LoadedWorkspace,
    todo: list[str],
    examples: dict[str, Any],
    cfg: InfluenceConfig,
    runner: Runner,
    report: Progress | None,
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """kNN per example, one batched run, and each example's run (as ``Store.save_influence_run`` takes it)."""
    knn: list[float] = []
    positions: list[list[int]] | None = None if cfg.k is None else []
    notes: dict[str, list[str]] = {}
    for i in todo:
        t0 = time.perf_counter()
        if positions is not None:
            positions.append(loaded.nearest(i, cfg.k)[0])
        knn.append(time.perf_counter() - t0)
        notes[i] = (
            []
            if cfg.k is None or not getattr(loaded.index, "last_fallback", 0)
            else [
                f"the approximate index found fewer than k={cfg.k} neighbours in the cells it probes "
                f"(nprobe={loaded.index.cfg.nprobe}); they were found by exact search"
            ]
        )
    batches = [loaded.encode_test(examples[i].to_record()) for i in todo]
    many = runner(loaded, batches, positions, cfg, report)
    runs = []
    for m, i in enumerate(todo):
        one = many.result(m)
        seconds = {"knn": knn[m], **one.seconds, "total": knn[m] + one.seconds["total"]}
        scores = [
            (loaded.train_ids[p], float(v))
            for p, v in zip(one.indices.tolist(), one.values.tolist(), strict=True)
        ]
        runs.append(
            {
                "model_id": loaded.model_id,
                "example_id": i,
                "config": stored_config(cfg),
                "scores": scores,
                "num_candidates": len(scores),
                "timings": seconds,
                "s_test_stats": one.s_test_stats,
            }
        )
    return runs, notes


def find_stored(root: str | Path, example_id: str, cfg: InfluenceConfig) -> dict[str, Any] | None:
    """The stored answer for this request, or None (no computation)."""
    store, manifest = open_store(root)
    try:
        found = store.find_influence_run(int(manifest["model_id"]), example_id, cache_key(cfg))
        return run_to_dict(store.get_influence_run(found.id), cfg.top, cached=True) if found else None
    finally:
        store.close()


def run_to_dict(run: Any, top: int, *, cached: bool) -> dict[str, Any]:
    """The JSON answer of ``fastif influence`` for a stored run (``top`` 0 = every candidate)."""
    n = None if top == 0 else top

    def rows(scores: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "train_id": s.train_id,
                "influence": s.value,
                "premise": s.premise,
                "hypothesis": s.hypothesis,
                "label": s.label,
            }
            for s in scores
        ]

    return {
        "example_id": run.example_id,
        "run_id": run.id,
        "model_id": run.model_id,
        "config": {**run.config, "top": top},
        "num_candidates": run.num_candidates,
        "seconds": dict(run.timings),
        "s_test": dict(run.s_test_stats),
        "helpful": rows(run.helpful(n)),
        "harmful": rows(run.harmful(n)),
        "cached": cached,
    }


def _tqdm(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=1000, desc="influence", unit="‰", leave=False)


def _chain(progress: Progress | None, bar: Any) -> Progress | None:
    if progress is None and bar is None:
        return None

    def report(fraction: float, message: str) -> None:
        if bar is not None:
            bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
            bar.set_postfix_str(message, refresh=True)
        if progress is not None:
            progress(fraction, message)

    return report
