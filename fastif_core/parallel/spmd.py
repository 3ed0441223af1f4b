"""One influence query on a device group: the SPMD body every rank runs for
:meth:`fastif_core.parallel.group.ParallelContext.influence` (called by reference through ``ctx.call``), and the
shard helpers :mod:`fastif_core.parallel.spmd` shares. See :mod:`fastif_core.parallel.group` for the protocol:
local repetitions, ONE all-reduce, length-balanced candidate shards, one gather to rank 0."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fastif_core.config import InfluenceConfig, to_dict
from fastif_core.engine import influence, scoring, solvers
from fastif_core.engine.examples import Batch, Examples, to_device
from fastif_core.engine.influence import (
    InfluenceResult,
    ManyInfluence,
    progress_split,
    test_gradients,
    union_columns,
)
from fastif_core.engine.iterations import finish_many, many_from_flat, many_to_flat, solve_many_repetitions
from fastif_core.engine.objective import Objective
from fastif_core.parallel.group import (
    ParallelContext,
    Progress,
    QueryCancelled,
    RankState,
    ShouldStop,
    describe_error,
)


def run_influence(
    ctx: ParallelContext, cmd: dict[str, Any], progress: Progress | None, should_stop: ShouldStop | None
) -> InfluenceResult | None:
    """The SPMD body of one query (see the module docstring); returns the result on rank 0."""
    t0 = time.perf_counter()
    state, cfg = ctx._states[cmd["key"]], InfluenceConfig.from_json_dict(cmd["cfg"])
    obj, train = state.objective, state.train
    rows = list(range(len(train))) if cmd["candidates"] is None else cmd["candidates"]
    split = influence.progress_split(cfg, len(rows))
    partial, error = _local_s_test(ctx, state, cmd["batch"], cfg, sub_progress(progress, 0.0, split))
    stop = ctx.is_coordinator and should_stop is not None and should_stop()
    flags = torch.tensor([float(error is not None), float(stop)], dtype=obj.dtype, device=obj.device)
    flat = torch.cat([partial.to_flat(), flags])  # (P + 4,): Σ estimates, Σ‖e‖², count, error, cancel
    if ctx.distributed:
        ctx._collective(lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM))  # the ONE all-reduce
    if flat[-2] > 0:
        ctx._raise_any(error)
    if flat[-1] > 0:
        raise QueryCancelled("cancelled after s_test, before scoring: nothing was stored")
    total = solvers.STestPartial.from_flat(
        flat[:-2], partial.scale, partial.reps, partial.seconds, partial.scale_hvps
    )
    s_test = total.total / total.count  # (P,) identical on every rank
    t1 = time.perf_counter()
    order = length_order(train, rows)
    mine = [rows[p] for p in order[ctx.rank :: ctx.world_size]]
    values, error = _score_shard(ctx, state, s_test, mine, cfg, sub_progress(progress, split, 1.0))
    gathered = gather(ctx, {"values": values, "reps": partial.reps, "error": describe_error(error)})
    if any(g["error"] for g in gathered):
        ctx._raise_any(error)
    if not ctx.is_coordinator:
        return None
    seconds = {"s_test": t1 - t0, "scoring": time.perf_counter() - t1, "total": time.perf_counter() - t0}
    return _assemble(ctx, rows, order, gathered, replace(total, seconds=t1 - t0), cfg, seconds)


def _local_s_test(
    ctx: ParallelContext, state: RankState, batch: Batch, cfg: InfluenceConfig, progress: Progress | None
) -> tuple[solvers.STestPartial, BaseException | None]:
    """This rank's repetitions ``t ≡ rank (mod world)``; an error becomes an empty partial + the error."""
    obj, train = state.objective, state.train
    try:
        # scale=0 is estimated deterministically (seeded), so every rank resolves the same scale
        s_cfg, spent = solvers.resolve(obj, train, cfg.s_test, ctx.device)
        v = influence.test_gradient(obj, to_device(batch, ctx.device), ctx.device, include_l2=cfg.test_l2)
        reps = range(ctx.rank, s_cfg.repeats, ctx.world_size)
        if not reps:
            return empty_partial(obj, s_cfg.scale), None
        partial = solvers.solve_repetitions(obj, v, train, s_cfg, reps, ctx.device, progress)
        return replace(partial, scale_hvps=spent), None
    except Exception as exc:  # noqa: BLE001 - reported collectively after the all-reduce
        return empty_partial(obj, 0.0), exc


