"""Influence for M test examples in one pass (tensors in, tensors out): M test gradients, ONE batched
s_test run (:func:`fastif_core.batched.solve_many`) and ONE shared scoring pass
(:func:`fastif_core.scoring.score_many`) over the union of their candidate sets.

Each test's values equal what :func:`fastif_core.influence.compute_influence` gives it alone with the
same settings and seeds: its s_test is the single solve's (same batches), and its candidates' values are
``-(∇ℓ(z) · s_test)`` read from its own columns of the ``(M, |union|)`` scores (the two scoring paths
agree to float rounding: ``tests/test_scoring.py``). A pair outside a test's candidate set is computed
too (a column is scored for all M tests at once) but not reported for that test.

Why the union: a per-example-gradient pass costs about one backward per candidate plus M dot products,
so scoring a column for all M tests costs little more than for one, and the kNN sets of M test
examples overlap (near-duplicates, the same genre): on the 8K MNLI workspace 32 tests × k = 1,000 score
far fewer distinct columns than 32,000.

API: :func:`test_gradients`, :func:`union_columns`, :func:`compute_many` -> :class:`ManyInfluence`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fastif_core.batched import solve_many
from fastif_core.batches import Batch, Examples, to_device
from fastif_core.config import InfluenceConfig
from fastif_core.errors import ConfigError
from fastif_core.hessian import DEFAULT_HVP_METHOD, Progress
from fastif_core.influence import InfluenceResult, _sub_progress, progress_split, test_gradient
from fastif_core.objective import Objective, resolve_device
from fastif_core.scoring import score_many


@dataclass
class ManyInfluence:
    """Influence of the union of M candidate sets on M test examples, and how it was obtained."""

    columns: Tensor  # (U,) long: training rows scored (the union, ascending)
    values: Tensor  # (M, U) influence; positive = harmful, negative = helpful
    candidates: list[Tensor]  # per test, its candidate rows in the given order (k,) long
    picks: list[Tensor]  # per test, the columns of its candidates: values[m, picks[m]]
    s_test: Tensor  # (M, P)
    s_test_stats: list[dict]  # STestResult.stats() per test
    seconds: dict[str, float]  # test_gradient, s_test, scoring, total (the whole batch)

    def __len__(self) -> int:
        return len(self.candidates)

    def result(self, m: int) -> InfluenceResult:
        """Test m's answer as a single query's :class:`InfluenceResult` (seconds: its share ``/ M``)."""
        share = {k: v / len(self) for k, v in self.seconds.items()}
        return InfluenceResult(self.candidates[m], self.values[m, self.picks[m]], self.s_test[m],
                               self.s_test_stats[m], share)  # fmt: skip


def test_gradients(
    objective: Objective, test_batches: Sequence[Batch], device: torch.device | str | None = None,
    *, include_l2: bool = False,
) -> Tensor:  # fmt: skip
    """``V (M, P)``: row m is :func:`fastif_core.influence.test_gradient` of ``test_batches[m]``."""
    device = resolve_device(objective, device)
    if not test_batches:
        raise ConfigError("no test examples: give at least one")
    rows = [
        test_gradient(objective, to_device(b, device), device, include_l2=include_l2) for b in test_batches
    ]
    return torch.stack(rows)


test_gradients.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one


def union_columns(
    candidates: Sequence[Sequence[int]] | None, m: int, n: int
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``(union (U,), per-test candidates, per-test picks into the union)``; None = every row of n for all m."""
    if candidates is None:
        every = torch.arange(n, dtype=torch.long)
        return every, [every] * m, [every] * m
    if len(candidates) != m:
        raise ConfigError(f"{len(candidates)} candidate lists for {m} test examples: give one per test")
    lists = [torch.as_tensor([int(i) for i in c], dtype=torch.long) for c in candidates]
    union = torch.unique(torch.cat(lists)) if lists else torch.zeros(0, dtype=torch.long)  # sorted
    return union, lists, [torch.searchsorted(union, c) for c in lists]


def compute_many(
    objective: Objective, test_batches: Sequence[Batch], train: Examples,
    candidates: Sequence[Sequence[int]] | None, cfg: InfluenceConfig, device: torch.device | str | None = None,
    progress: Progress | None = None, method: str = DEFAULT_HVP_METHOD, scoring: str = "auto",
) -> ManyInfluence:  # fmt: skip
    """Influence of each test's ``candidates[m]`` (None = every training row, "full") on ``test_batches[m]``.

    ``scoring``: the :func:`fastif_core.scoring.score_many` path (``auto`` = its cost model).
    """
    cfg.validate()
    device = resolve_device(objective, device)
    union, lists, picks = union_columns(candidates, len(test_batches), len(train))
    split = progress_split(cfg, len(union)) if len(union) else 1.0
    t0 = time.perf_counter()
    v = test_gradients(objective, test_batches, device, include_l2=cfg.test_l2)
    t1 = time.perf_counter()
    est = solve_many(objective, v, train, cfg.s_test, device, _sub_progress(progress, 0.0, split), method)
    t2 = time.perf_counter()
    values = score_many(objective, est.s_test, train, union.tolist(), cfg.score_batch_size, device,
                        _sub_progress(progress, split, 1.0), include_l2=cfg.train_l2, method=scoring)  # fmt: skip
    t3 = time.perf_counter()
    seconds = {"test_gradient": t1 - t0, "s_test": t2 - t1, "scoring": t3 - t2, "total": t3 - t0}
    stats = [r.stats() for r in est.results]
    return ManyInfluence(
        union, values, lists, [p.to(values.device) for p in picks], est.s_test, stats, seconds
    )
