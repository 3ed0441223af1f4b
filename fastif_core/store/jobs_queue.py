"""The job queue's state machine, as functions on an open write session (see ``Store`` for the API).

States: ``queued → running → done | failed | cancelled`` (and ``running → queued`` on release or
retry). A running job carries a lease (owner + expiry) that its worker renews by heartbeats; a job
whose lease expired is claimable again, with ``attempts`` incremented, until ``max_attempts`` is
reached and it fails with the last error. Every transition that finishes a job checks that the caller
still owns the lease, so a worker that lost its job can never overwrite another's result.

Concurrency: the caller runs each function in a write transaction. On SQLite that transaction
starts with ``BEGIN IMMEDIATE`` (one writer at a time, so select-then-update is atomic); on
PostgreSQL the candidate rows are locked with ``SELECT ... FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fastif_core.errors import JobError, LeaseLostError
from fastif_core.store.records import JobInfo, WorkerInfo
from fastif_core.store.schema import Job, Worker, utcnow

ACTIVE = ("queued", "running", "done")  # statuses that make an equal job a duplicate
FINISHED = ("done", "failed", "cancelled")


def job_info(job: Job) -> JobInfo:
    """A detached, plain copy of a job row."""
    return JobInfo(
        id=job.id,
        kind=job.kind,
        params=dict(job.params),
        params_hash=job.params_hash,
        status=job.status,
        priority=job.priority,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
        heartbeat_at=job.heartbeat_at,
        device=job.device,
        progress=job.progress,
        message=job.message,
        error=job.error,
        result=dict(job.result) if job.result is not None else None,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def enqueue(
    s: Session,
    kind: str,
    params: dict[str, Any],
    params_hash: str,
    *,
    max_attempts: int = 3,
    priority: int = 0,
) -> Job:
    """The queued/running/done job with this (kind, params_hash), or a new queued one."""
    if max_attempts < 1:
        raise JobError(f"max_attempts={max_attempts} is invalid: allowed an integer >= 1")
    existing = s.scalar(select(Job).where(Job.kind == kind, Job.dedup_key == params_hash))
    if existing is not None:
        return existing
    job = Job(
        kind=kind,
        params=params,
        params_hash=params_hash,
        dedup_key=params_hash,
        status="queued",
        priority=priority,
        attempts=0,
        max_attempts=max_attempts,
        progress=0.0,
        message="queued",
        cancel_requested=False,
        created_at=utcnow(),
    )
    try:
        with s.begin_nested():
            s.add(job)
    except IntegrityError:  # a concurrent enqueue (PostgreSQL) inserted the same job first
        return s.scalars(select(Job).where(Job.kind == kind, Job.dedup_key == params_hash)).one()
    return job


def _claimable(now: datetime, kinds: Sequence[str] | None) -> Any:
    expired = and_(Job.status == "running", Job.lease_expires_at < now)
    q = select(Job).where(or_(Job.status == "queued", expired))
    if kinds:
        q = q.where(Job.kind.in_(list(kinds)))
    return q.order_by(Job.priority.desc(), Job.id).limit(1).with_for_update(skip_locked=True)


def claim(
    s: Session,
    owner: str,
    lease_seconds: float,
    *,
    kinds: Sequence[str] | None = None,
    device: str | None = None,
) -> Job | None:
    """Lease the next claimable job to ``owner`` (queued first by priority, then expired leases)."""
    now = utcnow()
    while (job := s.scalar(_claimable(now, kinds))) is not None:
        if job.status == "running" and _settle_expired(job, now):
            continue  # it went to cancelled/failed; look for the next one
        job.status, job.attempts = "running", job.attempts + 1
        job.lease_owner, job.device = owner, device
        job.lease_expires_at = now + timedelta(seconds=lease_seconds)
        job.heartbeat_at = job.started_at = now
        job.progress, job.message, job.finished_at = 0.0, f"claimed by {owner}", None
        return job
    return None


def _settle_expired(job: Job, now: datetime) -> bool:
    """For a job whose worker vanished: finish it if cancelled or out of attempts (True), else note the loss."""
    lost = f"attempt {job.attempts}: worker {job.lease_owner} stopped responding (lease expired)"
    if job.cancel_requested:
        _finish(job, "cancelled", now, message="cancelled (its worker stopped responding)")
        return True
    if job.attempts >= job.max_attempts:
        last = f"; last error: {job.error}" if job.error else ""
        _finish(job, "failed", now, message="failed")
        job.error = f"gave up after {job.attempts} of {job.max_attempts} attempts: {lost}{last}"
        return True
    job.error = lost if not job.error else f"{lost}; previous: {job.error}"[:4000]
    return False


def _finish(job: Job, status: str, now: datetime, *, message: str) -> None:
    job.status, job.finished_at, job.message, job.lease_expires_at = status, now, message, None
    if status != "done":
        job.dedup_key = None  # failed / cancelled jobs may be enqueued again


def owned(s: Session, job_id: int, owner: str) -> Job:
    """The running job ``job_id`` leased to ``owner``, locked for update; else LeaseLostError."""
    job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise JobError(f"job {job_id} does not exist")
    if job.status != "running" or job.lease_owner != owner:
        holder = f"leased to {job.lease_owner}" if job.status == "running" else f"status {job.status}"
        raise LeaseLostError(f"job {job_id} is no longer owned by {owner} ({holder})")
    return job


def heartbeat(
    s: Session, job_id: int, owner: str, lease_seconds: float, progress: float | None, message: str | None
) -> bool:
    """Renew the lease, record progress; True when cancellation was requested."""
    job, now = owned(s, job_id, owner), utcnow()
    job.heartbeat_at, job.lease_expires_at = now, now + timedelta(seconds=lease_seconds)
    if progress is not None:
        job.progress = min(max(float(progress), 0.0), 1.0)
    if message is not None:
        job.message = message[:1000]
    return job.cancel_requested


def complete(s: Session, job_id: int, owner: str, result: dict[str, Any] | None) -> Job:
    """Mark the owned job done with ``result`` (the caller wrote its outputs in the same transaction)."""
    job = owned(s, job_id, owner)
    _finish(job, "done", utcnow(), message="done")
    job.progress, job.result = 1.0, result
    return job


def fail(s: Session, job_id: int, owner: str, error: str, retry: bool) -> Job:
    """Record ``error``; requeue when ``retry`` and attempts remain, else the job fails for good."""
    job = owned(s, job_id, owner)
    job.error = error[:20000]
    if retry and job.attempts < job.max_attempts:
        job.status, job.lease_owner, job.lease_expires_at = "queued", None, None
        job.message = f"retrying after error in attempt {job.attempts}"
    else:
        _finish(job, "failed", utcnow(), message="failed")
    return job


def release(s: Session, job_id: int, owner: str) -> Job:
    """Give an owned job back to the queue without counting the attempt (clean worker shutdown)."""
    job = owned(s, job_id, owner)
    job.status, job.attempts = "queued", max(job.attempts - 1, 0)
    job.lease_owner, job.lease_expires_at, job.progress = None, None, 0.0
    job.message = f"released by {owner}"
    return job


def cancel(s: Session, job_id: int) -> Job:
    """Queued → cancelled at once; running → cancel requested (its worker stops between steps)."""
    job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise JobError(f"job {job_id} does not exist")
    if job.status == "queued":
        _finish(job, "cancelled", utcnow(), message="cancelled before it started")
        job.cancel_requested = True
    elif job.status == "running":
        job.cancel_requested, job.message = True, "cancel requested"
    return job


def confirm_cancel(s: Session, job_id: int, owner: str) -> Job:
    """The worker stopped an owned job on request: it ends cancelled, nothing stored."""
    job = owned(s, job_id, owner)
    _finish(job, "cancelled", utcnow(), message="cancelled")
    return job


def counts(s: Session) -> dict[str, int]:
    """Number of jobs per status."""
    return {status: n for status, n in s.execute(select(Job.status, func.count()).group_by(Job.status))}


def worker_info(w: Worker) -> WorkerInfo:
    return WorkerInfo(
        id=w.id,
        host=w.host,
        pid=w.pid,
        devices=list(w.devices),
        status=w.status,
        current_job_id=w.current_job_id,
        started_at=w.started_at,
        heartbeat_at=w.heartbeat_at,
    )


def worker_beat(
    s: Session,
    worker_id: str,
    *,
    host: str | None,
    pid: int | None,
    devices: Sequence[str] | None,
    current_job_id: int | None,
    status: str,
) -> Worker:
    """Create or refresh a worker's row (registration and liveness in one call)."""
    w = s.get(Worker, worker_id, with_for_update=True)
    now = utcnow()
    if w is None:
        w = Worker(id=worker_id, host=host or "", pid=pid or 0, devices=list(devices or []), started_at=now)
        s.add(w)
    for name, value in (("host", host), ("pid", pid)):
        if value is not None:
            setattr(w, name, value)
    if devices is not None:
        w.devices = list(devices)
    w.status, w.current_job_id, w.heartbeat_at = status, current_job_id, now
    return w
