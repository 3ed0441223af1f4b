"""The one SPMD influence body every rank of a device group runs, for M >= 1 test examples at once
(a single query is M = 1). See :mod:`fastif_core.parallel.group` for the command protocol.

1. every rank computes the M test gradients and, with :func:`fastif_core.engine.solvers.solve_many_repetitions`,
   its repetitions ``t ≡ rank (mod world)`` for all M vectors (the seeds a serial run uses);
2. ONE ``all_reduce`` of a flat buffer holding all M partial sums (``M·(P + 2)`` values), an error flag and a
   cancel flag gives every rank the same M s_test vectors;
3. each rank scores its shard of the union of the candidate sets for all M tests
   (:func:`fastif_core.engine.scoring.score_many`), length-sorted round robin so shards cost the same;
4. the ``(M, shard)`` blocks are gathered to rank 0, which returns a
   :class:`~fastif_core.engine.influence.ManyInfluence` equal to the serial
   :func:`~fastif_core.engine.influence.compute_many` up to float summation order.

Only the group's public API is used (:meth:`~fastif_core.parallel.group.ParallelContext.state`,
``all_reduce_sum``, ``all_gather``, ``raise_any``), so this module does not import the group.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from fastif_core.config import InfluenceConfig, to_dict
from fastif_core.engine import solvers
from fastif_core.engine.examples import Examples
from fastif_core.engine.influence import ManyInfluence, progress_split, test_gradients, union_columns
from fastif_core.engine.objective import Objective
from fastif_core.engine.scoring import score_many
from fastif_core.errors import QueryCancelled, describe_error
from fastif_core.progress import Progress, ShouldStop, sub_range


def payload(batches: list[dict], candidates: list[list[int]] | None, cfg: InfluenceConfig) -> dict[str, Any]:
    """The picklable command of one query of M test examples (test batches on the CPU)."""
    cfg.validate()
    rows = None if candidates is None else [[int(i) for i in c] for c in candidates]
    cpu = [{k: v.cpu() for k, v in b.items()} for b in batches]
    return {"batches": cpu, "candidates": rows, "cfg": to_dict(cfg)}


def rank_influence(ctx: Any, cmd: dict[str, Any], progress: Progress | None, should_stop: ShouldStop | None):
    """Every rank: see the module docstring; returns the :class:`ManyInfluence` on rank 0, None elsewhere."""
    t0 = time.perf_counter()
    state, cfg = ctx.state(cmd["key"]), InfluenceConfig.from_json_dict(cmd["cfg"])
    obj, train, m = state.objective, state.train, len(cmd["batches"])
    union, lists, picks = union_columns(cmd["candidates"], m, len(train))
    split = progress_split(cfg, len(union)) if len(union) else 1.0
    partials, error = _local_s_test(ctx, obj, train, cmd["batches"], cfg, sub_range(progress, 0.0, split))
    stop = ctx.is_coordinator and should_stop is not None and should_stop()
    flags = torch.tensor([float(error is not None), float(stop)], dtype=obj.dtype, device=obj.device)
    flat = ctx.all_reduce_sum(torch.cat([solvers.many_to_flat(partials), flags]))  # the ONE all-reduce
    if flat[-2] > 0:
        ctx.raise_any(error)
    if flat[-1] > 0:
        raise QueryCancelled("cancelled after s_test, before scoring: nothing was stored")
    sums = solvers.many_from_flat(flat[:-2], partials, [p.reps for p in partials])
    s = torch.stack([p.total / p.count for p in sums])  # (M, P), identical on every rank
    t1 = time.perf_counter()
    rows = union.tolist()
    order = length_order(train, rows)
    mine = [rows[p] for p in order[ctx.rank :: ctx.world_size]]
    values, error = _score_shard(ctx, obj, train, s, mine, cfg, sub_range(progress, split, 1.0))
    gathered = ctx.all_gather(
        {"values": values, "reps": [p.reps for p in partials], "error": describe_error(error)}
    )
    if any(g["error"] for g in gathered):
        ctx.raise_any(error)
    if not ctx.is_coordinator:
        return None
    seconds = {
        "test_gradient": 0.0,
        "s_test": t1 - t0,
        "scoring": time.perf_counter() - t1,
        "total": time.perf_counter() - t0,
    }
    return _assemble(ctx, sums, gathered, order, (union, lists, picks), cfg, seconds)


def _local_s_test(
    ctx: Any,
    obj: Objective,
    train: Examples,
    batches: list[dict],
    cfg: InfluenceConfig,
    progress: Progress | None,
) -> tuple[list[solvers.STestPartial], BaseException | None]:
    """This rank's repetitions for all M vectors; an error becomes empty partials + the error."""
    try:
        # scale=0 is estimated deterministically (seeded), so every rank resolves the same scale
        s_cfg, spent = solvers.resolve(obj, train, cfg.s_test, ctx.device)
        v = test_gradients(obj, batches, ctx.device, include_l2=cfg.test_l2)
        reps = range(ctx.rank, s_cfg.repeats, ctx.world_size)
        if not reps:
            return [_empty_partial(obj, s_cfg.scale) for _ in batches], None
        partials = solvers.solve_many_repetitions(obj, v, train, s_cfg, reps, ctx.device, progress)
        return [replace(p, scale_hvps=spent) for p in partials], None
    except Exception as exc:  # noqa: BLE001 - reported collectively after the all-reduce
        return [_empty_partial(obj, 0.0) for _ in batches], exc


def _empty_partial(obj: Objective, scale: float) -> solvers.STestPartial:
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
    ctx: Any,
    obj: Objective,
    train: Examples,
    s: Tensor,
    rows: list[int],
    cfg: InfluenceConfig,
    progress: Progress | None,
) -> tuple[Tensor, BaseException | None]:
    """Influence ``(M, len(rows))`` of this rank's shard (on CPU), or the error."""
    if not rows:
        return torch.zeros(len(s), 0, dtype=obj.dtype), None
    try:
        values = score_many(
            obj, s, train, rows, cfg.score_batch_size, ctx.device, progress, include_l2=cfg.train_l2
        )
        return values.detach().cpu(), None
    except Exception as exc:  # noqa: BLE001 - reported collectively after the gather
        return torch.zeros(len(s), 0, dtype=obj.dtype), exc


def _assemble(
    ctx: Any,
    sums: list[solvers.STestPartial],
    gathered: list[dict[str, Any]],
    order: list[int],
    columns: tuple[Tensor, list[Tensor], list[Tensor]],
    cfg: InfluenceConfig,
    seconds: dict[str, float],
) -> ManyInfluence:
    """Rank 0: every shard back in column order (NaN where no rank scored a column); solver statistics per
    vector over all repetitions, with ``columns_per_rank``: how many columns each rank scored."""
    union, lists, picks = columns
    values = torch.full((len(sums), len(union)), float("nan"), dtype=gathered[0]["values"].dtype)  # (M, U)
    for rank, g in enumerate(gathered):
        values[:, torch.as_tensor(order[rank :: ctx.world_size], dtype=torch.long)] = g["values"]
    reps = [{t: r for g in gathered for t, r in g["reps"][m].items()} for m in range(len(sums))]
    est = solvers.finish_many(
        [replace(p, reps=reps[m]) for m, p in enumerate(sums)], cfg.s_test, seconds["s_test"]
    )
    per_rank = [int(g["values"].shape[1]) for g in gathered]
    stats = [
        {**r.stats(), "ranks": ctx.world_size, "devices": ctx.spec, "columns_per_rank": per_rank}
        for r in est.results
    ]
    return ManyInfluence(union, values, lists, picks, est.s_test.cpu(), stats, seconds)
