"""s_test solvers: ``s_test ≈ (C + μI)⁻¹ v`` for the test gradient v (tensors in, tensors out).

C is the curvature of the batch-mean training loss (:mod:`fastif_core.engine.curvature`: the Hessian or its
Gauss-Newton part), μ the effective damping (``STestConfig.effective_damping``). Two solvers:

**LiSSA** (Agarwal et al. 2017, as used by Koh & Liang and FastIF). Repetition t draws J batches of B
training examples with a generator seeded ``cfg.seed + t`` and runs::

    h_0 = v,    h_j = v + (1 - d)·h_{j-1} - C_{b_j} h_{j-1} / s,    estimate_t = h_J / s

Its fixed point is ``(C + d·s·I)⁻¹ v``: μ = d·s (50 at FastIF's d=5e-3, s=1e4). It needs s > λ_max(C_b)
for every batch, and contracts a direction of curvature λ by ``1 - d - λ/s`` per step: flat directions
by only ``1 - d``, so at d = 5e-3 J=1000 steps reach 99% of the fixed point there but J=100 only 39%.
With ``mu > 0`` the scale may be estimated (``scale = 0``: power iteration, cached per objective) and
``d = μ/s`` keeps the same system. Step noise at small B defeats a plain relative-change test; with
``window = W`` the iterates are averaged over blocks of W steps, the estimate is the last block mean
(tail averaging), and the run stops when two consecutive block means differ by less than ``tolerance``.

**CG** (conjugate gradient) on one fixed batch of B examples drawn with ``cfg.seed + t``: solves
``(C_b + μI) x = v`` to ``‖r‖ / ‖v‖ <= tolerance`` in about ``sqrt(κ)`` curvature products, κ the
condition number. It needs ``C_b + μI`` positive definite: always true for Gauss-Newton; the true
Hessian of a trained transformer is indefinite and CG then stops with
:class:`~fastif_core.errors.CurvatureBreakdownError` (it never returns the garbage CG produces there).

**Direct** (``solver=direct``, Gauss-Newton only): the same fixed batch as CG, but ``(G_b + μI)⁻¹ v`` by
the Woodbury identity on the batch's low-rank factor (:mod:`fastif_core.engine.woodbury`): exact, no iterations.
The factor costs a few batched backward passes and is kept on the objective (one at a time, dropped when
the parameters change), so the next query on the same model and batch pays two products with it.

All average T repetitions; ``rel_std`` is their spread ``sqrt(mean_t ‖e_t - s_test‖²) / ‖s_test‖``.
Every solver checks each step for non-finite values and exploding norms and reports its curvature-product
count (``hvps``) and its final convergence measure (CG: relative residual; LiSSA: relative change).

One API for 1 or M right-hand sides: :func:`solve_many` takes ``V (M, P)`` and runs the M vectors in
lockstep (:mod:`fastif_core.engine.iterations`: shared batch draws, one curvature-product call per batch);
:func:`solve` is :func:`solve_many` with M = 1. Each row gets exactly the s_test it gets alone.

Parallel use (:mod:`fastif_core.parallel.spmd`): :func:`resolve` once (deterministic), each rank calls
:func:`solve_many_repetitions` on its repetition indices ``t ≡ rank (mod world)``, all-reduces
:func:`many_to_flat` (one sum for all M), rebuilds with :func:`many_from_flat` and calls :func:`finish_many`;
the result equals the serial :func:`solve_many` up to float summation order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from fastif_core.config import STestConfig
from fastif_core.engine.curvature import DEFAULT_HVP_METHOD, estimate_scale
from fastif_core.engine.examples import Examples
from fastif_core.engine.iterations import STEPS, RepStats, direct_factor, direct_in_place, effective_damping
from fastif_core.engine.objective import Objective, objective_device
from fastif_core.errors import ConfigError
from fastif_core.progress import Progress

SCALE_BATCHES, SCALE_ITERATIONS = 4, 10  # power iteration for scale = 0: 40 curvature products


@dataclass
class STestPartial:
    """Sum of the estimates of some repetitions: all-reducible via ``to_flat``/``from_flat``."""

    total: Tensor  # (P,) Σ_t estimate_t
    sq_norm_total: float  # Σ_t ‖estimate_t‖²
    count: int  # number of repetitions summed
    scale: float  # the LiSSA scale s used (resolved, > 0; 0 for CG)
    reps: dict[int, RepStats] = field(default_factory=dict)
    seconds: float = 0.0
    scale_hvps: int = 0  # curvature products spent estimating the scale

    def to_flat(self) -> Tensor:
        """``(P + 2,)``: ``total`` then ``sq_norm_total`` and ``count``; summing these sums the partials."""
        stats = torch.tensor(
            [self.sq_norm_total, float(self.count)], dtype=self.total.dtype, device=self.total.device
        )
        return torch.cat([self.total, stats])

    @classmethod
    def from_flat(
        cls, flat: Tensor, scale: float, reps: dict[int, RepStats], seconds: float = 0.0, scale_hvps: int = 0
    ) -> STestPartial:
        """Rebuild a partial from an (all-reduced) ``to_flat`` vector."""
        return cls(flat[:-2], float(flat[-2]), round(float(flat[-1])), scale, dict(reps), seconds, scale_hvps)

    def merge(self, other: STestPartial) -> STestPartial:
        """The partial of both sets of repetitions (same settings)."""
        return STestPartial(
            self.total + other.total.to(self.total.device),
            self.sq_norm_total + other.sq_norm_total,
            self.count + other.count,
            self.scale,
            {**self.reps, **other.reps},
            max(self.seconds, other.seconds),
            max(self.scale_hvps, other.scale_hvps),
        )


@dataclass
class STestResult:
    """s_test and how trustworthy it is."""

    s_test: Tensor  # (P,) mean of the T estimates ≈ (C + μI)⁻¹ v
    cfg: STestConfig  # resolved: scale > 0 for LiSSA, damping = μ/scale when mu was set
    reps: dict[int, RepStats]
    rel_std: float | None  # spread across repetitions, None when T = 1
    norm: float  # ‖s_test‖
    seconds: float
    scale_hvps: int = 0

    @property
    def depths(self) -> dict[int, int]:
        return {t: r.depth for t, r in self.reps.items()}

    @property
    def depth_used(self) -> int:
        return max(self.depths.values(), default=0)

    @property
    def hvps(self) -> int:
        """Curvature-vector products of all repetitions (and of the scale estimate)."""
        return sum(r.hvps for r in self.reps.values()) + self.scale_hvps

    @property
    def scale(self) -> float:
        return self.cfg.scale

    @property
    def damping(self) -> float:
        return self.cfg.damping

    def stats(self) -> dict[str, float | int | str | bool | None]:
        """JSON-able summary for the store and the UI."""
        measures = [r.measure for r in self.reps.values()]
        flags = [r.converged for r in self.reps.values()]
        key = "change" if self.cfg.solver == "lissa" else "residual"
        return {
            "solver": self.cfg.solver,
            "curvature": self.cfg.curvature,
            "batch_size": self.cfg.batch_size,
            "hvps": self.hvps,
            key: max(measures, default=None),
            "converged": _all_or_none(flags),
            "scale": self.cfg.scale,
            "damping": self.cfg.damping,
            "effective_damping": effective_damping(self.cfg),
            "repetitions": len(self.reps),
            "depth_used": self.depth_used,
            "rel_std": self.rel_std,
            "norm": self.norm,
            "seconds": self.seconds,
        }


@dataclass
class ManySTest:
    """s_test of M test gradients from one solver run."""

    s_test: Tensor  # (M, P); row m ≈ (C + μI)⁻¹ V[m]
    results: list[STestResult]  # results[m].s_test is the view s_test[m]; stats per vector
    seconds: float  # wall time of the whole batched solve


def _all_or_none(flags: list[bool | None]) -> bool | None:
    return None if not flags or any(f is None for f in flags) else all(flags)


def resolve(
    objective: Objective, train: Examples, cfg: STestConfig, device: torch.device | str | None = None
) -> tuple[STestConfig, int]:
    """``(cfg with a positive LiSSA scale and d = μ/s when mu is set, curvature products spent)``.

    ``scale = 0`` is estimated deterministically (seeded) and cached on the objective, so every rank and
    every later query of a worker resolves the same scale without paying for it again.
    """
    cfg.validate()
    if cfg.solver != "lissa":
        return cfg, 0
    spent = 0
    if cfg.scale == 0:
        key = (cfg.batch_size, cfg.seed, cfg.curvature)
        cache = objective.__dict__.setdefault("_scale_cache", {})
        if key not in cache:
            cache[key] = estimate_scale(
                objective,
                train,
                cfg.batch_size,
                batches=SCALE_BATCHES,
                iterations=SCALE_ITERATIONS,
                seed=cfg.seed,
                device=device,
                curvature=cfg.curvature,
            )
            spent = SCALE_BATCHES * SCALE_ITERATIONS
        cfg = replace(cfg, scale=cache[key])
    if cfg.mu > 0:
        if cfg.mu >= cfg.scale:
            raise ConfigError(
                f"mu={cfg.mu:g} must be below the LiSSA scale {cfg.scale:g} (d = mu/scale < 1): raise scale"
            )
        cfg = replace(cfg, damping=cfg.mu / cfg.scale)
    return cfg, spent


def _vectors(objective: Objective, v: Tensor, device: torch.device) -> Tensor:
    if v.dim() != 2 or v.shape[1] != objective.num_params:
        raise ConfigError(f"V has shape {tuple(v.shape)}; expected (M, {objective.num_params})")
    return v.to(device, objective.dtype)


@dataclass
class _Sums:
    """Per-vector running sums over repetitions."""

    total: Tensor  # (M, P)
    sq: list[float]
    reps: list[dict[int, RepStats]] = field(default_factory=list)


def solve_many_repetitions(
    objective: Objective,
    v: Tensor,
    train: Examples,
    cfg: STestConfig,
    repetitions: Sequence[int],
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD,
    batched: bool | None = None,
) -> list[STestPartial]:
    """Per test vector, the sum of the estimates of the given repetitions (as
    :func:`solve_repetitions` of each row of ``v (M, P)``); ``batched`` None = on CUDA with M > 1."""
    if len(train) == 0:
        raise ConfigError("s_test needs at least one training example to draw curvature batches from")
    device = objective_device(objective, device)
    vs = _vectors(objective, v, device)
    cfg, spent = resolve(objective, train, cfg, device)
    # one autograd call for many products pays on CUDA only; one vector keeps the plain product
    batched = device.type == "cuda" and len(vs) > 1 if batched is None else batched
    one = STEPS[cfg.solver]
    start, reps = time.perf_counter(), list(repetitions)
    sums = _Sums(torch.zeros_like(vs), [0.0] * len(vs), [{} for _ in vs])
    with objective.evaluating():
        for i, t in enumerate(reps):

            def tick(fraction: float, message: str, i: int = i, t: int = t) -> None:
                if progress is not None:
                    progress((i + fraction) / len(reps), f"s_test ({cfg.solver}) repetition {t}: {message}")

            for m, (estimate, stats) in enumerate(
                one(objective, vs, train, cfg, int(t), method, batched, tick)
            ):
                sums.total[m] += estimate
                sums.sq[m] += float(estimate.double().pow(2).sum())
                sums.reps[m][int(t)] = stats
            steps = max(r[int(t)].depth for r in sums.reps)
            tick(1.0, f"done after {steps} steps")  # a run that converged early still reaches the end
    seconds = time.perf_counter() - start
    return [
        STestPartial(sums.total[m], sums.sq[m], len(reps), cfg.scale, sums.reps[m], seconds, spent)
        for m in range(len(vs))
    ]


def solve_repetitions(
    objective: Objective,
    v: Tensor,
    train: Examples,
    cfg: STestConfig,
    repetitions: Sequence[int],
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD,
) -> STestPartial:
    """Sum of the estimates ``(P,)`` of one test gradient ``v (P,)`` for the given repetition indices
    (repetition t: seed + t): :func:`solve_many_repetitions` with M = 1.

    Raises:
        SolverError: non-finite values, an exploding norm, or (CG) non-positive curvature.
    """
    return solve_many_repetitions(
        objective, v.reshape(1, -1), train, cfg, repetitions, device, progress, method
    )[0]


def finish(partial: STestPartial, cfg: STestConfig) -> STestResult:
    """Average a (combined) partial into s_test and its spread across repetitions."""
    if partial.count < 1:
        raise ConfigError("no s_test repetitions were run: repetitions must be non-empty")
    s_test = partial.total / partial.count
    norm = float(s_test.double().norm())
    rel_std = None
    if partial.count > 1:
        spread = max(partial.sq_norm_total / partial.count - norm**2, 0.0)  # mean ‖e_t - mean‖²
        rel_std = math.sqrt(spread) / norm if norm > 0 else float("inf")
    resolved = replace(cfg, scale=partial.scale) if cfg.solver == "lissa" else cfg
    if cfg.solver == "lissa" and cfg.mu > 0:
        resolved = replace(resolved, damping=cfg.mu / partial.scale)
    return STestResult(s_test, resolved, partial.reps, rel_std, norm, partial.seconds, partial.scale_hvps)


def finish_many(
    partials: Sequence[STestPartial], cfg: STestConfig, seconds: float | None = None
) -> ManySTest:
    """Average each vector's (combined) partial (:func:`finish`) into ``S (M, P)``;
    each result's ``seconds`` is its share ``seconds / M`` of the batched solve."""
    if not partials:
        raise ConfigError("no test vectors: V must have at least one row")
    total = max(p.seconds for p in partials) if seconds is None else seconds
    first = partials[0].total
    s = torch.empty(len(partials), first.numel(), dtype=first.dtype, device=first.device)  # (M, P)
    results = []
    for m, partial in enumerate(partials):
        res = finish(partial, cfg)
        s[m] = res.s_test
        results.append(replace(res, s_test=s[m], seconds=total / len(partials)))
    return ManySTest(s, results, total)


