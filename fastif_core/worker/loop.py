"""``fastif worker``: the background process that runs queued jobs on every device of one machine
(or of a ``torchrun`` launch) and writes every result to the store.

One worker = one :class:`~fastif_core.parallel.group.ParallelContext`, started once. Rank 0 claims jobs
(atomically, with a lease), dispatches them by kind through :data:`fastif_core.worker.registry.HANDLERS`, and
keeps a heartbeat thread that renews the lease, publishes progress and refreshes the ``workers`` row
(so the dashboard can tell whether a worker is alive: see :mod:`fastif_core.worker.process`).

Outcomes of a job:
- done: the handler's results and ``done`` land in one transaction (``Store.save_influence_run(...,
  job_id=, owner=)`` or ``Store.complete_job``);
- failed: a :class:`~fastif_core.errors.FastifError` (bad parameters, unknown example, diverging LiSSA)
  fails the job for good with its one-line message; other errors are retried only when transient;
- cancelled: cancellation is seen by the heartbeat, the handler stops at its next step (progress
  callback) and nothing is stored;
- released: on SIGTERM / SIGINT the current job stops at its next step and goes back to the queue.

A worker started with an owner (``--exit-with-pid PID``, as the dashboard starts it) checks every
second that the owner still runs. Once it has exited the worker stops as on SIGTERM: the current job is
handed back at its next step (requeued, the attempt not counted; another worker claims it at once). A
job that reaches no step within :data:`OWNER_GRACE_S` is handed back by the watcher itself and the
process exits at once, as a crash would; the handler can no longer store anything, since every result
is written only while its worker holds the lease.

A worker killed outright (``kill -9``) stops renewing its lease; another worker claims the job again
when the lease has expired (``--lease-seconds``). A rank of the device group that dies or hangs is
noticed within the same ``--lease-seconds`` (:mod:`fastif_core.parallel.peers`): rank 0 requeues the job and
exits, so that a fresh worker starts a fresh group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastif_core import jobs
from fastif_core.errors import FastifError, JobError, LeaseLostError, QueryCancelled
from fastif_core.parallel.group import ParallelContext
from fastif_core.parallel.peers import GroupLost
from fastif_core.processes import OwnerProcess
from fastif_core.worker import registry
from fastif_core.worker.context import JobContext, Signals, WorkerStopping
from fastif_core.worker.registry import HANDLERS, handler_for

log = logging.getLogger("fastif.worker")
OWNER_CHECK_S = 1.0  # how often a worker with an owner checks that the owner still runs
OWNER_GRACE_S = 15.0  # owner gone: seconds the current job has to reach its next step before the exit


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
                if w.store.heartbeat_job(
                    ctx.job.id, w.id, lease_seconds=w.lease_seconds, progress=fraction, message=message
                ):
                    ctx.signals.cancel.set()
            w.store.worker_heartbeat(w.id, current_job_id=ctx.job.id if ctx else None)
        except LeaseLostError:
            if ctx is not None:
                ctx.signals.lost.set()
        except Exception as exc:  # noqa: BLE001 - e.g. a locked database: try again next beat
            log.warning("heartbeat failed: %s", exc)


class _OwnerWatch(threading.Thread):
    """Stop the worker once its owner process has exited; exit outright if the job does not let go."""

    def __init__(self, worker: Worker, owner: OwnerProcess, grace_s: float) -> None:
        super().__init__(daemon=True, name="fastif-owner-watch")
        self.worker, self.owner, self.grace_s = worker, owner, grace_s
        self.halt = threading.Event()  # set when the worker stops by itself

    def run(self) -> None:
        while self.owner.alive():
            if self.halt.wait(OWNER_CHECK_S):
                return
        log.info("owner process %s exited: stopping, the current job goes back to the queue", self.owner.pid)
        self.worker.request_stop()
        if not self.halt.wait(self.grace_s):
            self.worker.abandon(f"owner process {self.owner.pid} exited")


class Worker:
    """Rank 0 of a worker: claims and runs jobs until stopped (see :func:`run_worker`)."""

    def __init__(
        self,
        root: Path,
        group: ParallelContext,
        store: Any,
        *,
        poll: float,
        lease_seconds: float,
        owner: OwnerProcess | None = None,
    ) -> None:
        self.root, self.group, self.store = root, group, store
        self.poll, self.lease_seconds, self.owner = poll, lease_seconds, owner
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
        watch = _OwnerWatch(self, self.owner, OWNER_GRACE_S) if self.owner is not None else None
        if watch is not None:
            watch.start()
        log.info(
            "worker %s serving %s on %s%s",
            self.id,
            self.root,
            self.group.spec,
            f", until process {self.owner.pid} exits" if self.owner else "",
        )
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
            if watch is not None:
                watch.halt.set()
            beat.halt.set()
            beat.join()
            self.store.worker_heartbeat(self.id, current_job_id=None, status="stopped")
        return self.processed

    def request_stop(self) -> None:
        """Stop claiming; the current job stops at its next step and goes back to the queue."""
        self.stop.set()
        if self.current is not None:
            self.current.signals.stop.set()

    def abandon(self, reason: str) -> None:
        """Hand the current job back now and end the process (its handler did not reach a step in time).

        The job is requeued first, so the handler, still running, no longer owns it and cannot store a
        result; the device group's other ranks exit with this process (they watch their parent)."""
        ctx = self.current
        try:
            if ctx is not None:
                with contextlib.suppress(LeaseLostError):  # it completed or was lost meanwhile
                    self.store.release_job(ctx.job.id, self.id)
                    log.warning("job %s handed back: %s and it reached no step", ctx.job.id, reason)
            self.store.worker_heartbeat(self.id, current_job_id=None, status="stopped")
        finally:
            log.warning("worker %s exits: %s", self.id, reason)
            logging.shutdown()
            os._exit(0)

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
        job = self.store.claim_job(
            self.id, lease_seconds=self.lease_seconds, kinds=sorted(HANDLERS), device=self.group.spec
        )
        if job is None:
            return False
        log.info("job %s (%s) claimed, attempt %s/%s", job.id, job.kind, job.attempts, job.max_attempts)
        signals = Signals()
        self.current = JobContext(self, job, None, signals)
        if self.stop.is_set():  # after publishing ``current``: a stop request from now on reaches the job
            signals.stop.set()
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
    exit_with_pid: int | None = None,
) -> int:
    """Start the device group once and serve jobs until stopped; returns the number of jobs processed.

    Args:
        workspace: directory holding ``fastif.db`` (or ``$FASTIF_DB_URL``) and the prepared artefacts.
        devices: ``auto`` | ``cpu:N`` | ``cuda:0,cuda:1`` (ignored under ``torchrun``).
        once: exit when no job is claimable instead of waiting for more.
        poll: seconds between claims while idle.
        lease_seconds: a job whose heartbeat stops for this long is claimed again by another worker.
        stop_event: set it to stop the worker (as SIGTERM does) when running in a thread.
        exit_with_pid: stop (handing back the current job) once this process has exited; None = run until
            stopped. The dashboard passes its own pid.
    """
    from fastif_core.store import Store

    owner = OwnerProcess.of(exit_with_pid) if exit_with_pid is not None else None  # before the slow start
    if lease_seconds <= 0 or poll <= 0:
        raise JobError(f"lease_seconds={lease_seconds} and poll={poll} must be > 0")
    registry.load_plugins()
    group = ParallelContext.start(devices, timeout_s=lease_seconds)  # a silent rank costs one lease
    if not group.is_coordinator:  # torchrun ranks > 0 only execute rank 0's commands
        try:
            group.serve()
        finally:
            group.close()
        return 0
    store = Store.open(workspace)
    worker = Worker(Path(workspace), group, store, poll=poll, lease_seconds=lease_seconds, owner=owner)
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
        worker.request_stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for signum, handler in old.items():
            signal.signal(signum, handler)

    return restore
