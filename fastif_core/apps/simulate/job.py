"""The ``simulate`` job kind: the study of :mod:`fastif_core.apps.simulate.run` in the worker, its
influence queries on the worker's device group (the workspace state is shared with ``influence`` jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastif_core import worker
from fastif_core.errors import JobError
from fastif_core.simulate_config import JOB_KIND, SimulateParams

__all__ = ["JOB_KIND", "SimulateParams", "run_simulate"]


def run_simulate(ctx: worker.JobContext) -> dict[str, Any]:
    """Run the study; the result and ``done`` are stored in one transaction (``simulation_id``)."""
    from fastif_core.apps.simulate.run import simulate
    from fastif_core.parallel import QueryCancelled
    from fastif_core.workspace import require_prepared

    params, manifest = ctx.params, require_prepared(ctx.root)
    if params.model_id is not None and int(params.model_id) != int(manifest["model_id"]):
        raise JobError(f"model_id={params.model_id} is not this workspace's model ({manifest['model_id']})")
    key = f"{Path(ctx.root).resolve()}#{manifest['model_id']}#{manifest.get('prepare_hash', '')}"
    ctx.progress(0.0, "loading the workspace on every rank")
    state = ctx.group.load(key, "fastif_core.worker:load_workspace_state", root=str(Path(ctx.root).resolve()))

    def runner(loaded: Any, batch: dict, candidates: list[int] | None, cfg: Any, progress: Any) -> Any:
        try:
            return ctx.group.influence(key, batch, candidates, cfg, progress, ctx.should_stop)
        except QueryCancelled:
            ctx.check()  # the precise reason: cancelled, lease lost or worker stopping
            raise

    out = simulate(ctx.root, params.config, device=ctx.group.device, loaded=state.info["loaded"], runner=runner,
                   progress=ctx.progress, job_id=ctx.job.id, owner=ctx.owner)  # fmt: skip
    return {"simulation_id": out["simulation_id"], "cached": out["cached"]}


worker.register_handler(JOB_KIND, run_simulate)
