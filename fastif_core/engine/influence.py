"""Influence of training examples on a test prediction: test gradient, s_test, candidate scores.

Sign convention (the one used everywhere in fastif, as in Koh & Liang 2017 and FastIF)::

    I(z, z_test) = -∇L(z_test)ᵀ H⁻¹ ∇L(z) = -(∇L(z) · s_test),    s_test = H⁻¹ ∇L(z_test)

Positive influence = **harmful** (up-weighting z raises the test loss); negative = **helpful**.
"Most helpful" are the most negative values, "most harmful" the most positive. Here H⁻¹ is the damped
inverse ``(C + μI)⁻¹`` a solver of :mod:`fastif_core.engine.solvers` applies, C the curvature of the
training objective *with* its L2 term (:mod:`fastif_core.engine.objective`).

The gradients (``InfluenceConfig.gradient_l2``): by default (``none``) the test gradient is that of the
test loss ℓ alone (as Koh & Liang and torch-influence) and so are the candidate gradients; the L2 term
enters only the curvature. That is the derivative of the natural leave-one-out change: removing z's loss
term from ``(1/n)Σ_i ℓ_i + wd·Σθ²`` (regulariser kept) and retraining. ``test_and_train`` is the original
FastIF code's convention (``∇(ℓ + wd·Σθ²)`` for both), ``train`` adds the term to candidates only; the
regulariser's gradient ``r = 2·wd·θ`` is the same for every example, so those conventions add a constant
``-rᵀAr`` and test-independent per-candidate terms (the convex leave-one-out benchmark compares them).

One path for one and many test examples: :func:`compute_many` takes M test batches and their
candidate lists, computes the M test gradients, ONE s_test run for all M
(:func:`fastif_core.engine.solvers.solve_many`) and ONE scoring pass over the union of the candidate
sets (:func:`fastif_core.engine.scoring.score_many`, whose cost model picks JVP scoring for one test and
per-example gradients from two on); :func:`compute_influence` is that path with M = 1. Each test's
values equal what it gets alone with the same settings and seeds. "Full" (all training examples) and
"fast" (the kNN candidates) differ only in ``candidates`` and the config.

Why the union: scoring a column for all M tests costs little more than for one (one backward per
candidate plus M dot products), and the kNN sets of M test examples overlap. A pair outside a test's
candidate set is computed too but not reported for that test.

API: :func:`test_gradient`, :func:`test_gradients`, :func:`union_columns`, :func:`compute_many` ->
:class:`ManyInfluence`, :func:`compute_influence` -> :class:`InfluenceResult`, :func:`rank`,
:func:`progress_split`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fastif_core.config import InfluenceConfig
from fastif_core.engine.curvature import DEFAULT_HVP_METHOD
from fastif_core.engine.examples import Batch, Examples, to_device
from fastif_core.engine.objective import Objective, objective_device
from fastif_core.engine.scoring import score_many
from fastif_core.engine.solvers import expected_cost, solve_many
from fastif_core.errors import ConfigError
from fastif_core.progress import Progress, sub_range


def test_gradient(
    objective: Objective,
    test_batch: Batch,
    device: torch.device | str | None = None,
    *,
    include_l2: bool = False,
) -> Tensor:
    """``∇ℓ(z_test)`` ``(P,)``: gradient of the mean data loss over the test batch, eval mode; with
    ``include_l2`` the L2 term's gradient ``2·wd·θ`` (decayed entries) is added (FastIF's code)."""
    objective_device(objective, device)
    with objective.evaluating():
        return objective.grad(test_batch, include_l2=include_l2)


test_gradient.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one


def rank(indices: Tensor, values: Tensor, top: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((helpful indices, values), (harmful indices, values))``, the ``top`` of each (0 = all).

    Helpful are sorted most negative first, harmful most positive first.
    """
    n = len(values) if top == 0 else min(top, len(values))
    helpful = torch.argsort(values, stable=True)[:n]
    harmful = torch.argsort(values, descending=True, stable=True)[:n]
    return (indices[helpful.cpu()], values[helpful]), (indices[harmful.cpu()], values[harmful])


