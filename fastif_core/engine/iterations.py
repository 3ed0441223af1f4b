"""Batched s_test: one solver run for M test gradients ``V (M, P)`` (tensors in, tensors out).

Every vector m gets exactly the s_test :func:`fastif_core.engine.solvers.solve` gives ``V[m]`` with the same
settings and seeds, because it sees exactly the same curvature batches: LiSSA repetition t draws its
J batches once from the generator seeded ``cfg.seed + t`` and applies each to every vector still
iterating; CG draws its one fixed batch once. Each vector keeps its own bookkeeping (iterate, block
means, CG residual, step count, convergence): a vector that has converged stops being multiplied,
while the others go on with the same batch sequence a single solve would have drawn.

What is shared: the batch draws and collation, the solver loop, and for Gauss-Newton the per-example
output Hessians of each batch. The M curvature products of one batch are either M plain products
(:func:`fastif_core.engine.curvature.curvature_vp`, bit-for-bit the single solve's arithmetic) or, with
``batched=True``, groups of ``VECTORS_PER_CALL`` products in one call: double backward with
``torch.autograd.grad(..., is_grads_batched=True)``, or ``torch.func.vmap`` over the tangents of the
forward-mode pass. Measured on 2 CPU cores (packaged MiniLM) batching buys nothing (32 batched double
backward HVPs 12.2 s against 8.7 s for 32 single ones), so ``batched=None`` means "on CUDA only".

Parallel use: :func:`solve_many_repetitions` on a rank's repetitions, :func:`many_to_flat` for ONE
all-reduce of all M partial sums, :func:`many_from_flat` and :func:`finish_many`.

API: :class:`ManySTest`, :func:`solve_many`, :func:`solve_many_repetitions`, :func:`finish_many`,
:func:`curvature_vps`, :func:`many_to_flat`, :func:`many_from_flat`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from fastif_core.config import STestConfig
from fastif_core.engine.curvature import DEFAULT_HVP_METHOD, Progress, curvature_vp, output_hessians
from fastif_core.engine.examples import Batch, Examples
from fastif_core.engine.objective import Objective, resolve_device
from fastif_core.engine.solvers import (
    RepStats,
    STestPartial,
    STestResult,
    _cg_step,
    _check_finite,
    _draw,
    direct_factor,
    effective_damping,
    finish,
    resolve,
)
from fastif_core.errors import ConfigError, LissaDivergenceError, SolverError

VECTORS_PER_CALL = 16  # curvature products per batched autograd call (bounds the extra activation memory)


@dataclass
class ManySTest:
    """s_test of M test gradients from one solver run."""

    s_test: Tensor  # (M, P); row m ≈ (C + μI)⁻¹ V[m]
    results: list[STestResult]  # results[m].s_test is the view s_test[m]; stats per vector
    seconds: float  # wall time of the whole batched solve


# ---------------------------------------------------------------------------- curvature products


def _split(objective: Objective, vs: Tensor) -> dict[str, Tensor]:
    """``(K, P)`` -> name -> ``(K, *shape)`` views, in the objective's parameter order."""
    params = objective.params
    sizes = [params[n].numel() for n in objective.names]
    parts = torch.split(vs, sizes, dim=1)
    return {n: c.reshape(vs.shape[0], *params[n].shape) for n, c in zip(objective.names, parts, strict=True)}


def _join(objective: Objective, tensors: dict[str, Tensor], k: int) -> Tensor:
    """name -> ``(K, *shape)`` -> ``(K, P)``."""
    return torch.cat([tensors[n].reshape(k, -1) for n in objective.names], dim=1)


def _leaves(objective: Objective) -> tuple[dict[str, Tensor], list[Tensor]]:
    leaves = {n: p.detach().requires_grad_() for n, p in objective.params.items()}
    return leaves, [leaves[n] for n in objective.names]


