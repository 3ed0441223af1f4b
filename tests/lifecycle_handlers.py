"""A job kind for ``tests/worker/test_worker_lifecycle.py``, loaded by real worker processes through
``$FASTIF_WORKER_MODULES`` (its ``JOB_KINDS`` and ``HANDLERS``): one long step that reports no progress (as a model load or an index build
does), then a marker file and a result. Nothing else in the suite uses it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastif_core.jobs import JobKind
from fastif_core.worker.context import JobContext

KIND = "lifecycle_step"


@dataclass(frozen=True)
class StepParams:
    seconds: float = 600.0  # length of the one step
    marker: str = ""  # written when the step has ended (before the job completes)


def run_step(ctx: JobContext) -> dict[str, Any]:
    time.sleep(ctx.params.seconds)
    if ctx.params.marker:
        Path(ctx.params.marker).write_text("step finished")
    return {"slept_s": ctx.params.seconds}


JOB_KINDS = (JobKind(KIND, StepParams, "tests: one step of `seconds` without progress", max_attempts=3),)
HANDLERS = {KIND: run_step}
