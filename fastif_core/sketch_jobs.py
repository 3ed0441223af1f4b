"""The ``sketch`` job's handler: the workspace's training set sketched on every rank of the worker's device
group, each rank building the blocks ``b ≡ rank (mod world)`` into the same memory-mapped files
(:mod:`fastif_core.sketches`); rank 0 marks the index complete. A requeued job continues from the blocks
already marked. The worker imports this module at start (:data:`fastif_core.worker.HANDLER_MODULES`)."""

from __future__ import annotations

import time
from typing import Any

from fastif_core import sketch_click as _click  # noqa: F401 - registers the sketch_click kind
from fastif_core.config import from_dict, to_dict
from fastif_core.engine_jobs import group_state
from fastif_core.parallel import ParallelContext, Progress, ShouldStop, describe_error
from fastif_core.sketch_config import SketchConfig
from fastif_core.worker import JobContext, register_handler

BUILD = f"{__name__}:build_on_rank"


def build_on_rank(ctx: ParallelContext, cmd: dict[str, Any], progress: Progress | None,
                  should_stop: ShouldStop | None) -> dict[str, Any] | None:  # fmt: skip
    """Every rank: this rank's blocks, then one gather; rank 0 returns the index's description."""
    from fastif_core.parallel_query import gather
    from fastif_core.sketches import build_blocks, create_index, finish_index

    t0, error, done = time.perf_counter(), None, 0
    loaded = ctx._states[cmd["key"]].info["loaded"]
    cfg = from_dict(SketchConfig, cmd["cfg"])
    index = create_index(loaded, cfg)  # rank 0 created it before the call: every rank opens the same one
    try:
        mine = list(range(ctx.rank, index.num_blocks(), ctx.world_size))
        done = build_blocks(loaded, [index], mine, progress if ctx.is_coordinator else None, should_stop)
    except Exception as exc:  # noqa: BLE001 - reported collectively after the gather
        error = exc
    gathered = gather(ctx, {"done": done, "error": describe_error(error)})
    if any(g["error"] for g in gathered):
        ctx._raise_any(error)
    if not ctx.is_coordinator:
        return None
    index = finish_index(index, time.perf_counter() - t0)
    return {**index.describe(), "blocks_computed": sum(g["done"] for g in gathered), "ranks": ctx.world_size}


def run_sketch(ctx: JobContext) -> dict[str, Any]:
    """``sketch`` jobs: build the index on the device group (see the module docstring)."""
    from fastif_core.sketches import create_index

    cfg = ctx.params.config.validate()
    key, state = group_state(ctx)
    create_index(state.info["loaded"], cfg)
    out = ctx.group.call(BUILD, key, {"cfg": to_dict(cfg)}, ctx.progress, ctx.should_stop)
    ctx.check()  # stopped between blocks: cancelled, lease lost or worker stopping (blocks done are kept)
    return out


def run_sketch_click(ctx: JobContext) -> dict[str, Any]:
    """``sketch_click`` jobs: the sketch list over all N (stored first), then the exact re-rank on the group."""
    from fastif_core.engine_jobs import influence_runner
    from fastif_core.sketch_click import sketch_click

    key, state = group_state(ctx)
    return sketch_click(ctx.root, ctx.params, loaded=state.info["loaded"], runner=influence_runner(ctx, key),
                        progress=ctx.progress)  # fmt: skip


register_handler("sketch", run_sketch)
register_handler("sketch_click", run_sketch_click)
