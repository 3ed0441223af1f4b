"""Job kinds, their validated parameters, and the rules of the queue (the worker lives in ``worker``).

A job is a row in the store (:class:`fastif_core.store.JobInfo`): ``kind``, ``params`` (the JSON of
a typed dataclass registered for that kind), ``params_hash``, ``status``, lease and progress fields.

Life of a job::

    enqueue ──► queued ──claim──► running ──complete──► done
                  ▲   │              │ ├──fail──────────► failed   (final: bad parameters, bugs)
                  │   │cancel        │ ├──fail(retry)───► queued   (transient: out of memory; bounded)
                  │   ▼              │ ├──cancel_job────► cancel_requested → confirm_cancel → cancelled
                  │ cancelled        │ └──release───────► queued   (clean shutdown; attempt not counted)
                  └── lease expired (worker killed) ──► claimed again, attempts + 1; failed after max_attempts

Rules:
- Enqueueing parameters equal to a queued, running or done job returns that job (one click twice =
  one computation). Failed and cancelled jobs may be enqueued again (a new job).
- Claiming is atomic (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``FOR UPDATE SKIP LOCKED``).
- A worker renews its lease by heartbeats (the worker's heartbeat thread, :mod:`fastif_core.worker.loop`)
  and learns there whether cancellation was requested; it stops between steps and stores nothing.
- Results and ``done`` are written in one transaction, only while the worker still owns the lease
  (``Store.save_influence_run(..., job_id=, owner=)``, ``Store.complete_job(job, owner, writer)``).
- Failures: a :class:`~fastif_core.errors.FastifError` (bad parameters, unknown example, diverging
  LiSSA) is final: retrying cannot help. A crash is retried through lease expiry, up to
  ``max_attempts``. :func:`is_retryable` names the caught exceptions worth a retry (out of memory,
  a locked database).

Kinds registered here: ``influence`` (:class:`InfluenceParams`) and ``prepare``
(:class:`~fastif_core.config.PrepareConfig`). The application modules register theirs with
:func:`register_kind` (names reserved: ``graph``, ``correction``, ``augmentation``,
``simulatability``, ``benchmark``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastif_core.config import InfluenceConfig, PrepareConfig, config_hash, from_dict, to_dict
from fastif_core.data.loaders import source_fingerprint
from fastif_core.errors import FastifError, JobError

if TYPE_CHECKING:
    from fastif_core.store import JobInfo, Store

RESERVED_KINDS = {  # kinds whose module registers them on import: a clear error until it is imported
    "graph": "influence graph (fastif_core.apps.graph.config)",
    "correct": "error correction and augmentation (fastif_core.apps.correct.config)",
    "activate_model": "switch the active model version (fastif_core.apps.correct.config)",
    "simulate": "simulatability study (fastif_core.apps.simulate.config)",
    "benchmark": "fastif bench as a job (not implemented: run fastif bench)",
}


class JobCancelled(JobError):
    """Raised in the job's thread at its next step when the job's cancellation was requested."""


@dataclass(frozen=True)
class JobKind:
    """A registered job kind: its parameter dataclass, a one-line description, retry budget."""

    name: str
    params_cls: type
    description: str
    max_attempts: int = 3
    inputs: Callable[[Any], Any] | None = None  # what the params name but do not contain (file contents)


_KINDS: dict[str, JobKind] = {}


def register_kind(
    name: str, params_cls: type, description: str, *, max_attempts: int = 3,
    inputs: Callable[[Any], Any] | None = None,
) -> JobKind:  # fmt: skip
    """Register (or re-register) a kind. ``params_cls`` is a dataclass, optionally with ``validate()``
    and a ``from_json_dict`` classmethod for nested configs. ``inputs(params)`` (JSON-able) fingerprints
    what the parameters only name, e.g. the contents of the files a prepare reads: it is part of the key
    under which an equal job is found, so the same request over changed files is a new job."""
    if not dataclasses.is_dataclass(params_cls):
        raise TypeError(f"job kind {name!r}: params_cls must be a dataclass, got {params_cls!r}")
    kind = JobKind(name, params_cls, description, max_attempts, inputs)
    _KINDS[name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    """The registered kind ``name``; JobError listing the known kinds otherwise."""
    if name in _KINDS:
        return _KINDS[name]
    if name in RESERVED_KINDS:
        raise JobError(
            f"job kind {name!r} ({RESERVED_KINDS[name]}) is not available: its module is not loaded"
        )
    raise JobError(f"unknown job kind {name!r}: allowed {sorted(_KINDS)}")


def kinds() -> list[JobKind]:
    """All registered kinds, by name."""
    return [_KINDS[k] for k in sorted(_KINDS)]


def parse_params(kind: str, data: Mapping[str, Any]) -> Any:
    """The validated parameter dataclass of ``kind`` from its JSON dict (JobError naming the problem)."""
    cls = get_kind(kind).params_cls
    try:
        build = getattr(cls, "from_json_dict", None)
        params = build(dict(data)) if build is not None else from_dict(cls, dict(data))
        return _validated(params)
    except FastifError as err:
        raise JobError(f"{kind} job: {err}") from err
    except (TypeError, ValueError) as err:
        raise JobError(f"{kind} job: invalid parameters {dict(data)!r}: {err}") from err


def _validated(params: Any) -> Any:
    validate = getattr(params, "validate", None)
    if validate is not None:
        validate()
    return params


def params_dict(params: Any) -> dict[str, Any]:
    """Canonical JSON dict of a parameter dataclass (defaults filled in; tuples become lists)."""
    return json.loads(json.dumps(to_dict(params)))


def params_hash(params: Any) -> str:
    """The hash under which equal parameters are recognised as the same job."""
    return config_hash(params_dict(params) if dataclasses.is_dataclass(params) else dict(params))


def enqueue(
    store: Store, kind: str, params: Any, *, priority: int = 0, max_attempts: int | None = None
) -> JobInfo:
    """Validate ``params`` (dataclass or dict) for ``kind`` and queue the job, or return the equal one."""
    spec = get_kind(kind)
    if dataclasses.is_dataclass(params):
        if not isinstance(params, spec.params_cls):
            raise JobError(
                f"{kind} job: parameters must be {spec.params_cls.__name__}, got {type(params).__name__}"
            )
        params = parse_params(kind, params_dict(params))  # validate + normalise through the same path
    else:
        params = parse_params(kind, params)
    data = params_dict(params)
    key = data if spec.inputs is None else {"params": data, "inputs": spec.inputs(params)}
    return store.enqueue_job(kind, data, params_hash=config_hash(key), priority=priority,
                             max_attempts=max_attempts or spec.max_attempts)  # fmt: skip


def job_params(job: JobInfo) -> Any:
    """The validated parameters of a stored job (JobError if they are bad: fail the job for good)."""
    return parse_params(job.kind, job.params)


def is_retryable(exc: BaseException) -> bool:
    """Whether a caught exception is transient (worth ``fail_job(retry=True)``): out of memory, a
    locked/unavailable database. FastifErrors and other exceptions are final."""
    if isinstance(exc, FastifError):
        return False
    if (
        isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
    ):  # torch.cuda.OutOfMemoryError
        return True
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError)


@dataclass(frozen=True)
class InfluenceParams:
    """Influence of the training examples on one test example (the dashboard's "Compute influence")."""

    example_id: str = field(metadata={"help": "id of the test example"})
    config: InfluenceConfig = field(
        default_factory=InfluenceConfig, metadata={"help": "candidates and s_test"}
    )
    model_id: int | None = field(
        default=None, metadata={"help": "model id in the store (None = the workspace's)"}
    )

    def validate(self) -> InfluenceParams:
        if not isinstance(self.example_id, str) or not self.example_id.strip():
            raise JobError(f"example_id={self.example_id!r} is invalid: allowed a non-empty example id")
        self.config.validate()
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> InfluenceParams:
        data = dict(data)
        config = InfluenceConfig.from_json_dict(data.pop("config", {}))
        return from_dict(cls, {**data, "config": config})


register_kind("influence", InfluenceParams, "influential training examples of one test example")


def prepare_inputs(cfg: PrepareConfig) -> dict[str, str | list[str]]:
    """The contents behind a prepare's sources and base model (see :func:`source_fingerprint`)."""
    return {"train": source_fingerprint(cfg.train), "evals": [source_fingerprint(e) for e in cfg.evals],
            "model": source_fingerprint(cfg.model)}  # fmt: skip


register_kind(
    "prepare",
    PrepareConfig,
    "import data, fine-tune, predict, build the kNN index",
    max_attempts=2,
    inputs=prepare_inputs,
)
