"""The ``sketch`` job's handler: the workspace's training set sketched on every rank of the worker's device
group, each rank building the blocks ``b ≡ rank (mod world)`` into the same memory-mapped files
(:mod:`fastif_core.workspace.sketches`); rank 0 marks the index complete. A requeued job continues from the blocks
already marked. And the ``sketch_click`` handler (:mod:`fastif_core.queries.sketch_click` on the group).
:data:`fastif_core.worker.registry.HANDLERS` pairs both kinds with their handlers here."""

from __future__ import annotations

import time
from typing import Any

from fastif_core.config import SketchConfig, from_dict, to_dict
from fastif_core.errors import describe_error
from fastif_core.parallel.group import ParallelContext
from fastif_core.progress import Progress, ShouldStop
from fastif_core.worker.context import JobContext
from fastif_core.worker.handlers import group_state, influence_runner


def build_on_rank(
    ctx: ParallelContext, cmd: dict[str, Any], progress: Progress | None, should_stop: ShouldStop | None
) -> dict[str, Any] | None:
    """Every rank: this rank's blocks, then one gather; rank 0 returns the index's description with
    ``shards``, the blocks each rank computed (rank order; blocks found already marked are in none)."""
    from fastif_core.workspace.sketches import build_blocks, create_index, finish_index

    t0, error, done = time.perf_counter(), None, []
    loaded = ctx.state(cmd["key"]).info["loaded"]
    cfg = from_dict(SketchConfig, cmd["cfg"])
    index = create_index(loaded, cfg)  # rank 0 created it before the call: every rank opens the same one
    try:
        mine = list(range(ctx.rank, index.num_blocks(), ctx.world_size))
        done = build_blocks(loaded, [index], mine, progress if ctx.is_coordinator else None, should_stop)
    except Exception as exc:  # noqa: BLE001 - reported collectively after the gather
        error = exc
    gathered = ctx.all_gather({"done": done, "error": describe_error(error)})
    if any(g["error"] for g in gathered):
        ctx.raise_any(error)
    if not ctx.is_coordinator:
        return None
    index = finish_index(index, time.perf_counter() - t0)
    shards = [g["done"] for g in gathered]
    return {
        **index.describe(),
        "blocks_computed": sum(len(s) for s in shards),
        "ranks": ctx.world_size,
        "shards": shards,
    }


def run_sketch(ctx: JobContext) -> dict[str, Any]:
    """``sketch`` jobs: build the index on the device group (see the module docstring)."""
    from fastif_core.queries.sketch import ready_for_queries
    from fastif_core.workspace.sketches import create_index

    cfg = ctx.params.config.validate()
    key, state = group_state(ctx)
    create_index(state.info["loaded"], cfg)
    out = ctx.group.call(build_on_rank, key, {"cfg": to_dict(cfg)}, ctx.progress, ctx.should_stop)
    ctx.check()  # stopped between blocks: cancelled, lease lost or worker stopping (blocks done are kept)
    ctx.progress(0.99, "factoring the curvature and keeping H⁻¹φ of every training example")
    out["curvature_seconds"] = ready_for_queries(state.info["loaded"], cfg)  # the first click: one product
    return out


def run_sketch_click(ctx: JobContext) -> dict[str, Any]:
    """``sketch_click`` jobs: the sketch list over all N (stored first), then the exact re-rank on the group."""
    from fastif_core.queries.sketch_click import sketch_click

    key, state = group_state(ctx)
    return sketch_click(
        ctx.root,
        ctx.params,
        loaded=state.info["loaded"],
        runner=influence_runner(ctx, key),
        progress=ctx.progress,
    )
