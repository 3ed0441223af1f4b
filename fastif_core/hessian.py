"""Hessian-vector products, the LiSSA estimate of s_test, and exact references for tests.

H is the Hessian of the batch-mean objective (see :mod:`fastif_core.objective`) over the trainable
parameters. :func:`hvp` computes ``H_b v`` exactly on a batch, by forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``) or double backward; both are kept for the benchmark.

LiSSA (Agarwal et al. 2017, as used by Koh & Liang and FastIF). Repetition t draws J batches of B
training examples with a generator seeded ``cfg.seed + t`` and runs::

    h_0 = v,    h_j = v + (1 - d)·h_{j-1} - H_{b_j} h_{j-1} / s,    estimate_t = h_J / s

with damping d and scale s. Its fixed point solves ``(H/s + d·I) h = v``, i.e.
``estimate = (H + d·s·I)⁻¹ v``: the *effective* damping is d × s (50 for FastIF's MNLI defaults
d=5e-3, s=1e4). The recursion is stable when s exceeds the largest Hessian eigenvalue (and d·s the
most negative one); ``cfg.scale = 0`` estimates s by power iteration (:func:`estimate_scale`).
s_test is the mean of the T estimates; ``rel_std`` is their spread
``sqrt(mean_t ‖e_t - s_test‖²) / ‖s_test‖``.

Parallel use (``parallel.py``): :func:`resolve_scale` once (deterministic), then each rank calls
:func:`lissa_repetitions` on its repetition indices ``t ≡ rank (mod world)``, all-reduces
``partial.to_flat()`` (sum), rebuilds with :meth:`LissaPartial.from_flat` and calls
:func:`finish_lissa`; the result equals the serial :func:`lissa` up to float summation order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from fastif_core.batches import Batch, Examples, sample_indices, to_device
from fastif_core.config import STestConfig
from fastif_core.errors import ConfigError, LissaDivergenceError
from fastif_core.objective import Objective, resolve_device

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], message)

HVP_METHODS = ("forward_over_reverse", "double_backward")
# bench.bench_hvp on the packaged MiniLM (eager attention, MNLI pairs, embeddings + 4 of 6 layers frozen,
# 3.7M trainable), seconds per HVP, double backward vs forward-over-reverse: CPU 2 threads 0.045 vs 0.064 (B=1),
# 0.25 vs 0.27 (B=8); H200 0.016 vs 0.031 (B=1), 0.021 vs 0.040 (B=8). Double backward wins everywhere measured.
DEFAULT_HVP_METHOD = "double_backward"


def hvp(objective: Objective, batch: Batch, v: Tensor, method: str = DEFAULT_HVP_METHOD) -> Tensor:
    """Exact Hessian-vector product ``H_b v`` ``(P,)`` of the batch-mean loss; ``v`` is flat ``(P,)``.

    The data term goes through autodiff; the L2 term's Hessian (``2·wd`` on decayed entries) is added
    analytically, which saves a pass over all parameters inside the autodiff graph.
    The batch must already be on the objective's device; callers run inside ``objective.evaluating()``.
    """
    vs = objective.unflatten(v.to(objective.device, objective.dtype))
    if method == "forward_over_reverse":
        data = _hvp_forward_over_reverse(objective, batch, vs)
    elif method == "double_backward":
        data = _hvp_double_backward(objective, batch, vs)
    else:
        raise ConfigError(f"hvp method={method!r} is invalid: allowed {list(HVP_METHODS)}")
    if objective.weight_decay == 0.0:
        return objective.flatten(data)
    return objective.flatten(data) + objective.flatten(objective.regularizer_hvp(vs))  # + 2·wd·v (decayed)


def _hvp_forward_over_reverse(objective: Objective, batch: Batch, vs: dict[str, Tensor]) -> dict[str, Tensor]:
    def gradient(params: dict[str, Tensor]) -> dict[str, Tensor]:
        return torch.func.grad(lambda p: objective.data_loss(p, batch).mean())(params)

    _, hv = torch.func.jvp(gradient, (objective.params,), (vs,))
    return hv


def _hvp_double_backward(objective: Objective, batch: Batch, vs: dict[str, Tensor]) -> dict[str, Tensor]:
    leaves = {n: p.detach().requires_grad_() for n, p in objective.params.items()}
    inputs = [leaves[n] for n in objective.names]
    loss = objective.data_loss(leaves, batch).mean()
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    hv = torch.autograd.grad(grads, inputs, grad_outputs=[vs[n] for n in objective.names])
    return dict(zip(objective.names, hv, strict=True))


def exact_hessian(objective: Objective, batch: Batch) -> Tensor:
    """The full Hessian ``(P, P)`` of the batch-mean loss (tiny models only: tests and references)."""
    batch = to_device(batch, objective.device)
    flat = objective.flatten(objective.params)

    def loss(theta: Tensor) -> Tensor:
        return objective.batch_loss(objective.unflatten(theta), batch)

    with objective.evaluating():
        return torch.func.hessian(loss)(flat)


def exact_inverse_hvp(objective: Objective, batch: Batch, v: Tensor, damping: float) -> Tensor:
    """Reference ``(H + damping·I)⁻¹ v`` ``(P,)`` by a dense solve; LiSSA's fixed point has damping = d·s."""
    h = exact_hessian(objective, batch)
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return torch.linalg.solve(h + damping * eye, v.to(h.device, h.dtype))


