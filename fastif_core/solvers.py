"""s_test solvers: ``s_test ≈ (C + μI)⁻¹ v`` for the test gradient v (tensors in, tensors out).

C is the curvature of the batch-mean training loss (:mod:`fastif_core.hessian`: the Hessian or its
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
the Woodbury identity on the batch's low-rank factor (:mod:`fastif_core.direct`): exact, no iterations.
The factor costs a few batched backward passes and is kept on the objective (one at a time, dropped when
the parameters change), so the next query on the same model and batch pays two products with it.

All average T repetitions; ``rel_std`` is their spread ``sqrt(mean_t ‖e_t - s_test‖²) / ‖s_test‖``.
Every solver checks each step for non-finite values and exploding norms and reports its curvature-product
count (``hvps``) and its final convergence measure (CG: relative residual; LiSSA: relative change).

Parallel use (``parallel.py``): :func:`resolve` once (deterministic), each rank calls
:func:`solve_repetitions` on its repetition indices ``t ≡ rank (mod world)``, all-reduces
``partial.to_flat()`` (sum), rebuilds with :meth:`STestPartial.from_flat` and calls :func:`finish`; the
result equals the serial :func:`solve` up to float summation order.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from fastif_core import direct
from fastif_core.batches import Examples, sample_indices, to_device
from fastif_core.config import STestConfig
from fastif_core.errors import ConfigError, CurvatureBreakdownError, LissaDivergenceError
from fastif_core.hessian import DEFAULT_HVP_METHOD, Progress, curvature_vp, estimate_scale
from fastif_core.objective import Objective, resolve_device

SCALE_BATCHES, SCALE_ITERATIONS = 4, 10  # power iteration for scale = 0: 40 curvature products


@dataclass
class RepStats:
    """One repetition: depth used, curvature products, final convergence measure, converged or not."""

    depth: int
    hvps: int
    measure: float  # CG: ‖r‖/‖v‖; LiSSA: relative change of h (or of the window mean)
    converged: bool | None  # None when no tolerance was set


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
            "solver": self.cfg.solver, "curvature": self.cfg.curvature, "batch_size": self.cfg.batch_size,
            "hvps": self.hvps, key: max(measures, default=None), "converged": _all_or_none(flags),
            "scale": self.cfg.scale, "damping": self.cfg.damping, "effective_damping": effective_damping(self.cfg),
            "repetitions": len(self.reps), "depth_used": self.depth_used, "rel_std": self.rel_std,
            "norm": self.norm, "seconds": self.seconds,
        }  # fmt: skip


def _all_or_none(flags: list[bool | None]) -> bool | None:
    return None if not flags or any(f is None for f in flags) else all(flags)


def effective_damping(cfg: STestConfig) -> float:
    """μ of a resolved config: ``mu`` for CG and direct, ``damping × scale`` for LiSSA."""
    if cfg.solver in ("cg", "direct"):
        return cfg.mu if cfg.mu > 0 else cfg.damping * cfg.scale
    return cfg.damping * cfg.scale


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
                objective, train, cfg.batch_size, batches=SCALE_BATCHES, iterations=SCALE_ITERATIONS,
                seed=cfg.seed, device=device, curvature=cfg.curvature,
            )  # fmt: skip
            spent = SCALE_BATCHES * SCALE_ITERATIONS
        cfg = replace(cfg, scale=cache[key])
    if cfg.mu > 0:
        if cfg.mu >= cfg.scale:
            raise ConfigError(
                f"mu={cfg.mu:g} must be below the LiSSA scale {cfg.scale:g} (d = mu/scale < 1): raise scale"
            )
        cfg = replace(cfg, damping=cfg.mu / cfg.scale)
    return cfg, spent


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
    """Sum of the estimates ``(P,)`` for the given repetition indices (repetition t: seed + t).

    Args:
        v: the test gradient ``(P,)``; moved to the objective's device.
        train: training examples the curvature batches are drawn from.
        cfg: solver settings; resolved with :func:`resolve` first (a resolved config passes through).
        repetitions: repetition indices t (e.g. ``range(cfg.repeats)``, or a rank's share).
        progress: optional ``(fraction, message)`` callback.

    Raises:
        SolverError: non-finite values, an exploding norm, or (CG) non-positive curvature.
    """
    if len(train) == 0:
        raise ConfigError("s_test needs at least one training example to draw curvature batches from")
    device = resolve_device(objective, device)
    cfg, spent = resolve(objective, train, cfg, device)
    v = v.to(device, objective.dtype)
    one = {"cg": _cg_one, "direct": _direct_one, "lissa": _lissa_one}[cfg.solver]
    start = time.perf_counter()
    total, sq, reps = torch.zeros_like(v), 0.0, {}
    with objective.evaluating():
        for i, t in enumerate(repetitions):
            tick = _ticker(progress, i, len(repetitions), cfg.depth, int(t), cfg.solver)
            estimate, reps[int(t)] = one(objective, v, train, cfg, int(t), method, tick)
            total += estimate
            sq += float(estimate.double().pow(2).sum())
            if progress is not None:
                done = f"done after {reps[int(t)].depth} steps"
                progress((i + 1) / len(repetitions), f"s_test ({cfg.solver}) repetition {t}: {done}")
    return STestPartial(total, sq, len(reps), cfg.scale, reps, time.perf_counter() - start, spent)


def _ticker(
    progress: Progress | None, rep: int, reps: int, depth: int, t: int, solver: str
) -> Callable[[int], None]:
    every = max(1, depth // 100)

    def tick(step: int) -> None:
        if progress is not None and step % every == 0 and step < depth:
            progress((rep + step / depth) / reps, f"s_test ({solver}) repetition {t}: step {step}/{depth}")

    return tick


def _draw(train: Examples, cfg: STestConfig, gen: torch.Generator, device: torch.device) -> dict:
    return to_device(train.collate(sample_indices(len(train), cfg.batch_size, gen)), device)


def _lissa_one(
    objective: Objective, v: Tensor, train: Examples, cfg: STestConfig, t: int, method: str,
    tick: Callable[[int], None],
) -> tuple[Tensor, RepStats]:  # fmt: skip
    """One LiSSA repetition: ``(estimate / scale (P,), stats)`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(cfg.seed + t)
    bound = float(v.norm())
    h, step, change, converged = v.clone(), 0, float("nan"), False
    block, filled, mean = torch.zeros_like(v), 0, None
    for step in range(1, cfg.depth + 1):
        batch = _draw(train, cfg, gen, objective.device)
        new = (
            v + (1.0 - cfg.damping) * h - curvature_vp(objective, batch, h, cfg.curvature, method) / cfg.scale
        )
        norm = _check_finite(new, step, t, cfg, bound)
        if cfg.window == 0:
            change = float((new - h).norm()) / max(norm, 1e-30)
            converged = cfg.tolerance > 0 and change <= cfg.tolerance
        else:
            block, filled = block + new, filled + 1
            if filled == cfg.window:
                prev, mean, block, filled = mean, block / cfg.window, torch.zeros_like(v), 0
                if prev is not None:
                    change = float((mean - prev).norm()) / max(float(mean.norm()), 1e-30)
                    converged = cfg.tolerance > 0 and change <= cfg.tolerance
        h = new
        tick(step)
        if converged:
            break
    estimate = mean if cfg.window > 0 and mean is not None else h
    return estimate / cfg.scale, RepStats(step, step, change, converged if cfg.tolerance > 0 else None)


def _check_finite(h: Tensor, step: int, t: int, cfg: STestConfig, v_norm: float) -> float:
    """``‖h‖``, or a LissaDivergenceError when it is not finite or above ``cfg.max_norm``."""
    norm = float(h.norm())
    if math.isfinite(norm) and norm <= cfg.max_norm:
        return norm
    raise LissaDivergenceError(
        f"LiSSA diverged at step {step}/{cfg.depth} of repetition {t}: ‖h‖ = {norm:.4g} "
        f"(max_norm {cfg.max_norm:.3g}; a stable recursion keeps ‖h_j‖ <= (j+1)·‖v‖ = {(step + 1) * v_norm:.4g}). "
        f"scale={cfg.scale:g} is probably below the largest curvature eigenvalue: use a larger scale "
        f"(e.g. scale={cfg.scale * 10:g}) or scale=0 to estimate it"
    )


def _cg_one(
    objective: Objective, v: Tensor, train: Examples, cfg: STestConfig, t: int, method: str,
    tick: Callable[[int], None],
) -> tuple[Tensor, RepStats]:  # fmt: skip
    """Conjugate gradient on ``(C_b + μI) x = v`` for one fixed batch b drawn with seed + t."""
    batch = _draw(train, cfg, torch.Generator().manual_seed(cfg.seed + t), objective.device)
    mu = effective_damping(cfg)
    v_norm = float(v.double().norm())
    if not math.isfinite(v_norm):
        raise LissaDivergenceError(f"CG: the test gradient is not finite (‖v‖ = {v_norm}): nothing to solve")
    x, r = torch.zeros_like(v), v.clone()
    p, rs = r.clone(), float(r.double().pow(2).sum())
    residual, step = 1.0 if v_norm > 0 else 0.0, 0
    for step in range(1, cfg.depth + 1):
        if residual == 0.0 or (cfg.tolerance > 0 and residual <= cfg.tolerance):
            step -= 1
            break
        ap = curvature_vp(objective, batch, p, cfg.curvature, method) + mu * p
        x, r, p, rs, residual = _cg_step(x, r, p, ap, rs, v_norm, step, t, cfg, mu)
        tick(step)
    converged = residual <= cfg.tolerance if cfg.tolerance > 0 else None
    return x, RepStats(step, step, residual, converged)


def batch_fingerprint(batch: dict[str, Tensor]) -> str:
    """A digest of a batch's contents (every tensor's name, dtype, shape and bytes): token ids, masks and
    labels for text, features and labels for tensor examples."""
    h = hashlib.sha256()
    for name in sorted(batch):
        t = batch[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def direct_factor(
    objective: Objective, train: Examples, cfg: STestConfig, t: int
) -> tuple[direct.GaussNewtonFactor, bool]:
    """The factor of ``G_b + μI`` on repetition t's batch and whether it was built now. One factor is kept
    on the objective, keyed by the content of the seeded batch (texts and labels, not the training set's
    identity: a relabelled set of the same size is another system), μ, the objective's loss and weight
    decay, and the parameters' version counters (an in-place update of the weights, as a correction step
    makes, invalidates it)."""
    params = list(objective.params.values())
    gen = torch.Generator().manual_seed(cfg.seed + t)
    rows = train.collate(sample_indices(len(train), cfg.batch_size, gen))  # the batch _draw would give
    key = (batch_fingerprint(rows), effective_damping(cfg), objective.loss, objective.weight_decay,
           tuple(objective.decayed), tuple(p._version for p in params),
           tuple(p.data_ptr() for p in params))  # fmt: skip
    cached = objective.__dict__.get("_direct_factor")
    if cached is not None and cached[0] == key:
        return cached[1], False
    objective.__dict__.pop("_direct_factor", None)  # free the old factor before building the new one
    batch = to_device(rows, objective.device)
    built = direct.factor(objective, batch, effective_damping(cfg))
    objective.__dict__["_direct_factor"] = (key, built)
    return built, True


def _direct_one(
    objective: Objective, v: Tensor, train: Examples, cfg: STestConfig, t: int, method: str,
    tick: Callable[[int], None],
) -> tuple[Tensor, RepStats]:  # fmt: skip
    """``(G_b + μI)⁻¹ v`` on the batch drawn with seed + t, exactly; the measure is the relative residual."""
    if not math.isfinite(float(v.double().norm())):
        raise LissaDivergenceError("direct: the test gradient is not finite: nothing to solve")
    fac, _ = direct_factor(objective, train, cfg, t)
    x = v.reshape(1, -1).to(fac.rows.dtype, copy=True)
    residual = float(fac.solve_(x)[0]) if float(v.norm()) > 0 else 0.0
    x = x.reshape(v.shape)
    return x, RepStats(1, fac.passes, residual, residual <= max(cfg.tolerance, 1e-4))


def _cg_step(
    x: Tensor, r: Tensor, p: Tensor, ap: Tensor, rs: float, v_norm: float, step: int, t: int,
    cfg: STestConfig, mu: float,
) -> tuple[Tensor, Tensor, Tensor, float, float]:  # fmt: skip
    """One CG update ``(x, r, p, ‖r‖², ‖r‖/‖v‖)``; refuses non-positive curvature and non-finite values."""
    pap = float(p.double() @ ap.double())
    if not math.isfinite(pap):
        raise LissaDivergenceError(f"CG: non-finite curvature product at iteration {step} of repetition {t}")
    if pap <= 0.0:
        raise CurvatureBreakdownError(
            f"CG met non-positive curvature pᵀ(C + μI)p = {pap:.4g} at iteration {step} of repetition {t}: "
            f"curvature={cfg.curvature} + μ={mu:g} is indefinite on this batch of {cfg.batch_size}. "
            "Use curvature=gauss_newton (positive semi-definite), a larger mu, or solver=lissa"
        )
    alpha = rs / pap
    x = x + alpha * p
    r = r - alpha * ap
    rs_new = float(r.double().pow(2).sum())
    if float(x.norm()) > cfg.max_norm:
        raise LissaDivergenceError(f"CG: ‖x‖ exceeded max_norm {cfg.max_norm:.3g} at iteration {step}")
    return x, r, r + (rs_new / rs) * p, rs_new, math.sqrt(rs_new) / v_norm


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


def solve(
    objective: Objective,
    v: Tensor,
    train: Examples,
    cfg: STestConfig,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD,
) -> STestResult:
    """s_test ``≈ (C + μI)⁻¹ v`` averaged over ``cfg.repeats`` repetitions (see the module docstring)."""
    partial = solve_repetitions(objective, v, train, cfg, range(cfg.repeats), device, progress, method)
    return finish(partial, cfg)


def expected_cost(cfg: STestConfig) -> float:
    """Forward-pass equivalents of one solve (a curvature product ≈ 3 forwards per example), for
    splitting a query's progress bar; CG usually stops well before ``depth`` (assume 15 iterations)."""
    if cfg.solver == "direct":
        return 3.0 * cfg.repeats * 3 * cfg.batch_size  # C backward passes with hooks, a Gram product
    steps = min(cfg.depth, 15) if cfg.solver == "cg" and cfg.tolerance > 0 else cfg.depth
    return 3.0 * cfg.repeats * steps * cfg.batch_size
