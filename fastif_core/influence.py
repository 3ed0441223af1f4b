"""Influence of training examples on a test prediction: test gradient, s_test, candidate scores.

Sign convention (the one used everywhere in fastif, as in Koh & Liang 2017 and FastIF)::

    I(z, z_test) = -∇L(z_test)ᵀ H⁻¹ ∇L(z) = -(∇L(z) · s_test),    s_test = H⁻¹ ∇L(z_test)

Positive influence = **harmful** (up-weighting z raises the test loss); negative = **helpful**.
"Most helpful" are the most negative values, "most harmful" the most positive. Here H⁻¹ is the damped
inverse ``(C + μI)⁻¹`` a solver of :mod:`fastif_core.solvers` applies, C the curvature of the
training objective *with* its L2 term (:mod:`fastif_core.objective`).

The gradients (``InfluenceConfig.gradient_l2``): by default (``none``) the test gradient is that of the
test loss ℓ alone (as Koh & Liang and torch-influence) and so are the candidate gradients; the L2 term
enters only the curvature. That is the derivative of the natural leave-one-out change: removing z's loss
term from ``(1/n)Σ_i ℓ_i + wd·Σθ²`` (regulariser kept) and retraining. ``test_and_train`` is the original
FastIF code's convention (``∇(ℓ + wd·Σθ²)`` for both), ``train`` adds the term to candidates only; the
regulariser's gradient ``r = 2·wd·θ`` is the same for every example, so those conventions add a constant
``-rᵀAr`` and test-independent per-candidate terms (the convex leave-one-out benchmark compares them).

"Full" (all training examples, the original estimator settings) and "fast" (the kNN candidates,
FastIF's LiSSA settings) both go through :func:`compute_influence`; only ``candidates`` and the
config differ.

API: :func:`test_gradient`, :func:`score_candidates` (batched forward-mode ``torch.func.jvp`` of the
per-example loss vector: ``∇L(z_i)·s_test`` for a whole batch in about one forward pass, memory
O(parameters), no per-example gradients), :func:`score_candidates_reference` (per-example backward
loop, for tests), :func:`compute_influence` -> :class:`InfluenceResult`, :func:`rank`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fastif_core.batches import Batch, Examples, length_sorted_chunks, to_device
from fastif_core.config import InfluenceConfig
from fastif_core.hessian import DEFAULT_HVP_METHOD, Progress
from fastif_core.objective import Objective, resolve_device
from fastif_core.solvers import expected_cost, solve


def test_gradient(
    objective: Objective,
    test_batch: Batch,
    device: torch.device | str | None = None,
    *,
    include_l2: bool = False,
) -> Tensor:
    """``∇ℓ(z_test)`` ``(P,)``: gradient of the mean data loss over the test batch, eval mode; with
    ``include_l2`` the L2 term's gradient ``2·wd·θ`` (decayed entries) is added (FastIF's code)."""
    resolve_device(objective, device)
    with objective.evaluating():
        return objective.grad(test_batch, include_l2=include_l2)


test_gradient.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one


def _regularizer_dot(objective: Objective, s: dict[str, Tensor]) -> Tensor:
    """``∇(wd·Σθ²) · s = 2·wd·Σ_decayed θ·s``: the same for every candidate, added analytically."""
    if objective.weight_decay == 0.0 or not objective.decayed:
        return torch.zeros((), dtype=objective.dtype, device=objective.device)
    params = objective.params
    return 2.0 * objective.weight_decay * sum((params[n] * s[n]).sum() for n in objective.decayed)


def _jvp_loss_dots(objective: Objective, batch: Batch, s: dict[str, Tensor]) -> Tensor:
    """``∇ℓ(z_i) · s`` ``(B,)`` for every row by one forward-mode pass (data term only)."""

    def losses(params: dict[str, Tensor]) -> Tensor:
        return objective.data_loss(params, batch)

    _, tangent = torch.func.jvp(losses, (objective.params,), (s,))
    return tangent


def score_candidates(
    objective: Objective,
    s_test: Tensor,
    train: Examples,
    indices: Sequence[int],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    *,
    include_l2: bool = False,
) -> Tensor:
    """Influence ``-(∇ℓ(z_i)·s_test)`` ``(k,)`` of ``train[indices[i]]``, in the order of ``indices``
    (``include_l2``: ``∇(ℓ + wd·Σθ²)``, the same L2 dot added to every candidate).

    Candidates are batched by similar length (longest first) to minimise padding; results are
    scattered back to the input order. Memory is O(parameters + one batch of activations).
    """
    device = resolve_device(objective, device)
    s = objective.unflatten(s_test.to(device, objective.dtype))
    idx = torch.as_tensor([int(i) for i in indices], dtype=torch.long)
    out = torch.empty(len(idx), dtype=objective.dtype, device=device)
    lengths = train.lengths()[idx] if len(idx) else torch.zeros(0, dtype=torch.long)
    with objective.evaluating(), torch.no_grad():
        reg = (
            _regularizer_dot(objective, s) if include_l2 else torch.zeros((), dtype=out.dtype, device=device)
        )
        done = 0
        for positions in length_sorted_chunks(range(len(idx)), lengths, batch_size):
            batch = to_device(train.collate(idx[positions].tolist()), device)
            out[torch.as_tensor(positions, device=device)] = -(_jvp_loss_dots(objective, batch, s) + reg)
            done += len(positions)
            if progress is not None:
                progress(done / len(idx), f"scored {done}/{len(idx)} candidates")
    return out


def score_candidates_reference(
    objective: Objective,
    s_test: Tensor,
    train: Examples,
    indices: Sequence[int],
    device: torch.device | str | None = None,
    *,
    include_l2: bool = False,
) -> Tensor:
    """The slow reference: one full backward per candidate, ``-(∇ℓ(z_i)·s_test)`` ``(k,)``."""
    device = resolve_device(objective, device)
    s = s_test.to(device, objective.dtype)
    values = []
    with objective.evaluating():
        for i in indices:
            values.append(-(objective.grad(train.collate([int(i)]), include_l2=include_l2) @ s))
    return torch.stack(values) if values else torch.empty(0, dtype=objective.dtype, device=device)


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


def _sub_progress(progress: Progress | None, start: float, end: float) -> Progress | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * fraction, message)


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
    """Influence of ``candidates`` (None = every training example, "full") on ``test_batch``.

    s_test comes from the solver of ``cfg.s_test`` over ``train``; candidates are scored with
    :func:`score_candidates` in batches of ``cfg.score_batch_size``; ``cfg.gradient_l2`` says which
    gradients carry the L2 term. ``progress`` gets ``(fraction, message)``, with the fraction split by
    the estimated cost of the two stages.
    """
    cfg.validate()
    device = resolve_device(objective, device)
    rows = list(range(len(train))) if candidates is None else [int(i) for i in candidates]
    split = progress_split(cfg, len(rows))
    t0 = time.perf_counter()
    v = test_gradient(objective, test_batch, device, include_l2=cfg.test_l2)
    t1 = time.perf_counter()
    est = solve(objective, v, train, cfg.s_test, device, _sub_progress(progress, 0.0, split), method)
    t2 = time.perf_counter()
    values = score_candidates(
        objective, est.s_test, train, rows, cfg.score_batch_size, device, _sub_progress(progress, split, 1.0),
        include_l2=cfg.train_l2,
    )  # fmt: skip
    t3 = time.perf_counter()
    seconds = {"test_gradient": t1 - t0, "s_test": t2 - t1, "scoring": t3 - t2, "total": t3 - t0}
    return InfluenceResult(torch.as_tensor(rows, dtype=torch.long), values, est.s_test, est.stats(), seconds)