def solve_many(
    objective: Objective,
    v: Tensor,
    train: Examples,
    cfg: STestConfig,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD,
    batched: bool | None = None,
) -> ManySTest:
    """s_test of every row of ``v (M, P)`` in one solver run over ``cfg.repeats`` repetitions; row m equals
    what ``v[m]`` alone gets (same batches, same seeds). See the module docstring.

    Raises:
        ConfigError: ``v`` is not ``(M, P)`` or has no rows.
        SolverError: a vector diverged or met non-positive curvature (the message names the vector).
    """
    if v.dim() == 2 and v.shape[0] == 0:
        raise ConfigError("no test vectors: V must have at least one row")
    partials = solve_many_repetitions(
        objective, v, train, cfg, range(cfg.repeats), device, progress, method, batched
    )
    return finish_many(partials, cfg)


def solve(
    objective: Objective,
    v: Tensor,
    train: Examples,
    cfg: STestConfig,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD,
) -> STestResult:
    """s_test ``≈ (C + μI)⁻¹ v`` of one test gradient ``v (P,)``, averaged over ``cfg.repeats`` repetitions:
    :func:`solve_many` with M = 1 (see the module docstring)."""
    return solve_many(objective, v.reshape(1, -1), train, cfg, device, progress, method).results[0]


