"""``fastif worker``: the background process that runs queued jobs on every device of one machine
(or of a ``torchrun`` launch) and writes every result to the store.

One worker = one :class:`~fastif_core.parallel.ParallelContext`, started once. Rank 0 claims jobs
(atomically, with a lease), dispatches them by kind through :func:`register_handler`'s registry, and
keeps a heartbeat thread that renews the lease, publishes progress and refreshes the ``workers`` row
(so the dashboard can tell whether a worker is alive: see :mod:`fastif_core.worker_process`).

Outcomes of a job:
- done: the handler's results and ``done`` land in one transaction (``Store.save_influence_run(...,
  job_id=, owner=)`` or ``Store.complete_job``);
- failed: a :class:`~fastif_core.errors.FastifError` (bad parameters, unknown example, diverging LiSSA)
  fails the job for good with its one-line message; other errors are retried only when transient;
- cancelled: cancellation is seen by the heartbeat, the handler stops at its next step (progress
  callback) and nothing is stored;
- released: on SIGTERM / SIGINT the current job stops at its next step and goes back to the queue.

A worker killed outright (``kill -9``) stops renewing its lease; another worker claims the job again
when the lease has expired (``--lease-seconds``). A rank of the device group that dies or hangs is
noticed within the same ``--lease-seconds`` (:mod:`fastif_core.peers`): rank 0 requeues the job and
exits, so that a fresh worker starts a fresh group.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import socket
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastif_core import jobs
from fastif_core.errors import ConfigError, FastifError, JobError, LeaseLostError
from fastif_core.parallel import ParallelContext, QueryCancelled
from fastif_core.peers import GroupLost

log = logging.getLogger("fastif.worker")

Handler = Callable[["JobContext"], Any]  # returns None (job already done) or a result dict
_HANDLERS: dict[str, Handler] = {}
HANDLER_MODULES = (  # each registers its job kinds' handlers on import
    "fastif_core.engine_jobs",
    "fastif_core.sketch_jobs",
    "fastif_core.apps.graph.job",
    "fastif_core.apps.correct.job",
    "fastif_core.apps.simulate.job",
)
MODULES_ENV = "FASTIF_WORKER_MODULES"


class WorkerStopping(JobError):
    """The worker was asked to stop (SIGTERM/SIGINT): the current job goes back to the queue."""


def load_handler_modules() -> None:
    """Import the modules that register more kinds and handlers: :data:`HANDLER_MODULES` when installed,
    plus ``$FASTIF_WORKER_MODULES`` (comma-separated module names, each must exist)."""
    for name in HANDLER_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    for name in filter(None, os.environ.get(MODULES_ENV, "").split(",")):
        try:
            importlib.import_module(name.strip())
        except ImportError as exc:
            raise ConfigError(f"{MODULES_ENV}: cannot import {name.strip()!r}: {exc}") from exc


def register_handler(kind: str, handler: Handler) -> Handler:
    """Run jobs of ``kind`` (registered in :mod:`fastif_core.jobs`) with ``handler(ctx)``."""
    jobs.get_kind(kind)
    _HANDLERS[kind] = handler
    return handler


def handler_for(kind: str) -> Handler:
    if kind not in _HANDLERS:
        raise JobError(f"no worker handler for job kind {kind!r}: this worker runs {sorted(_HANDLERS)}")
    return _HANDLERS[kind]


@dataclass
class _Signals:
    """What the heartbeat thread and the signal handlers tell the job's thread."""

    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    progress: tuple[float, str] | None = None


@dataclass
class JobContext:
    """Everything a handler needs: the claimed job, its validated parameters, the store, the devices."""

    worker: Worker
    job: Any  # JobInfo
    params: Any
    signals: _Signals

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


class _Heartbeat(threading.Thread):
    """Every ``interval`` s: renew the current job's lease with its progress; refresh the worker row."""

    def __init__(self, worker: Worker, interval: float) -> None:
        super().__init__(daemon=True, name="fastif-heartbeat")
        self.worker, self.interval = worker, interval
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        w = self.worker
        ctx = w.current
        try:
            # with a dead rank the lease is left to expire: another worker retries the job
            if ctx is not None and w.group.alive():
                fraction, message = ctx.signals.progress or (None, None)
                if w.store.heartbeat_job(ctx.job.id, w.id, lease_seconds=w.lease_seconds, progress=fraction,
                                         message=message):  # fmt: skip
                    ctx.signals.cancel.set()
            w.store.worker_heartbeat(w.id, current_job_id=ctx.job.id if ctx else None)
        except LeaseLostError:
            if ctx is not None:
                ctx.signals.lost.set()
        except Exception as exc:  # noqa: BLE001 - e.g. a locked database: try again next beat
            log.warning("heartbeat failed: %s", exc)


