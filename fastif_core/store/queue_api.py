"""The job-queue and worker-registry methods of :class:`~fastif_core.store.Store` (see ``jobs_queue``
for the state machine and :mod:`fastif_core.jobs` for kinds and parameter validation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from fastif_core.config import config_hash
from fastif_core.store import jobs_queue as jq
from fastif_core.store._sql import any_of
from fastif_core.store.records import JobInfo, WorkerInfo
from fastif_core.store.schema import Job, Worker, utcnow

T = TypeVar("T")
Writer = Callable[[Session], "dict[str, Any] | None"]


class QueueMethods:
    """Mixed into ``Store``: every method is one write transaction or one read session."""

    if TYPE_CHECKING:  # provided by Store

        def _read(self, fn: Callable[[Session], T]) -> T: ...

        def _write(self, fn: Callable[[Session], T]) -> T: ...

    # ---- jobs (kinds and parameter validation: fastif_core.jobs) ----------------------------------
    def enqueue_job(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        params_hash: str | None = None,
        max_attempts: int = 3,
        priority: int = 0,
    ) -> JobInfo:
        """Queue a job, or return the equal (kind, params hash) job that is queued, running or done.

        Stores ``params`` as given (use ``fastif_core.jobs.enqueue`` to validate them first).
        """
        digest = params_hash or config_hash(params)
        return self._write(
            lambda s: jq.job_info(
                jq.enqueue(s, kind, dict(params), digest, max_attempts=max_attempts, priority=priority)
            )
        )

    def claim_job(
        self,
        owner: str,
        *,
        lease_seconds: float = 60.0,
        kinds: Sequence[str] | None = None,
        device: str | None = None,
    ) -> JobInfo | None:
        """Atomically lease the next queued (or lease-expired) job to ``owner``; None when idle."""
        return self._write(
            lambda s: _opt(jq.job_info, jq.claim(s, owner, lease_seconds, kinds=kinds, device=device))
        )

    def heartbeat_job(
        self,
        job_id: int,
        owner: str,
        *,
        lease_seconds: float = 60.0,
        progress: float | None = None,
        message: str | None = None,
    ) -> bool:
        """Renew the lease and record progress; True when cancellation was requested (LeaseLostError if lost)."""
        return self._write(lambda s: jq.heartbeat(s, job_id, owner, lease_seconds, progress, message))

    def complete_job(
        self, job_id: int, owner: str, writer: Writer | None = None, *, result: dict[str, Any] | None = None
    ) -> JobInfo:
        """Run ``writer(session)`` (returns the result ref) and mark the job done, in one transaction.

        Raises LeaseLostError (and writes nothing) if ``owner`` no longer holds the job.
        """

        def fn(s: Session) -> JobInfo:
            jq.owned(s, job_id, owner)
            ref = writer(s) if writer is not None else None
            return jq.job_info(jq.complete(s, job_id, owner, ref if ref is not None else result))

        return self._write(fn)

    def fail_job(self, job_id: int, owner: str, error: str, *, retry: bool = False) -> JobInfo:
        """Record ``error``; the job fails for good unless ``retry`` and attempts remain (then requeued)."""
        return self._write(lambda s: jq.job_info(jq.fail(s, job_id, owner, error, retry)))

    def release_job(self, job_id: int, owner: str) -> JobInfo:
        """Requeue an owned job without counting the attempt (worker shutting down cleanly)."""
        return self._write(lambda s: jq.job_info(jq.release(s, job_id, owner)))

    def cancel_job(self, job_id: int) -> JobInfo:
        """Queued: cancelled at once. Running: cancel requested, its worker stops between steps."""
        return self._write(lambda s: jq.job_info(jq.cancel(s, job_id)))

    def confirm_cancel(self, job_id: int, owner: str) -> JobInfo:
        """The worker honoured a cancel request: the job ends cancelled with nothing stored."""
        return self._write(lambda s: jq.job_info(jq.confirm_cancel(s, job_id, owner)))

    def get_job(self, job_id: int) -> JobInfo | None:
        return self._read(lambda s: _opt(jq.job_info, s.get(Job, job_id)))

    def find_job(self, kind: str, params_hash: str) -> JobInfo | None:
        """The newest job with this kind and parameter hash, whatever its status."""
        q = (
            select(Job)
            .where(Job.kind == kind, Job.params_hash == params_hash)
            .order_by(Job.id.desc())
            .limit(1)
        )
        return self._read(lambda s: _opt(jq.job_info, s.scalar(q)))

    def list_jobs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
        example_id: str | None = None,
    ) -> list[JobInfo]:
        """Jobs newest first, optionally filtered by status(es), kind and the ``example_id`` of their
        parameters (in SQL: the JSON field, so an example's job is found however many newer jobs exist)."""
        q = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
        q = q.where(any_of(Job.status, status)) if status is not None else q
        q = q.where(Job.kind == kind) if kind is not None else q
        q = q.where(Job.params["example_id"].as_string() == example_id) if example_id is not None else q
        return self._read(lambda s: [jq.job_info(j) for j in s.scalars(q)])

    def job_counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        return self._read(jq.counts)

    # ---- workers ----------------------------------------------------------------------------------
    def worker_heartbeat(
        self,
        worker_id: str,
        *,
        host: str | None = None,
        pid: int | None = None,
        devices: Sequence[str] | None = None,
        current_job_id: int | None = None,
        status: str = "running",
    ) -> WorkerInfo:
        """Register or refresh a worker (``status="stopped"`` when it exits cleanly)."""
        return self._write(
            lambda s: jq.worker_info(
                jq.worker_beat(
                    s,
                    worker_id,
                    host=host,
                    pid=pid,
                    devices=devices,
                    current_job_id=current_job_id,
                    status=status,
                )
            )
        )

    def list_workers(self, *, alive_within_s: float | None = None) -> list[WorkerInfo]:
        """Workers by last heartbeat, newest first; with ``alive_within_s`` only running, recently seen ones."""
        q = select(Worker).order_by(Worker.heartbeat_at.desc())
        if alive_within_s is not None:
            since = utcnow() - timedelta(seconds=alive_within_s)
            q = q.where(Worker.status == "running", Worker.heartbeat_at >= since)
        return self._read(lambda s: [jq.worker_info(w) for w in s.scalars(q)])


def _opt(fn: Callable[[Any], T], value: Any) -> T | None:
    return fn(value) if value is not None else None
