"""The iterations of the s_test solvers, for M right-hand sides in lockstep (M = 1 is one test example).

Each vector keeps its own bookkeeping (iterate, block means, CG residual, step count, convergence): a
vector that has converged stops being multiplied, while the others go on with the same batch sequence
(LiSSA repetition t draws its J batches once from the generator seeded ``cfg.seed + t``; CG and the direct
solve draw their one fixed batch once). So row m gets exactly the s_test that a run with ``V[m]`` alone
gives. The arithmetic of one step (:meth:`Lissa.advance`, :func:`cg_step`) is written once.

What is shared between the M vectors: the batch draws and collation, and the curvature products of one
batch (:func:`fastif_core.engine.curvature.curvature_vps`: M plain products, or on CUDA groups of
products in one autograd call). :func:`direct_factor` keeps the Woodbury factor of the direct solve
(:mod:`fastif_core.engine.woodbury`) on the objective for the next query.

API (for :mod:`fastif_core.engine.solvers`): :data:`STEPS` (solver name -> its repetition for M vectors),
:class:`RepStats`, :func:`effective_damping`, :func:`direct_factor`, :func:`direct_in_place`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fastif_core.config import STestConfig
from fastif_core.engine import woodbury
from fastif_core.engine.curvature import curvature_vps
from fastif_core.engine.examples import Examples, sample_indices, to_device
from fastif_core.engine.objective import Objective
from fastif_core.errors import CurvatureBreakdownError, LissaDivergenceError, SolverError
from fastif_core.progress import Progress


@dataclass
class RepStats:
    """One repetition: depth used, curvature products, final convergence measure, converged or not."""

    depth: int
    hvps: int
    measure: float  # CG: ‖r‖/‖v‖; LiSSA: relative change of h (or of the window mean)
    converged: bool | None  # None when no tolerance was set


def effective_damping(cfg: STestConfig) -> float:
    """μ of a resolved config: ``mu`` for CG and direct, ``damping × scale`` for LiSSA."""
    if cfg.solver in ("cg", "direct"):
        return cfg.mu if cfg.mu > 0 else cfg.damping * cfg.scale
    return cfg.damping * cfg.scale


def draw(train: Examples, cfg: STestConfig, gen: torch.Generator, device: torch.device) -> dict:
    """One curvature batch of ``cfg.batch_size`` training examples drawn with ``gen``, on ``device``."""
    return to_device(train.collate(sample_indices(len(train), cfg.batch_size, gen)), device)


def check_finite(h: Tensor, step: int, t: int, cfg: STestConfig, v_norm: float) -> float:
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


def cg_step(
    x: Tensor,
    r: Tensor,
    p: Tensor,
    ap: Tensor,
    rs: float,
    v_norm: float,
    step: int,
    t: int,
    cfg: STestConfig,
    mu: float,
) -> tuple[Tensor, Tensor, Tensor, float, float]:
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


@dataclass
class Lissa:
    """One vector's LiSSA repetition (see the module docstring)."""

    v: Tensor
    h: Tensor
    bound: float
    step: int = 0
    change: float = float("nan")
    converged: bool = False
    block: Tensor | None = None
    filled: int = 0
    mean: Tensor | None = None

    @classmethod
    def start(cls, v: Tensor, cfg: STestConfig) -> Lissa:
        return cls(v, v.clone(), float(v.norm()), block=torch.zeros_like(v) if cfg.window > 0 else None)

    def advance(self, product: Tensor, step: int, t: int, cfg: STestConfig) -> None:
        new = self.v + (1.0 - cfg.damping) * self.h - product / cfg.scale
        norm = check_finite(new, step, t, cfg, self.bound)
        if cfg.window == 0:
            self.change = float((new - self.h).norm()) / max(norm, 1e-30)
            self.converged = cfg.tolerance > 0 and self.change <= cfg.tolerance
        else:
            self.block, self.filled = self.block + new, self.filled + 1
            if self.filled == cfg.window:
                prev, self.mean = self.mean, self.block / cfg.window
                self.block, self.filled = torch.zeros_like(self.v), 0
                if prev is not None:
                    self.change = float((self.mean - prev).norm()) / max(float(self.mean.norm()), 1e-30)
                    self.converged = cfg.tolerance > 0 and self.change <= cfg.tolerance
        self.h, self.step = new, step

    def result(self, cfg: STestConfig) -> tuple[Tensor, RepStats]:
        estimate = self.mean if cfg.window > 0 and self.mean is not None else self.h
        stats = RepStats(self.step, self.step, self.change, self.converged if cfg.tolerance > 0 else None)
        return estimate / cfg.scale, stats