def _hvp_batched(objective: Objective, batch: Batch, vs: dict[str, Tensor], method: str) -> dict[str, Tensor]:
    """``H_b v_k`` for K stacked tangents (data term): batched double backward or vmapped forward mode."""
    if method == "forward_over_reverse":

        def gradient(params: dict[str, Tensor]) -> dict[str, Tensor]:
            return torch.func.grad(lambda p: objective.data_loss(p, batch).mean())(params)

        one = lambda t: torch.func.jvp(gradient, (objective.params,), (t,))[1]  # noqa: E731
        return torch.func.vmap(one)(vs)
    leaves, inputs = _leaves(objective)
    grads = torch.autograd.grad(objective.data_loss(leaves, batch).mean(), inputs, create_graph=True)
    hv = torch.autograd.grad(
        grads, inputs, grad_outputs=[vs[n] for n in objective.names], is_grads_batched=True
    )
    return dict(zip(objective.names, hv, strict=True))


def _gnvp_batched(objective: Objective, batch: Batch, vs: dict[str, Tensor]) -> dict[str, Tensor]:
    """``G_b v_k`` for K stacked tangents: ``u_k = J v_k`` by vmapped forward mode, ``w_k = Q u_k`` with the
    output Hessians Q computed once, ``Jᵀ w_k / B`` by one batched backward."""
    with torch.no_grad():
        outputs = objective.outputs(objective.params, batch)  # (B, C)
        one = lambda t: torch.func.jvp(lambda p: objective.outputs(p, batch), (objective.params,), (t,))[1]  # noqa: E731
        u = torch.func.vmap(one)(vs)  # (K, B, C)
        q = output_hessians(objective, outputs, batch["labels"])  # (B, C, C)
        w = torch.einsum("bcd,kbd->kbc", q, u) / outputs.shape[0]  # (K, B, C)
    leaves, inputs = _leaves(objective)
    primal = objective.outputs(leaves, batch)
    jtw = torch.autograd.grad(primal, inputs, grad_outputs=w, is_grads_batched=True, allow_unused=True)
    k = w.shape[0]
    return {n: torch.zeros(k, *p.shape, dtype=p.dtype, device=p.device) if g is None else g
            for n, g, p in zip(objective.names, jtw, inputs, strict=True)}  # fmt: skip


def _products_batched(objective: Objective, batch: Batch, vs: Tensor, curvature: str, method: str) -> Tensor:
    """``C_b v_k`` ``(K, P)`` in one autograd call (data term by autodiff, L2 term analytically)."""
    split = _split(objective, vs)
    data = _gnvp_batched(objective, batch, split) if curvature == "gauss_newton" else _hvp_batched(
        objective, batch, split, method)  # fmt: skip
    out = _join(objective, data, vs.shape[0])
    if objective.weight_decay == 0.0:
        return out
    return out + _join(objective, objective.regularizer_hvp(split), vs.shape[0])


def curvature_vps(
    objective: Objective, batch: Batch, vectors: Sequence[Tensor], curvature: str = "hessian",
    method: str = DEFAULT_HVP_METHOD, batched: bool = False,
) -> list[Tensor]:  # fmt: skip
    """``[C_b v for v in vectors]`` (each ``(P,)``) on one batch: a loop of :func:`curvature_vp`, or with
    ``batched`` groups of ``VECTORS_PER_CALL`` products per autograd call. Callers run in eval mode."""
    if not batched:
        return [curvature_vp(objective, batch, v, curvature, method) for v in vectors]
    out: list[Tensor] = []
    for lo in range(0, len(vectors), VECTORS_PER_CALL):
        group = torch.stack(
            [v.to(objective.device, objective.dtype) for v in vectors[lo : lo + VECTORS_PER_CALL]]
        )
        out.extend(_products_batched(objective, batch, group, curvature, method).unbind(0))
    return out


# ---------------------------------------------------------------------------------- solver states


