"""The engine's job handlers (``influence``, ``influence_many``, ``matrix``, ``prepare``), and the two pieces
every handler that asks the engine shares: :func:`group_state` (the workspace loaded once on every rank of
the device group, checked against the job's model) and :func:`influence_runner` (one query on the group,
with the precise reason when it is stopped). :data:`fastif_core.worker.registry.HANDLERS` pairs each kind
with its handler here and in each application's ``job`` module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastif_core.errors import JobError, QueryCancelled
from fastif_core.parallel.group import RankState
from fastif_core.worker.context import JobContext


def load_workspace_state(device: str, rank: int, root: str, search: bool = True) -> RankState:
    """Rank loader (pickled by reference to every rank): the workspace's model, objective, train set;
    the kNN index and features only on rank 0, the only rank that searches (on none without ``search``)."""
    from fastif_core.workspace.layout import LoadedWorkspace

    loaded = LoadedWorkspace.load(root, device, search=search and rank == 0)
    return RankState(loaded.objective, loaded.train, {"loaded": loaded})


def group_state(ctx: JobContext) -> tuple[str, RankState]:
    """The workspace loaded on every rank (once per model build), checked against the job's model id
    (``params.model_id`` where the job's parameters name one): the state key and rank 0's state."""
    from fastif_core.workspace.layout import require_prepared

    manifest = require_prepared(ctx.root)
    model_id = getattr(ctx.params, "model_id", None)
    if model_id is not None and int(model_id) != int(manifest["model_id"]):
        raise JobError(f"model_id={model_id} is not this workspace's model ({manifest['model_id']})")
    key = f"{Path(ctx.root).resolve()}#{manifest['model_id']}#{manifest.get('prepare_hash', '')}"
    ctx.progress(0.0, "loading the workspace on every rank")
    return key, ctx.group.load(key, load_workspace_state, root=str(Path(ctx.root).resolve()))


def influence_runner(ctx: JobContext, key: str) -> Callable[..., Any]:
    """The ``runner`` of :func:`fastif_core.queries.influence.influence_query` (and ``..._many``) for a job:
    the query's repetitions and candidate shards on the job's device group; a stop request ends it with the
    precise reason."""

    def runner(
        loaded: Any, batches: list, candidates: list[list[int]] | None, cfg: Any, progress: Any
    ) -> Any:
        try:
            return ctx.group.influence_many(key, batches, candidates, cfg, progress, ctx.should_stop)
        except QueryCancelled:
            ctx.check()  # the precise reason: cancelled, lease lost or worker stopping
            raise

    return runner


def run_influence(ctx: JobContext) -> dict[str, Any]:
    """``influence`` jobs: the workspace pipeline with s_test and scoring spread over the device group."""
    from fastif_core.queries.influence import influence_query

    key, state = group_state(ctx)
    out = influence_query(
        ctx.root,
        ctx.params.example_id,
        ctx.params.config,
        device=ctx.group.device,
        loaded=state.info["loaded"],
        runner=influence_runner(ctx, key),
        progress=ctx.progress,
        job_id=ctx.job.id,
        owner=ctx.owner,
    )
    return {"influence_run_id": out["run_id"], "cached": out["cached"]}  # completes a cached answer's job


def run_influence_many(ctx: JobContext) -> dict[str, Any]:
    """``influence_many`` jobs: one batched run for many examples, repetitions and candidate shards spread
    over the device group with one all-reduce for all s_test vectors (:mod:`fastif_core.parallel.spmd`)."""
    from fastif_core.queries.influence import influence_query_many

    params = ctx.params
    key, state = group_state(ctx)
    out = influence_query_many(
        ctx.root,
        params.example_ids,
        params.config,
        device=ctx.group.device,
        loaded=state.info["loaded"],
        runner=influence_runner(ctx, key),
        progress=ctx.progress,
        job_id=ctx.job.id,
        owner=ctx.owner,
    )
    return {"influence_run_ids": [o["run_id"] for o in out], "cached": [o["cached"] for o in out]}


def run_matrix(ctx: JobContext) -> dict[str, Any]:
    """``matrix`` jobs: an influence matrix, stored block by block (a requeued job continues from the
    blocks already stored); on a group of several ranks each row block is a query of the group (its
    repetitions and columns sharded over the ranks), on one rank it runs in this process."""
    from fastif_core.queries.matrix import influence_matrix

    params = ctx.params
    key, state = group_state(ctx)
    out = influence_matrix(
        state.info["loaded"],
        params.test_ids,
        params.config,
        full=params.full,
        progress=ctx.progress,
        row_block=params.row_block,
        col_block=params.col_block,
        job_id=ctx.job.id,
        owner=ctx.owner,
        runner=influence_runner(ctx, key) if ctx.group.distributed else None,
    )
    return {"matrix_id": out.matrix_id, "shape": list(out.shape), "cached": out.cached}


def run_prepare(ctx: JobContext) -> dict[str, Any]:
    """``prepare`` jobs on rank 0's device; the manifest's model id is the job's result."""
    from fastif_core.workspace.prepare import prepare

    manifest = prepare(
        ctx.root, ctx.params, device=ctx.group.device, progress=ctx.progress, show_progress=False
    )
    return {"model_id": manifest.get("model_id"), "status": manifest.get("status")}