@dataclass
class CG:
    """One vector's CG run on the shared batch (see the module docstring)."""

    v_norm: float
    x: Tensor
    r: Tensor
    p: Tensor
    rs: float
    residual: float
    step: int = 0
    done: bool = False

    @classmethod
    def start(cls, v: Tensor) -> CG:
        v_norm = float(v.double().norm())
        if not math.isfinite(v_norm):
            raise LissaDivergenceError(
                f"CG: the test gradient is not finite (‖v‖ = {v_norm}): nothing to solve"
            )
        r = v.clone()
        return cls(
            v_norm,
            torch.zeros_like(v),
            r,
            r.clone(),
            float(r.double().pow(2).sum()),
            1.0 if v_norm > 0 else 0.0,
        )

    def stops_before(self, step: int, cfg: STestConfig) -> bool:
        """Whether the run stops before iteration ``step`` (then it used ``step - 1`` iterations)."""
        if self.residual == 0.0 or (cfg.tolerance > 0 and self.residual <= cfg.tolerance):
            self.done, self.step = True, step - 1
        return self.done

    def advance(self, ap: Tensor, step: int, t: int, cfg: STestConfig, mu: float) -> None:
        self.x, self.r, self.p, self.rs, self.residual = cg_step(
            self.x, self.r, self.p, ap, self.rs, self.v_norm, step, t, cfg, mu
        )
        self.step = step

    def result(self, cfg: STestConfig) -> tuple[Tensor, RepStats]:
        converged = self.residual <= cfg.tolerance if cfg.tolerance > 0 else None
        return self.x, RepStats(self.step, self.step, self.residual, converged)


def _tagged(m: int, count: int, exc: SolverError) -> SolverError:
    """The solver's error naming the test vector it happened on (when there are several)."""
    return exc if count == 1 else type(exc)(f"test vector {m}: {exc}")


def lissa(
    objective: Objective,
    vs: Tensor,
    train: Examples,
    cfg: STestConfig,
    t: int,
    method: str,
    batched: bool,
    tick: Progress,
) -> list[tuple[Tensor, RepStats]]:
    """One LiSSA repetition for every row of ``vs``: each batch drawn once, applied to the active rows."""
    gen = torch.Generator().manual_seed(cfg.seed + t)
    states = [Lissa.start(v, cfg) for v in vs]
    for step in range(1, cfg.depth + 1):
        active = [(m, s) for m, s in enumerate(states) if not s.converged]
        if not active:
            break
        batch = draw(train, cfg, gen, objective.device)
        products = curvature_vps(objective, batch, [s.h for _, s in active], cfg.curvature, method, batched)
        for (m, s), product in zip(active, products, strict=True):
            try:
                s.advance(product, step, t, cfg)
            except SolverError as exc:
                raise _tagged(m, len(states), exc) from None
        tick(step / cfg.depth, f"step {step}/{cfg.depth}, {len(active)} of {len(states)} vectors iterating")
    return [s.result(cfg) for s in states]


