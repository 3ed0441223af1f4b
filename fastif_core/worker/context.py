"""What a job handler is given: :class:`JobContext` (the claimed job, its validated parameters, the store,
the device group, progress and stop checks) and the stop signals the worker's heartbeat and signal
handlers set. Kept apart from :mod:`fastif_core.worker.loop` so that handlers import it without
importing the loop that imports them (through :mod:`fastif_core.worker.registry`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastif_core import jobs
from fastif_core.errors import JobError, LeaseLostError
from fastif_core.parallel.group import ParallelContext


class WorkerStopping(JobError):
    """The worker was asked to stop (SIGTERM/SIGINT): the current job goes back to the queue."""


@dataclass
class Signals:
    """What the heartbeat thread and the signal handlers tell the job's thread."""

    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    progress: tuple[float, str] | None = None


@dataclass
class JobContext:
    """Everything a handler needs: the claimed job, its validated parameters, the store, the devices."""

    worker: Any  # the fastif_core.worker.loop.Worker running the job
    job: Any  # JobInfo
    params: Any
    signals: Signals

    @property
    def store(self) -> Any:
        return self.worker.store

    @property
    def root(self) -> Path:
        return self.worker.root

    @property
    def group(self) -> ParallelContext:
        return self.worker.group

    @property
    def owner(self) -> str:
        return self.worker.id

    def progress(self, fraction: float, message: str) -> None:
        """Record progress (published by the heartbeat) and stop here if the job must stop."""
        self.signals.progress = (fraction, message)
        self.check()

    def should_stop(self) -> bool:
        return any(e.is_set() for e in (self.signals.cancel, self.signals.lost, self.signals.stop))

    def check(self) -> None:
        """Raise between steps: JobCancelled, LeaseLostError or WorkerStopping."""
        if self.signals.lost.is_set():
            raise LeaseLostError(f"job {self.job.id}: lease lost by {self.owner}")
        if self.signals.cancel.is_set():
            raise jobs.JobCancelled(f"job {self.job.id} was cancelled")
        if self.signals.stop.is_set():
            raise WorkerStopping(f"worker {self.owner} is stopping")