@dataclass
class LissaPartial:
    """Sum of the LiSSA estimates of some repetitions: all-reducible via ``to_flat``/``from_flat``."""

    total: Tensor  # (P,) Σ_t estimate_t
    sq_norm_total: float  # Σ_t ‖estimate_t‖²
    count: int  # number of repetitions summed
    scale: float  # the scale s used (resolved, > 0)
    depths: dict[int, int] = field(default_factory=dict)  # repetition index -> depth actually used
    seconds: float = 0.0

    def to_flat(self) -> Tensor:
        """``(P + 2,)``: ``total`` then ``sq_norm_total`` and ``count``; summing these sums the partials."""
        stats = torch.tensor(
            [self.sq_norm_total, float(self.count)], dtype=self.total.dtype, device=self.total.device
        )
        return torch.cat([self.total, stats])

    @classmethod
    def from_flat(
        cls, flat: Tensor, scale: float, depths: dict[int, int], seconds: float = 0.0
    ) -> LissaPartial:
        """Rebuild a partial from an (all-reduced) ``to_flat`` vector."""
        return cls(flat[:-2], float(flat[-2]), round(float(flat[-1])), scale, dict(depths), seconds)

    def merge(self, other: LissaPartial) -> LissaPartial:
        """The partial of both sets of repetitions (same scale)."""
        return LissaPartial(
            self.total + other.total.to(self.total.device),
            self.sq_norm_total + other.sq_norm_total,
            self.count + other.count,
            self.scale,
            {**self.depths, **other.depths},
            max(self.seconds, other.seconds),
        )


@dataclass
class LissaResult:
    """s_test and how trustworthy it is."""

    s_test: Tensor  # (P,) mean of the T estimates ≈ (H + damping·scale·I)⁻¹ v
    scale: float
    damping: float
    depths: dict[int, int]  # repetition -> depth used (< cfg.depth when stopped early)
    rel_std: float | None  # spread across repetitions, None when T = 1
    norm: float  # ‖s_test‖
    seconds: float

    @property
    def depth_used(self) -> int:
        return max(self.depths.values(), default=0)

    def stats(self) -> dict[str, float | int | None]:
        """JSON-able summary for the store and the UI."""
        return {
            "scale": self.scale,
            "damping": self.damping,
            "effective_damping": self.damping * self.scale,
            "repetitions": len(self.depths),
            "depth_used": self.depth_used,
            "rel_std": self.rel_std,
            "norm": self.norm,
            "seconds": self.seconds,
        }


def estimate_scale(
    objective: Objective,
    train: Examples,
    batch_size: int,
    *,
    batches: int = 8,
    iterations: int = 20,
    seed: int = 0,
    safety: float = 2.0,
    device: torch.device | str | None = None,
) -> float:
    """A LiSSA scale ``safety × max_b |λ_max(H_b)|`` by power iteration on ``batches`` random batches.

    Uses batches of the recursion's own size: with B=1 single-example Hessians must be contracted too.
    """
    device = resolve_device(objective, device)
    gen = torch.Generator().manual_seed(seed)
    largest = 0.0
    with objective.evaluating():
        for _ in range(batches):
            batch = to_device(train.collate(sample_indices(len(train), batch_size, gen)), device)
            u = torch.randn(objective.num_params, generator=gen, dtype=torch.float64).to(
                device, objective.dtype
            )
            largest = max(largest, _power_iteration(objective, batch, u, iterations))
    return safety * max(largest, 1e-8)


def _power_iteration(objective: Objective, batch: Batch, u: Tensor, iterations: int) -> float:
    """|largest-magnitude eigenvalue| of ``H_b`` after ``iterations`` steps from ``u``."""
    u = u / u.norm()
    eig = 0.0
    for _ in range(iterations):
        w = hvp(objective, batch, u)
        eig = abs(float(u @ w))
        norm = float(w.norm())
        if not math.isfinite(norm) or norm == 0.0:
            break
        u = w / norm
    return eig


def resolve_scale(
    objective: Objective, train: Examples, cfg: STestConfig, device: torch.device | str | None = None
) -> STestConfig:
    """``cfg`` with a positive scale: itself, or ``scale`` estimated (deterministically) when it is 0."""
    cfg.validate()
    if cfg.scale > 0:
        return cfg
    return replace(cfg, scale=estimate_scale(objective, train, cfg.batch_size, seed=cfg.seed, device=device))