def cg(
    objective: Objective,
    vs: Tensor,
    train: Examples,
    cfg: STestConfig,
    t: int,
    method: str,
    batched: bool,
    tick: Progress,
) -> list[tuple[Tensor, RepStats]]:
    """CG on ``(C_b + μI) x = v_m`` for every row, on the one batch drawn with seed + t."""
    batch = draw(train, cfg, torch.Generator().manual_seed(cfg.seed + t), objective.device)
    mu = effective_damping(cfg)
    states = []
    for m, v in enumerate(vs):
        try:
            states.append(CG.start(v))
        except SolverError as exc:
            raise _tagged(m, len(vs), exc) from None
    for step in range(1, cfg.depth + 1):
        active = [(m, s) for m, s in enumerate(states) if not s.done and not s.stops_before(step, cfg)]
        if not active:
            break
        products = curvature_vps(objective, batch, [s.p for _, s in active], cfg.curvature, method, batched)
        for (m, s), product in zip(active, products, strict=True):
            try:
                s.advance(product + mu * s.p, step, t, cfg, mu)
            except SolverError as exc:
                raise _tagged(m, len(vs), exc) from None
        tick(
            step / cfg.depth,
            f"iteration {step}/{cfg.depth}, {len(active)} of {len(states)} vectors iterating",
        )
    return [s.result(cfg) for s in states]


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
) -> tuple[woodbury.GaussNewtonFactor, bool]:
    """The factor of ``G_b + μI`` on repetition t's batch and whether it was built now. One factor is kept
    on the objective, keyed by the content of the seeded batch (texts and labels, not the training set's
    identity: a relabelled set of the same size is another system), μ, the objective's loss and weight
    decay, and the parameters' version counters (an in-place update of the weights, as a correction step
    makes, invalidates it)."""
    params = list(objective.params.values())
    gen = torch.Generator().manual_seed(cfg.seed + t)
    rows = train.collate(sample_indices(len(train), cfg.batch_size, gen))  # the batch draw() would give
    key = (
        batch_fingerprint(rows),
        effective_damping(cfg),
        objective.loss,
        objective.weight_decay,
        tuple(objective.decayed),
        tuple(p._version for p in params),
        tuple(p.data_ptr() for p in params),
    )
    cached = objective.__dict__.get("_direct_factor")
    if cached is not None and cached[0] == key:
        return cached[1], False
    objective.__dict__.pop("_direct_factor", None)  # free the old factor before building the new one
    batch = to_device(rows, objective.device)
    built = woodbury.factor(objective, batch, effective_damping(cfg))
    objective.__dict__["_direct_factor"] = (key, built)
    return built, True


def direct(
    objective: Objective,
    vs: Tensor,
    train: Examples,
    cfg: STestConfig,
    t: int,
    method: str,
    batched: bool,
    tick: Progress,
) -> list[tuple[Tensor, RepStats]]:
    """The exact Gauss-Newton solve of every row at once: one factor, two passes over it for all M."""
    xs = vs.clone()  # (M, P), solved in place
    stats = direct_in_place(objective, xs, train, cfg, t)
    tick(1.0, f"solved {len(vs)} vectors")
    return list(zip(xs, stats, strict=True))


def direct_in_place(
    objective: Objective, v: Tensor, train: Examples, cfg: STestConfig, t: int
) -> list[RepStats]:
    """``v (M, P)`` overwritten by ``(G_b + μI)⁻¹ v`` on repetition t's batch; per-row stats (the residual)."""
    if not torch.isfinite(v).all():
        bad = int((~torch.isfinite(v)).any(dim=1).nonzero()[0])
        raise _tagged(
            bad, len(v), LissaDivergenceError("direct: the test gradient is not finite: nothing to solve")
        )
    fac, _ = direct_factor(objective, train, cfg, t)
    zero = (v == 0).all(dim=1).tolist()  # a zero right-hand side is solved exactly: residual 0
    residuals = [0.0 if z else r for z, r in zip(zero, fac.solve_(v).tolist(), strict=True)]
    return [RepStats(1, fac.passes, r, r <= max(cfg.tolerance, 1e-4)) for r in residuals]


Step = Callable[..., list[tuple[Tensor, RepStats]]]  # (objective, V, train, cfg, t, method, batched, tick)
STEPS: dict[str, Step] = {"lissa": lissa, "cg": cg, "direct": direct}
