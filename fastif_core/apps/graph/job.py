"""The ``graph`` job kind's worker handler: the graph pipeline with every influence row spread over the
worker's device group (the same path as ``influence`` jobs), the result and ``done`` in one transaction."""

from __future__ import annotations

from typing import Any

from fastif_core.apps.graph import config  # noqa: F401 - registers the "graph" job kind
from fastif_core.apps.graph.build import build_graph
from fastif_core.engine_jobs import group_state, influence_runner
from fastif_core.worker import JobContext, register_handler


def run_graph(ctx: JobContext) -> dict[str, Any]:
    """Load the workspace once on every rank, then build the graph; a cached graph completes the job."""
    key, state = group_state(ctx)
    out = build_graph(ctx.root, ctx.params, device=ctx.group.device, loaded=state.info["loaded"],
                      runner=influence_runner(ctx, key), progress=ctx.progress, job_id=ctx.job.id,
                      owner=ctx.owner)  # fmt: skip
    return {"graph_id": out["graph_id"], "cached": out["cached"]}


register_handler("graph", run_graph)