@dataclass
class InfluenceResult:
    """Influence of every candidate on one test batch, and how it was obtained."""

    indices: Tensor  # (k,) long, training-set row numbers (the candidates, in the given order)
    values: Tensor  # (k,) influence; positive = harmful, negative = helpful
    s_test: Tensor  # (P,)
    s_test_stats: dict[str, float | int | str | bool | None]  # STestResult.stats(): solver, hvps, ...
    seconds: dict[str, float]  # test_gradient, s_test, scoring, total

    def helpful(self, top: int) -> tuple[Tensor, Tensor]:
        """The ``top`` most helpful ``(indices, values)``, most negative first (0 = all)."""
        return rank(self.indices, self.values, top)[0]

    def harmful(self, top: int) -> tuple[Tensor, Tensor]:
        """The ``top`` most harmful ``(indices, values)``, most positive first (0 = all)."""
        return rank(self.indices, self.values, top)[1]


def progress_split(cfg: InfluenceConfig, candidates: int) -> float:
    """Share of a query's progress bar spent on s_test (a JVP ≈ 2 forwards per candidate)."""
    cost = expected_cost(cfg.s_test)
    return cost / (cost + 2 * candidates) if cost + candidates > 0 else 0.0


def compute_influence(
    objective: Objective,
    test_batch: Batch,
    train: Examples,
    candidates: Sequence[int] | None,
    cfg: InfluenceConfig,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD,
) -> InfluenceResult:
    """Influence of ``candidates`` (None = every training example, "full") on ``test_batch``:
    :func:`compute_many` with M = 1 (whose cost model scores one test by JVP)."""
    rows = None if candidates is None else [[int(i) for i in candidates]]
    return compute_many(objective, [test_batch], train, rows, cfg, device, progress, method).result(0)


@dataclass
class ManyInfluence:
    """Influence of the union of M candidate sets on M test examples, and how it was obtained."""

    columns: Tensor  # (U,) long: training rows scored (the union: see union_columns)
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
        return InfluenceResult(
            self.candidates[m], self.values[m, self.picks[m]], self.s_test[m], self.s_test_stats[m], share
        )


def test_gradients(
    objective: Objective,
    test_batches: Sequence[Batch],
    device: torch.device | str | None = None,
    *,
    include_l2: bool = False,
) -> Tensor:
    """``V (M, P)``: row m is :func:`fastif_core.engine.influence.test_gradient` of ``test_batches[m]``."""
    device = objective_device(objective, device)
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
    """``(union (U,), per-test candidates, per-test picks into the union)``; None = every row of n for all m.

    The union is ascending, except for one test with distinct candidates: then it is that test's list in
    its own order (so one test's candidates are batched for scoring in the order it gave them)."""
    if candidates is None:
        every = torch.arange(n, dtype=torch.long)
        return every, [every] * m, [every] * m
    if len(candidates) != m:
        raise ConfigError(f"{len(candidates)} candidate lists for {m} test examples: give one per test")
    lists = [torch.as_tensor([int(i) for i in c], dtype=torch.long) for c in candidates]
    if m == 1 and len(torch.unique(lists[0])) == len(lists[0]):
        return lists[0], lists, [torch.arange(len(lists[0]), dtype=torch.long)]
    union = torch.unique(torch.cat(lists)) if lists else torch.zeros(0, dtype=torch.long)  # sorted
    return union, lists, [torch.searchsorted(union, c) for c in lists]


def compute_many(
    objective: Objective,
    test_batches: Sequence[Batch],
    train: Examples,
    candidates: Sequence[Sequence[int]] | None,
    cfg: InfluenceConfig,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD,
    scoring: str = "auto",
) -> ManyInfluence:
    """Influence of each test's ``candidates[m]`` (None = every training row, "full") on ``test_batches[m]``.

    ``scoring``: the :func:`fastif_core.engine.scoring.score_many` path (``auto`` = its cost model).
    """
    cfg.validate()
    device = objective_device(objective, device)
    union, lists, picks = union_columns(candidates, len(test_batches), len(train))
    split = progress_split(cfg, len(union)) if len(union) else 1.0
    t0 = time.perf_counter()
    v = test_gradients(objective, test_batches, device, include_l2=cfg.test_l2)
    t1 = time.perf_counter()
    est = solve_many(objective, v, train, cfg.s_test, device, sub_range(progress, 0.0, split), method)
    t2 = time.perf_counter()
    values = score_many(
        objective,
        est.s_test,
        train,
        union.tolist(),
        cfg.score_batch_size,
        device,
        sub_range(progress, split, 1.0),
        include_l2=cfg.train_l2,
        method=scoring,
    )
    t3 = time.perf_counter()
    seconds = {"test_gradient": t1 - t0, "s_test": t2 - t1, "scoring": t3 - t2, "total": t3 - t0}
    stats = [r.stats() for r in est.results]
    return ManyInfluence(
        union, values, lists, [p.to(values.device) for p in picks], est.s_test, stats, seconds
    )