class Worker:
    """Rank 0 of a worker: claims and runs jobs until stopped (see :func:`run_worker`)."""

    def __init__(
        self, root: Path, group: ParallelContext, store: Any, *, poll: float, lease_seconds: float
    ) -> None:
        self.root, self.group, self.store = root, group, store
        self.poll, self.lease_seconds = poll, lease_seconds
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop = threading.Event()
        self.current: JobContext | None = None
        self.processed = 0

    def run(self, once: bool = False, stop_event: threading.Event | None = None) -> int:
        """Serve until stopped (or, with ``once``, until the queue is empty); returns jobs processed."""
        devices = list(self.group.devices)  # every rank's device: the dashboard's GPU check reads them
        self.store.worker_heartbeat(self.id, host=socket.gethostname(), pid=os.getpid(), devices=devices)
        beat = _Heartbeat(self, interval=min(max(self.lease_seconds / 4, 0.2), 10.0))
        beat.start()
        log.info("worker %s serving %s on %s", self.id, self.root, self.group.spec)
        try:
            while not self._stopping(stop_event):
                if self.run_next():
                    self._require_group()
                    continue
                if once:
                    break
                self._require_group()
                (stop_event or self.stop).wait(self.poll)
        finally:
            beat.halt.set()
            beat.join()
            self.store.worker_heartbeat(self.id, current_job_id=None, status="stopped")
        return self.processed

    def _require_group(self) -> None:
        """A rank died (its job was requeued): exit, so that a fresh worker starts a fresh group."""
        if not self.group.alive():
            raise JobError(
                f"worker {self.id}: a rank of the device group {self.group.spec} exited or stopped "
                "responding; restart the worker"
            )

    def _stopping(self, stop_event: threading.Event | None) -> bool:
        if stop_event is not None and stop_event.is_set():
            self.stop.set()
        return self.stop.is_set()

    def run_next(self) -> bool:
        """Claim and run one job; False when nothing was claimable."""
        job = self.store.claim_job(self.id, lease_seconds=self.lease_seconds, kinds=sorted(_HANDLERS),
                                   device=self.group.spec)  # fmt: skip
        if job is None:
            return False
        log.info("job %s (%s) claimed, attempt %s/%s", job.id, job.kind, job.attempts, job.max_attempts)
        signals = _Signals()
        if self.stop.is_set():
            signals.stop.set()
        self.current = JobContext(self, job, None, signals)
        try:
            self.current.params = jobs.job_params(job)
            result = handler_for(job.kind)(self.current)
            self._complete(job, result)
        except BaseException as exc:  # noqa: BLE001 - every outcome is recorded; KeyboardInterrupt re-raised
            self._settle(job, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.current = None
            self.processed += 1
        return True

    def _complete(self, job: Any, result: Any) -> None:
        current = self.store.get_job(job.id)
        if current is not None and current.status == "running" and current.lease_owner == self.id:
            self.store.complete_job(job.id, self.id, result=result if isinstance(result, dict) else None)
        log.info("job %s done", job.id)

    def _settle(self, job: Any, exc: BaseException) -> None:
        """Record a job that did not complete: cancelled, released, lost, failed or retried."""
        try:
            if isinstance(exc, LeaseLostError):
                log.warning("job %s: %s", job.id, exc)
            elif isinstance(exc, GroupLost):
                self.store.fail_job(job.id, self.id, f"GroupLost: {exc}", retry=True)
                log.error("job %s requeued: %s", job.id, exc)
            elif isinstance(exc, jobs.JobCancelled | QueryCancelled):
                self.store.confirm_cancel(job.id, self.id)
                log.info("job %s cancelled: nothing stored", job.id)
            elif isinstance(exc, WorkerStopping | KeyboardInterrupt):
                self.store.release_job(job.id, self.id)
                log.info("job %s released: worker stopping", job.id)
            elif isinstance(exc, FastifError):
                self.store.fail_job(job.id, self.id, f"{type(exc).__name__}: {exc}")
                log.info("job %s failed: %s", job.id, exc)
            else:
                retry = jobs.is_retryable(exc) or not self.group.alive()
                text = "".join(traceback.format_exception(exc))[-4000:]
                self.store.fail_job(job.id, self.id, f"{type(exc).__name__}: {exc}\n{text}", retry=retry)
                log.error("job %s error (retry=%s): %s", job.id, retry, exc)
        except LeaseLostError as lost:
            log.warning("job %s: %s", job.id, lost)


def run_worker(
    workspace: str | Path,
    devices: str = "auto",
    once: bool = False,
    poll: float = 1.0,
    lease_seconds: float = 60.0,
    stop_event: threading.Event | None = None,
) -> int:
    """Start the device group once and serve jobs until stopped; returns the number of jobs processed.

    Args:
        workspace: directory holding ``fastif.db`` (or ``$FASTIF_DB_URL``) and the prepared artefacts.
        devices: ``auto`` | ``cpu:N`` | ``cuda:0,cuda:1`` (ignored under ``torchrun``).
        once: exit when no job is claimable instead of waiting for more.
        poll: seconds between claims while idle.
        lease_seconds: a job whose heartbeat stops for this long is claimed again by another worker.
        stop_event: set it to stop the worker (as SIGTERM does) when running in a thread.
    """
    from fastif_core.store import Store

    if lease_seconds <= 0 or poll <= 0:
        raise JobError(f"lease_seconds={lease_seconds} and poll={poll} must be > 0")
    load_handler_modules()
    group = ParallelContext.start(devices, timeout_s=lease_seconds)  # a silent rank costs one lease
    if not group.is_coordinator:  # torchrun ranks > 0 only execute rank 0's commands
        try:
            group.serve()
        finally:
            group.close()
        return 0
    store = Store.open(workspace)
    worker = Worker(Path(workspace), group, store, poll=poll, lease_seconds=lease_seconds)
    restore = _install_signals(worker)
    try:
        return worker.run(once=once, stop_event=stop_event)
    finally:
        restore()
        group.close()
        store.close()


def _install_signals(worker: Worker) -> Callable[[], None]:
    """SIGTERM/SIGINT: stop claiming, release the current job at its next step (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping after releasing the current job", signum)
        worker.stop.set()
        if worker.current is not None:
            worker.current.signals.stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for signum, handler in old.items():
            signal.signal(signum, handler)

    return restore
