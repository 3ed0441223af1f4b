"""The ``graph`` job kind's worker handler: the graph pipeline with every influence row spread over the
worker's device group (the same path as ``influence`` jobs), the result and ``done`` in one transaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastif_core import graph_config  # noqa: F401 - registers the "graph" job kind
from fastif_core.apps.graph.build import build_graph
from fastif_core.worker import JobContext, register_handler


def run_graph(ctx: JobContext) -> dict[str, Any]:
    """Load the workspace once on every rank, then build the graph; a cached graph completes the job."""
    from fastif_core.parallel import QueryCancelled
    from fastif_core.workspace import require_prepared

    manifest = require_prepared(ctx.root)
    key = f"{Path(ctx.root).resolve()}#{manifest['model_id']}#{manifest.get('prepare_hash', '')}"
    ctx.progress(0.0, "loading the workspace on every rank")
    state = ctx.group.load(key, "fastif_core.worker:load_workspace_state", root=str(Path(ctx.root).resolve()))

    def runner(loaded: Any, batch: dict, candidates: list[int] | None, cfg: Any, progress: Any) -> Any:
        try:
            return ctx.group.influence(key, batch, candidates, cfg, progress, ctx.should_stop)
        except QueryCancelled:
            ctx.check()  # the precise reason: cancelled, lease lost or worker stopping
            raise

    out = build_graph(ctx.root, ctx.params, device=ctx.group.device, loaded=state.info["loaded"], runner=runner,
                      progress=ctx.progress, job_id=ctx.job.id, owner=ctx.owner)  # fmt: skip
    return {"graph_id": out["graph_id"], "cached": out["cached"]}


register_handler("graph", run_graph)
