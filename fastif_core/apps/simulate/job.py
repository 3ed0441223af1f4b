"""The ``simulate`` job kind: the study of :mod:`fastif_core.apps.simulate.run` in the worker, its
influence queries on the worker's device group (the workspace state is shared with ``influence`` jobs)."""

from __future__ import annotations

from typing import Any

from fastif_core.apps.simulate.config import JOB_KIND, SimulateParams
from fastif_core.worker import handlers
from fastif_core.worker.context import JobContext

__all__ = ["JOB_KIND", "SimulateParams", "run_simulate"]


def run_simulate(ctx: JobContext) -> dict[str, Any]:
    """Run the study; the result and ``done`` are stored in one transaction (``simulation_id``)."""
    from fastif_core.apps.simulate.run import simulate

    key, state = handlers.group_state(ctx)
    out = simulate(
        ctx.root,
        ctx.params.config,
        device=ctx.group.device,
        loaded=state.info["loaded"],
        runner=handlers.influence_runner(ctx, key),
        progress=ctx.progress,
        job_id=ctx.job.id,
        owner=ctx.owner,
    )
    return {"simulation_id": out["simulation_id"], "cached": out["cached"]}