def prepare_direct(objective: Objective, train: Examples, cfg: STestConfig) -> None:
    """Build (or find) the kept factor that :func:`solve_direct_` will use, so that a caller can build it
    before allocating its right-hand sides (the factor's build memory and theirs never coexist)."""
    cfg, _ = resolve(objective, train, cfg)
    with objective.evaluating():
        direct_factor(objective, train, cfg, 0)


def solve_direct_(objective: Objective, v: Tensor, train: Examples, cfg: STestConfig) -> list[RepStats]:
    """s_test of every row of ``v (M, P)`` written over ``v``, for ``solver=direct`` with one repetition:
    row m equals ``solve_many(objective, v, train, cfg).s_test[m]`` (the same kept factor), without its
    ``(M, P)`` copies, so an influence matrix's whole row block is solved at once in its own buffer."""
    cfg, _ = resolve(objective, train, cfg, v.device)
    if cfg.solver != "direct" or cfg.repeats != 1:
        raise ConfigError(
            f"solve_direct_ needs solver=direct with repeats=1, not {cfg.solver} x{cfg.repeats}"
        )
    if len(train) == 0:
        raise ConfigError("s_test needs at least one training example to draw curvature batches from")
    with objective.evaluating():
        return direct_in_place(objective, v, train, cfg, 0)