def lissa_repetitions(
    objective: Objective,
    v: Tensor,
    train: Examples,
    cfg: STestConfig,
    repetitions: Sequence[int],
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD,
) -> LissaPartial:
    """Sum of the LiSSA estimates ``(P,)`` for the given repetition indices (repetition t: seed + t).

    Args:
        v: the test gradient ``(P,)``; moved to the objective's device.
        train: training examples the HVP batches are drawn from.
        cfg: LiSSA settings; ``scale = 0`` is resolved with :func:`resolve_scale` first.
        repetitions: repetition indices t (e.g. ``range(cfg.repeats)``, or a rank's share).
        progress: optional ``(fraction, message)`` callback.

    Raises:
        LissaDivergenceError: non-finite or exploding ``‖h‖`` (message names the step and a scale).
    """
    if len(train) == 0:
        raise ConfigError("LiSSA needs at least one training example to draw HVP batches from")
    device = resolve_device(objective, device)
    cfg = resolve_scale(objective, train, cfg, device)
    v = v.to(device, objective.dtype)
    start = time.perf_counter()
    total, sq, depths = torch.zeros_like(v), 0.0, {}
    with objective.evaluating():
        for i, t in enumerate(repetitions):
            tick = _ticker(progress, i, len(repetitions), cfg.depth, t)
            estimate, depths[int(t)] = _lissa_one(objective, v, train, cfg, int(t), method, tick)
            total += estimate
            sq += float(estimate.double().pow(2).sum())
            if progress is not None:
                progress((i + 1) / len(repetitions), f"s_test repetition {t}: done at depth {depths[int(t)]}")
    return LissaPartial(total, sq, len(depths), cfg.scale, depths, time.perf_counter() - start)


def _ticker(progress: Progress | None, rep: int, reps: int, depth: int, t: int) -> Callable[[int], None]:
    every = max(1, depth // 100)

    def tick(step: int) -> None:
        if progress is not None and step % every == 0 and step < depth:
            progress((rep + step / depth) / reps, f"s_test repetition {t}: step {step}/{depth}")

    return tick


def _lissa_one(
    objective: Objective,
    v: Tensor,
    train: Examples,
    cfg: STestConfig,
    t: int,
    method: str,
    tick: Callable[[int], None],
) -> tuple[Tensor, int]:
    """One repetition: ``(h_J / scale (P,), depth used)``."""
    gen = torch.Generator().manual_seed(cfg.seed + t)
    bound = float(v.norm())
    h, step = v.clone(), 0
    for step in range(1, cfg.depth + 1):
        batch = to_device(train.collate(sample_indices(len(train), cfg.batch_size, gen)), objective.device)
        new = v + (1.0 - cfg.damping) * h - hvp(objective, batch, h, method) / cfg.scale
        norm = _check_finite(new, step, t, cfg, bound)
        converged = cfg.tolerance > 0 and float((new - h).norm()) <= cfg.tolerance * norm
        h = new
        tick(step)
        if converged:
            break
    return h / cfg.scale, step


def _check_finite(h: Tensor, step: int, t: int, cfg: STestConfig, v_norm: float) -> float:
    """``‖h‖``, or a LissaDivergenceError when it is not finite or above ``cfg.max_norm``."""
    norm = float(h.norm())
    if math.isfinite(norm) and norm <= cfg.max_norm:
        return norm
    raise LissaDivergenceError(
        f"LiSSA diverged at step {step}/{cfg.depth} of repetition {t}: ‖h‖ = {norm:.4g} "
        f"(max_norm {cfg.max_norm:.3g}; a stable recursion keeps ‖h_j‖ <= (j+1)·‖v‖ = {(step + 1) * v_norm:.4g}). "
        f"scale={cfg.scale:g} is probably below the largest Hessian eigenvalue: use a larger scale "
        f"(e.g. scale={cfg.scale * 10:g}) or scale=0 to estimate it"
    )


def finish_lissa(partial: LissaPartial, cfg: STestConfig) -> LissaResult:
    """Average a (combined) partial into s_test and its spread across repetitions."""
    if partial.count < 1:
        raise ConfigError("no LiSSA repetitions were run: repetitions must be non-empty")
    s_test = partial.total / partial.count
    norm = float(s_test.double().norm())
    rel_std = None
    if partial.count > 1:
        spread = max(partial.sq_norm_total / partial.count - norm**2, 0.0)  # mean ‖e_t - mean‖²
        rel_std = math.sqrt(spread) / norm if norm > 0 else float("inf")
    return LissaResult(s_test, partial.scale, cfg.damping, partial.depths, rel_std, norm, partial.seconds)


def lissa(
    objective: Objective,
    v: Tensor,
    train: Examples,
    cfg: STestConfig,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD,
) -> LissaResult:
    """s_test ``≈ (H + d·s·I)⁻¹ v`` averaged over ``cfg.repeats`` repetitions (see the module docstring)."""
    partial = lissa_repetitions(objective, v, train, cfg, range(cfg.repeats), device, progress, method)
    return finish_lissa(partial, cfg)