def empty_partial(obj: Objective, scale: float) -> solvers.STestPartial:
    return solvers.STestPartial(
        torch.zeros(obj.num_params, dtype=obj.dtype, device=obj.device), 0.0, 0, scale
    )


def length_order(train: Examples, rows: list[int]) -> list[int]:
    """Positions into ``rows``, longest example first: rank r scores ``order[r::world]`` (balanced)."""
    if not rows:
        return []
    lengths = train.lengths()[torch.as_tensor(rows, dtype=torch.long)]
    return torch.argsort(lengths, descending=True, stable=True).tolist()


def _score_shard(
    ctx: ParallelContext, state: RankState, s_test: Tensor, rows: list[int], cfg: InfluenceConfig,
    progress: Progress | None,
) -> tuple[Tensor, BaseException | None]:  # fmt: skip
    """Influence values ``(len(rows),)`` of this rank's shard (on CPU), or the error."""
    obj = state.objective
    if not rows:
        return torch.zeros(0, dtype=obj.dtype), None
    try:
        values = scoring.score_candidates(
            obj,
            s_test,
            state.train,
            rows,
            cfg.score_batch_size,
            ctx.device,
            progress,
            include_l2=cfg.train_l2,
        )
        return values.detach().cpu(), None
    except Exception as exc:  # noqa: BLE001 - reported collectively after the gather
        return torch.zeros(0, dtype=obj.dtype), exc


def gather(ctx: ParallelContext, payload: dict[str, Any]) -> list[dict[str, Any]]:
    if not ctx.distributed:
        return [payload]
    out: list[Any] = [None] * ctx.world_size
    ctx._collective(lambda: dist.all_gather_object(out, payload))
    return out


def _assemble(
    ctx: ParallelContext, rows: list[int], order: list[int], gathered: list[dict[str, Any]],
    total: solvers.STestPartial, cfg: InfluenceConfig, seconds: dict[str, float],
) -> InfluenceResult:  # fmt: skip
    """Rank 0: every shard back in candidate order; solver statistics over all repetitions."""
    values = torch.empty(len(rows), dtype=gathered[0]["values"].dtype)  # (k,)
    for rank, g in enumerate(gathered):
        values[torch.as_tensor(order[rank :: ctx.world_size], dtype=torch.long)] = g["values"]
    reps = {t: r for g in gathered for t, r in g["reps"].items()}
    est = solvers.finish(replace(total, reps=reps), cfg.s_test)
    stats = {**est.stats(), "ranks": ctx.world_size, "devices": ctx.spec}
    return InfluenceResult(torch.as_tensor(rows, dtype=torch.long), values, est.s_test.cpu(), stats, seconds)


def sub_progress(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    """Only rank 0 reports: map a stage's ``[0, 1]`` onto ``[lo, hi]`` of the query."""
    if progress is None:
        return None
    return lambda fraction, message: progress(lo + (hi - lo) * fraction, message)


MANY = f"{__name__}:run_many"


def many_payload(
    batches: list[dict], candidates: list[list[int]] | None, cfg: InfluenceConfig
) -> dict[str, Any]:
    """The picklable command of one batched query (test batches on the CPU)."""
    cfg.validate()
    rows = None if candidates is None else [[int(i) for i in c] for c in candidates]
    cpu = [{k: v.cpu() for k, v in b.items()} for b in batches]
    return {"batches": cpu, "candidates": rows, "cfg": to_dict(cfg)}


def run_many(
    ctx: ParallelContext, cmd: dict[str, Any], progress: Progress | None, should_stop: ShouldStop | None
) -> ManyInfluence | None:
    """Every rank: see the module docstring; returns the result on rank 0, None elsewhere."""
    t0 = time.perf_counter()
    state, cfg = ctx._states[cmd["key"]], InfluenceConfig.from_json_dict(cmd["cfg"])
    obj, train, m = state.objective, state.train, len(cmd["batches"])
    union, lists, picks = union_columns(cmd["candidates"], m, len(train))
    split = progress_split(cfg, len(union)) if len(union) else 1.0
    partials, error = _local_s_test_many(ctx, state, cmd["batches"], cfg, sub_progress(progress, 0.0, split))
    stop = ctx.is_coordinator and should_stop is not None and should_stop()
    flags = torch.tensor([float(error is not None), float(stop)], dtype=obj.dtype, device=obj.device)
    flat = torch.cat([many_to_flat(partials), flags])  # (M·(P + 2) + 2,)
    if ctx.distributed:
        ctx._collective(lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM))  # the ONE all-reduce
    if flat[-2] > 0:
        ctx._raise_any(error)
    if flat[-1] > 0:
        raise QueryCancelled("cancelled after s_test, before scoring: nothing was stored")
    sums = many_from_flat(flat[:-2], partials, [p.reps for p in partials])
    s = torch.stack([p.total / p.count for p in sums])  # (M, P), identical on every rank
    t1 = time.perf_counter()
    rows = union.tolist()
    order = length_order(train, rows)
    mine = [rows[p] for p in order[ctx.rank :: ctx.world_size]]
    values, error = _score_shard_many(ctx, state, s, mine, cfg, sub_progress(progress, split, 1.0))
    gathered = gather(
        ctx, {"values": values, "reps": [p.reps for p in partials], "error": describe_error(error)}
    )
    if any(g["error"] for g in gathered):
        ctx._raise_any(error)
    if not ctx.is_coordinator:
        return None
    seconds = {"test_gradient": 0.0, "s_test": t1 - t0, "scoring": time.perf_counter() - t1,
               "total": time.perf_counter() - t0}  # fmt: skip
    return _assemble_many(ctx, sums, gathered, order, (union, lists, picks), cfg, seconds)