def many_to_flat(partials: Sequence[STestPartial]) -> Tensor:
    """``(M·(P + 2),)``: every partial's ``to_flat()``; summing these across ranks sums the partials."""
    return torch.cat([p.to_flat() for p in partials])


def many_from_flat(
    flat: Tensor, like: Sequence[STestPartial], reps: Sequence[dict[int, RepStats]]
) -> list[STestPartial]:
    """The M partials of an (all-reduced) :func:`many_to_flat` vector, with the given per-vector stats."""
    rows = flat.reshape(len(like), -1)
    return [
        STestPartial.from_flat(rows[m], p.scale, reps[m], p.seconds, p.scale_hvps) for m, p in enumerate(like)
    ]


def expected_cost(cfg: STestConfig) -> float:
    """Forward-pass equivalents of one solve (a curvature product ≈ 3 forwards per example), for
    splitting a query's progress bar; CG usually stops well before ``depth`` (assume 15 iterations)."""
    if cfg.solver == "direct":
        return 3.0 * cfg.repeats * 3 * cfg.batch_size  # C backward passes with hooks, a Gram product
    steps = min(cfg.depth, 15) if cfg.solver == "cg" and cfg.tolerance > 0 else cfg.depth
    return 3.0 * cfg.repeats * steps * cfg.batch_size