@dataclass
class _Lissa:
    """One vector's LiSSA repetition (the arithmetic of ``solvers._lissa_one``, step by step)."""

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
    def start(cls, v: Tensor, cfg: STestConfig) -> _Lissa:
        return cls(v, v.clone(), float(v.norm()), block=torch.zeros_like(v) if cfg.window > 0 else None)

    def advance(self, product: Tensor, step: int, t: int, cfg: STestConfig) -> None:
        new = self.v + (1.0 - cfg.damping) * self.h - product / cfg.scale
        norm = _check_finite(new, step, t, cfg, self.bound)
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
class _CG:
    """One vector's CG run on the shared batch (the arithmetic of ``solvers._cg_one``, step by step)."""

    v_norm: float
    x: Tensor
    r: Tensor
    p: Tensor
    rs: float
    residual: float
    step: int = 0
    done: bool = False

    @classmethod
    def start(cls, v: Tensor) -> _CG:
        v_norm = float(v.double().norm())
        if not math.isfinite(v_norm):
            raise LissaDivergenceError(
                f"CG: the test gradient is not finite (‖v‖ = {v_norm}): nothing to solve"
            )
        r = v.clone()
        return cls(v_norm, torch.zeros_like(v), r, r.clone(), float(r.double().pow(2).sum()),
                   1.0 if v_norm > 0 else 0.0)  # fmt: skip

    def stops_before(self, step: int, cfg: STestConfig) -> bool:
        """Whether the run stops before iteration ``step`` (then it used ``step - 1`` iterations)."""
        if self.residual == 0.0 or (cfg.tolerance > 0 and self.residual <= cfg.tolerance):
            self.done, self.step = True, step - 1
        return self.done

    def advance(self, ap: Tensor, step: int, t: int, cfg: STestConfig, mu: float) -> None:
        self.x, self.r, self.p, self.rs, self.residual = _cg_step(
            self.x, self.r, self.p, ap, self.rs, self.v_norm, step, t, cfg, mu)  # fmt: skip
        self.step = step

    def result(self, cfg: STestConfig) -> tuple[Tensor, RepStats]:
        converged = self.residual <= cfg.tolerance if cfg.tolerance > 0 else None
        return self.x, RepStats(self.step, self.step, self.residual, converged)


def _tagged(m: int, exc: SolverError) -> SolverError:
    """The solver's error with the test vector it happened on."""
    return type(exc)(f"test vector {m}: {exc}")


def _products(objective: Objective, batch: Batch, vectors: list[Tensor], cfg: STestConfig, method: str,
              batched: bool) -> list[Tensor]:  # fmt: skip
    return curvature_vps(objective, batch, vectors, cfg.curvature, method, batched)


def _lissa_many(
    objective: Objective, vs: Tensor, train: Examples, cfg: STestConfig, t: int, method: str, batched: bool,
    tick: Progress,
) -> list[tuple[Tensor, RepStats]]:  # fmt: skip
    """One LiSSA repetition for every row of ``vs``: each batch drawn once, applied to the active rows."""
    gen = torch.Generator().manual_seed(cfg.seed + t)
    states = [_Lissa.start(v, cfg) for v in vs]
    for step in range(1, cfg.depth + 1):
        active = [(m, s) for m, s in enumerate(states) if not s.converged]
        if not active:
            break
        batch = _draw(train, cfg, gen, objective.device)
        products = _products(objective, batch, [s.h for _, s in active], cfg, method, batched)
        for (m, s), product in zip(active, products, strict=True):
            try:
                s.advance(product, step, t, cfg)
            except SolverError as exc:
                raise _tagged(m, exc) from None
        tick(step / cfg.depth, f"step {step}/{cfg.depth}, {len(active)} of {len(states)} vectors iterating")
    return [s.result(cfg) for s in states]


def _cg_many(
    objective: Objective, vs: Tensor, train: Examples, cfg: STestConfig, t: int, method: str, batched: bool,
    tick: Progress,
) -> list[tuple[Tensor, RepStats]]:  # fmt: skip
    """CG on ``(C_b + μI) x = v_m`` for every row, on the one batch drawn with seed + t."""
    batch = _draw(train, cfg, torch.Generator().manual_seed(cfg.seed + t), objective.device)
    mu = effective_damping(cfg)
    states = []
    for m, v in enumerate(vs):
        try:
            states.append(_CG.start(v))
        except SolverError as exc:
            raise _tagged(m, exc) from None
    for step in range(1, cfg.depth + 1):
        active = [(m, s) for m, s in enumerate(states) if not s.done and not s.stops_before(step, cfg)]
        if not active:
            break
        products = _products(objective, batch, [s.p for _, s in active], cfg, method, batched)
        for (m, s), product in zip(active, products, strict=True):
            try:
                s.advance(product + mu * s.p, step, t, cfg, mu)
            except SolverError as exc:
                raise _tagged(m, exc) from None
        tick(
            step / cfg.depth,
            f"iteration {step}/{cfg.depth}, {len(active)} of {len(states)} vectors iterating",
        )
    return [s.result(cfg) for s in states]


