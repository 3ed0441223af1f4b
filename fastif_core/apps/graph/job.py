"""The ``graph`` job kind's worker handler: the graph pipeline on rank 0's device (the influence matrix is
one batched run, as ``matrix`` jobs are), the result and ``done`` in one transaction."""

from __future__ import annotations

from typing import Any

from fastif_core.apps.graph.build import build_graph
from fastif_core.worker.context import JobContext
from fastif_core.worker.handlers import group_state


def run_graph(ctx: JobContext) -> dict[str, Any]:
    """Load the workspace once on every rank, then build the graph; a cached graph completes the job."""
    _, state = group_state(ctx)
    out = build_graph(
        ctx.root,
        ctx.params,
        device=ctx.group.device,
        loaded=state.info["loaded"],
        progress=ctx.progress,
        job_id=ctx.job.id,
        owner=ctx.owner,
    )
    return {"graph_id": out["graph_id"], "cached": out["cached"]}
