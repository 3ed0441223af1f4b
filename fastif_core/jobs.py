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

Kinds: :data:`KINDS`, one explicit table of every kind and its parameter dataclass (the engine's
``influence``, ``influence_many``, ``matrix``, ``prepare``, and the applications' ``graph``, ``correct``,
``activate_model``, ``simulate``, and the gradient sketches' ``sketch``, ``sketch_click``); their handlers are :data:`fastif_core.worker.registry.HANDLERS`.
:data:`RESERVED_KINDS` names a kind that does not exist yet (a clear error instead of "unknown").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastif_core.apps.correct.config import ActivateParams, CorrectConfig
from fastif_core.apps.graph.config import GraphConfig
from fastif_core.apps.simulate.config import JOB_KIND as SIMULATE_KIND
from fastif_core.apps.simulate.config import SimulateParams
from fastif_core.config import (
    InfluenceConfig,
    PrepareConfig,
    SketchConfig,
    SketchQueryConfig,
    config_hash,
    from_dict,
    to_dict,
)
from fastif_core.data.loaders import source_fingerprint
from fastif_core.errors import ConfigError, FastifError, JobError

if TYPE_CHECKING:
    from fastif_core.store import JobInfo, Store

RESERVED_KINDS = {  # kinds that may come one day: a clear error instead of "unknown"
    "benchmark": "fastif bench as a job (not implemented: run fastif bench)",
}


class JobCancelled(JobError):
    """Raised in the job's thread at its next step when the job's cancellation was requested."""


@dataclass(frozen=True)
class JobKind:
    """A job kind: its parameter dataclass, a one-line description, retry budget."""

    name: str
    params_cls: type
    description: str
    max_attempts: int = 3
    inputs: Callable[[Any], Any] | None = None  # what the params name but do not contain (file contents)


def get_kind(name: str) -> JobKind:
    """The registered kind ``name``; JobError listing the known kinds otherwise."""
    if name in KINDS:
        return KINDS[name]
    if name in RESERVED_KINDS:
        raise JobError(f"job kind {name!r} ({RESERVED_KINDS[name]}) is not available")
    raise JobError(f"unknown job kind {name!r}: allowed {sorted(KINDS)}")


def kinds() -> list[JobKind]:
    """All registered kinds, by name."""
    return [KINDS[k] for k in sorted(KINDS)]


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
    return store.enqueue_job(
        kind,
        data,
        params_hash=config_hash(key),
        priority=priority,
        max_attempts=max_attempts or spec.max_attempts,
    )


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


def unique_ids(ids: Sequence[str]) -> list[str]:
    """The ids, stripped, in order; an empty list or an id given twice is a ConfigError."""
    out = [str(i).strip() for i in ids if str(i).strip()]
    if not out:
        raise ConfigError("examples: no example ids given (list ids with `fastif examples`)")
    twice = next((i for n, i in enumerate(out) if i in out[:n]), None)
    if twice is not None:
        raise ConfigError(f"examples: {twice!r} is listed twice; give each example once")
    return out


@dataclass(frozen=True)
class ManyInfluenceParams:
    """Influence of the training examples on many test examples, in one batched run."""

    example_ids: tuple[str, ...] = field(metadata={"help": "ids of the test examples"})
    config: InfluenceConfig = field(
        default_factory=InfluenceConfig, metadata={"help": "candidates and s_test"}
    )
    model_id: int | None = field(
        default=None, metadata={"help": "model id in the store (None = the workspace's)"}
    )

    def validate(self) -> ManyInfluenceParams:
        if isinstance(self.example_ids, str) or not all(isinstance(i, str) for i in self.example_ids):
            raise JobError(f"example_ids={self.example_ids!r} is invalid: allowed a list of example ids")
        try:
            unique_ids(self.example_ids)
        except ConfigError as exc:
            raise JobError(str(exc)) from None
        self.config.validate()
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ManyInfluenceParams:
        data = dict(data)
        config = InfluenceConfig.from_json_dict(data.pop("config", {}))
        ids = data.pop("example_ids", ())
        ids = tuple(ids) if isinstance(ids, list | tuple) else ids
        return from_dict(cls, {**data, "example_ids": ids, "config": config})


ROW_BLOCK, COL_BLOCK = (
    32,
    1024,
)  # an influence matrix's default layout: tests solved together, columns per block


@dataclass(frozen=True)
class MatrixParams:
    """An influence matrix job: test examples (rows), settings, kNN union or every training example."""

    test_ids: tuple[str, ...] = field(metadata={"help": "ids of the test examples (the rows, in order)"})
    config: InfluenceConfig = field(
        default_factory=InfluenceConfig, metadata={"help": "candidates and s_test"}
    )
    full: bool = field(
        default=False, metadata={"help": "every training example as a column (else the kNN union)"}
    )
    row_block: int = field(default=ROW_BLOCK, metadata={"help": "tests whose s_test are solved together"})
    col_block: int = field(default=COL_BLOCK, metadata={"help": "candidate columns per stored block"})
    model_id: int | None = field(
        default=None, metadata={"help": "model id in the store (None = the workspace's)"}
    )

    def validate(self) -> MatrixParams:
        if (
            isinstance(self.test_ids, str)
            or not self.test_ids
            or not all(isinstance(i, str) for i in self.test_ids)
        ):
            raise JobError(f"test_ids={self.test_ids!r} is invalid: allowed a non-empty list of example ids")
        if len(set(self.test_ids)) != len(self.test_ids):
            raise JobError("test_ids lists an example twice: each test example once")
        for name in ("row_block", "col_block"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise JobError(f"{name}={getattr(self, name)!r} is invalid: allowed an integer >= 1")
        self.config.validate()
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> MatrixParams:
        data = dict(data)
        config = InfluenceConfig.from_json_dict(data.pop("config", {}))
        ids = data.pop("test_ids", ())
        return from_dict(
            cls, {**data, "test_ids": tuple(ids) if isinstance(ids, list | tuple) else ids, "config": config}
        )


def prepare_inputs(cfg: PrepareConfig) -> dict[str, str | list[str]]:
    """The contents behind a prepare's sources and base model (see :func:`source_fingerprint`)."""
    return {
        "train": source_fingerprint(cfg.train),
        "evals": [source_fingerprint(e) for e in cfg.evals],
        "model": source_fingerprint(cfg.model),
    }


@dataclass(frozen=True)
class SketchParams:
    """The ``sketch`` job: build (or finish) one sketch index of the workspace's model."""

    config: SketchConfig = field(default_factory=SketchConfig, metadata={"help": "sketch settings"})
    model_id: int | None = field(
        default=None, metadata={"help": "model id in the store (None = the workspace's)"}
    )

    def validate(self) -> SketchParams:
        self.config.validate()
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SketchParams:
        data = dict(data)
        return from_dict(cls, {**data, "config": from_dict(SketchConfig, data.pop("config", {}))})


@dataclass(frozen=True)
class SketchClickParams:
    """A sketch list over all N, then the exact re-rank of its top candidates and the kNN set."""

    example_id: str = field(metadata={"help": "id of the test example"})
    config: InfluenceConfig = field(
        default_factory=InfluenceConfig, metadata={"help": "exact re-rank (k = kNN set)"}
    )
    sketch: SketchQueryConfig = field(
        default_factory=SketchQueryConfig, metadata={"help": "the sketch query"}
    )
    rerank: int = field(
        default=100, metadata={"help": "sketch's top helpful and top harmful re-ranked exactly"}
    )
    model_id: int | None = field(
        default=None, metadata={"help": "model id in the store (None = the workspace's)"}
    )

    def validate(self) -> SketchClickParams:
        if not isinstance(self.example_id, str) or not self.example_id.strip():
            raise JobError(f"example_id={self.example_id!r} is invalid: allowed a non-empty example id")
        if self.rerank < 1:
            raise JobError(f"rerank={self.rerank!r} is invalid: allowed an integer >= 1")
        self.config.validate()
        self.sketch.validate()
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SketchClickParams:
        data = dict(data)
        config = InfluenceConfig.from_json_dict(data.pop("config", {}))
        sketch = SketchQueryConfig.from_json_dict(data.pop("sketch", {}))
        return from_dict(cls, {**data, "config": config, "sketch": sketch})


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("influence", InfluenceParams, "influential training examples of one test example"),
        JobKind("influence_many", ManyInfluenceParams, "influential training examples of many test examples"),
        JobKind("matrix", MatrixParams, "influence matrix of many test examples (stored block by block)"),
        JobKind(
            "prepare",
            PrepareConfig,
            "import data, fine-tune, predict, build the kNN index",
            2,
            prepare_inputs,
        ),
        JobKind("graph", GraphConfig, "influence graph of test slices and their training examples"),
        JobKind("correct", CorrectConfig, "error correction / data augmentation by influence (Sec. 6.3)", 2),
        JobKind("activate_model", ActivateParams, "switch the workspace's active model version"),
        JobKind(
            SIMULATE_KIND, SimulateParams, "simulatability of influence explanations (paper Sec. 6.1)", 2
        ),
        JobKind("sketch", SketchParams, "gradient sketches of the training set (resumable blocks)"),
        JobKind("sketch_click", SketchClickParams, "sketch list over all N, then the exact re-rank"),
    )
}