def _direct_many(
    objective: Objective, vs: Tensor, train: Examples, cfg: STestConfig, t: int, method: str, batched: bool,
    tick: Progress,
) -> list[tuple[Tensor, RepStats]]:  # fmt: skip
    """The exact Gauss-Newton solve of every row at once: one factor, two passes over it for all M."""
    xs = vs.clone()  # (M, P), solved in place
    stats = _direct_in_place(objective, xs, train, cfg, t)
    tick(1.0, f"solved {len(vs)} vectors")
    return list(zip(xs, stats, strict=True))


def _direct_in_place(
    objective: Objective, v: Tensor, train: Examples, cfg: STestConfig, t: int
) -> list[RepStats]:
    """``v (M, P)`` overwritten by ``(G_b + μI)⁻¹ v`` on repetition t's batch; per-row stats (the residual)."""
    if not torch.isfinite(v).all():
        bad = int((~torch.isfinite(v)).any(dim=1).nonzero()[0])
        raise _tagged(bad, LissaDivergenceError("direct: the test gradient is not finite: nothing to solve"))
    fac, _ = direct_factor(objective, train, cfg, t)
    return [RepStats(1, fac.passes, r, r <= max(cfg.tolerance, 1e-4)) for r in fac.solve_(v).tolist()]


# ------------------------------------------------------------------------------------ public API


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
    objective: Objective, v: Tensor, train: Examples, cfg: STestConfig, repetitions: Sequence[int],
    device: torch.device | str | None = None, progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD, batched: bool | None = None,
) -> list[STestPartial]:  # fmt: skip
    """Per test vector, the sum of the estimates of the given repetitions (as
    :func:`fastif_core.engine.solvers.solve_repetitions` of each row of ``v (M, P)``); ``batched`` None = CUDA only."""
    if len(train) == 0:
        raise ConfigError("s_test needs at least one training example to draw curvature batches from")
    device = resolve_device(objective, device)
    vs = _vectors(objective, v, device)
    cfg, spent = resolve(objective, train, cfg, device)
    batched = device.type == "cuda" if batched is None else batched
    one = {"cg": _cg_many, "direct": _direct_many, "lissa": _lissa_many}[cfg.solver]
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
    seconds = time.perf_counter() - start
    return [STestPartial(sums.total[m], sums.sq[m], len(reps), cfg.scale, sums.reps[m], seconds, spent)
            for m in range(len(vs))]  # fmt: skip


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
        return _direct_in_place(objective, v, train, cfg, 0)


def finish_many(
    partials: Sequence[STestPartial], cfg: STestConfig, seconds: float | None = None
) -> ManySTest:
    """Average each vector's (combined) partial (:func:`fastif_core.engine.solvers.finish`) into ``S (M, P)``;
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
    objective: Objective, v: Tensor, train: Examples, cfg: STestConfig,
    device: torch.device | str | None = None, progress: Progress | None = None,
    method: str = DEFAULT_HVP_METHOD, batched: bool | None = None,
) -> ManySTest:  # fmt: skip
    """s_test of every row of ``v (M, P)`` in one solver run over ``cfg.repeats`` repetitions; row m equals
    ``solvers.solve(objective, v[m], train, cfg)`` (same batches, same seeds). See the module docstring.

    Raises:
        ConfigError: ``v`` is not ``(M, P)`` or has no rows.
        SolverError: a vector diverged or met non-positive curvature (the message names the vector).
    """
    if v.dim() == 2 and v.shape[0] == 0:
        raise ConfigError("no test vectors: V must have at least one row")
    partials = solve_many_repetitions(objective, v, train, cfg, range(cfg.repeats), device, progress, method,
                                      batched)  # fmt: skip
    return finish_many(partials, cfg)


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