def _local_s_test_many(
    ctx: ParallelContext,
    state: RankState,
    batches: list[dict],
    cfg: InfluenceConfig,
    progress: Progress | None,
) -> tuple[list[solvers.STestPartial], BaseException | None]:
    """This rank's repetitions for all M vectors; an error becomes empty partials + the error."""
    obj, train = state.objective, state.train
    try:
        s_cfg, spent = solvers.resolve(obj, train, cfg.s_test, ctx.device)
        v = test_gradients(obj, batches, ctx.device, include_l2=cfg.test_l2)
        reps = range(ctx.rank, s_cfg.repeats, ctx.world_size)
        if not reps:
            return [empty_partial(obj, s_cfg.scale) for _ in batches], None
        partials = solve_many_repetitions(obj, v, train, s_cfg, reps, ctx.device, progress)
        return [replace(p, scale_hvps=spent) for p in partials], None
    except Exception as exc:  # noqa: BLE001 - reported collectively after the all-reduce
        return [empty_partial(obj, 0.0) for _ in batches], exc


def _score_shard_many(
    ctx: ParallelContext, state: RankState, s: Tensor, rows: list[int], cfg: InfluenceConfig,
    progress: Progress | None,
) -> tuple[Tensor, BaseException | None]:  # fmt: skip
    """Influence ``(M, len(rows))`` of this rank's shard (on CPU), or the error."""
    obj = state.objective
    if not rows:
        return torch.zeros(len(s), 0, dtype=obj.dtype), None
    try:
        values = scoring.score_many(obj, s, state.train, rows, cfg.score_batch_size, ctx.device, progress,
                            include_l2=cfg.train_l2)  # fmt: skip
        return values.detach().cpu(), None
    except Exception as exc:  # noqa: BLE001 - reported collectively after the gather
        return torch.zeros(len(s), 0, dtype=obj.dtype), exc


def _assemble_many(
    ctx: ParallelContext, sums: list[solvers.STestPartial], gathered: list[dict[str, Any]], order: list[int],
    columns: tuple[Tensor, list[Tensor], list[Tensor]], cfg: InfluenceConfig, seconds: dict[str, float],
) -> ManyInfluence:  # fmt: skip
    """Rank 0: every shard back in column order; solver statistics per vector over all repetitions."""
    union, lists, picks = columns
    values = torch.empty(len(sums), len(union), dtype=gathered[0]["values"].dtype)  # (M, U)
    for rank, g in enumerate(gathered):
        values[:, torch.as_tensor(order[rank :: ctx.world_size], dtype=torch.long)] = g["values"]
    reps = [{t: r for g in gathered for t, r in g["reps"][m].items()} for m in range(len(sums))]
    est = finish_many([replace(p, reps=reps[m]) for m, p in enumerate(sums)], cfg.s_test, seconds["s_test"])
    stats = [{**r.stats(), "ranks": ctx.world_size, "devices": ctx.spec} for r in est.results]
    return ManyInfluence(union, values, lists, picks, est.s_test.cpu(), stats, seconds)
