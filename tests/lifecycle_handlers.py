"""A job kind for ``tests/test_worker_lifecycle.py``, loaded by real worker processes through
``$FASTIF_WORKER_MODULES``: one long step that reports no progress (as a model load or an index build
does), then a marker file and a result. Nothing else in the suite uses it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastif_core import jobs
from fastif_core.worker import JobContext, register_handler

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


jobs.register_kind(KIND, StepParams, "tests: one step of `seconds` without progress", max_attempts=3)
register_handler(KIND, run_step)
