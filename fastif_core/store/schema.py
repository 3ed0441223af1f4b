"""The database schema: SQLAlchemy 2.x typed ORM models (one class per table).

The Alembic migrations in ``fastif_core/migrations/versions`` create exactly this schema (a test
compares them). Unique keys make every retried write idempotent; foreign keys tie results to the
model and examples that produced them. Timestamps are stored as naive UTC and returned as aware UTC.

Only :mod:`fastif_core.store` touches these classes; callers get plain dataclasses (``records``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
SLICE_COLUMNS = ("genre", "heuristic", "subcase", "template")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database (portable, comparable in SQL), aware UTC in Python."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    """A named collection of examples (e.g. ``mnli``, ``hans``, ``demo``) with its label scheme."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    label_scheme: Mapped[str] = mapped_column(String(64), default="")  # e.g. "mnli3", "hans2"
    labels: Mapped[list[Any]] = mapped_column(default=list)  # label names
    source: Mapped[str] = mapped_column(Text, default="")  # "demo", a path, "hf:..."
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)  # split -> number of examples
    num_examples: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Example(Base):
    """One NLI example (``NLIExample``); ``train_pos`` is its row in the active model's FAISS index /
    training set (each model's own order is in ``training_examples``)."""

    __tablename__ = "examples"
    __table_args__ = (
        Index("ix_examples_dataset_split", "dataset_id", "split"),
        Index("ix_examples_member_id", "in_workspace", "id"),  # Browse's pages: ids from the index alone
    )

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(64))
    premise: Mapped[str] = mapped_column(Text)
    hypothesis: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(64), index=True)
    genre: Mapped[str | None] = mapped_column(String(128), index=True)
    heuristic: Mapped[str | None] = mapped_column(String(128), index=True)
    subcase: Mapped[str | None] = mapped_column(String(128), index=True)
    template: Mapped[str | None] = mapped_column(String(128))
    slices: Mapped[dict[str, Any]] = mapped_column(default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    train_pos: Mapped[int | None] = mapped_column(Integer, unique=True)  # in the active model's training set
    in_workspace: Mapped[bool] = mapped_column(Boolean, default=True)  # in the current sources (rev 0003)


class Model(Base):
    """A fine-tuned classifier: where its checkpoint is, how it was trained, how well it does."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    checkpoint_path: Mapped[str] = mapped_column(Text)
    train_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config_hash: Mapped[str] = mapped_column(String(64), unique=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    label_names: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # rev 0003: how it was made (base model, method, settings, data hash, parent model) and whether the
    # workspace serves it now (exactly one active model once a prepare completed)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False)


class TrainingExample(Base):
    """Position ``pos`` (FAISS row) of a model's training set (rev 0003): written once per model."""

    __tablename__ = "training_examples"
    __table_args__ = (UniqueConstraint("model_id", "example_id", name="uq_training_examples_model_example"),)

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    pos: Mapped[int] = mapped_column(Integer, primary_key=True)
    example_id: Mapped[str] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"))


class Prediction(Base):
    """A model's class probabilities for one example (``predicted`` in the example's label scheme)."""

    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_model_predicted", "model_id", "predicted"),
        Index("ix_predictions_model_correct", "model_id", "correct"),
    )

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    example_id: Mapped[str] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), primary_key=True)
    probs: Mapped[list[Any]] = mapped_column()
    predicted: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)  # probability of the model's top class
    correct: Mapped[bool] = mapped_column(Boolean)


class Neighbor(Base):
    """The ``rank``-th nearest training example of a query example in a model's feature space."""

    __tablename__ = "neighbors"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    query_id: Mapped[str] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_id: Mapped[str] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"))
    distance: Mapped[float] = mapped_column(Float)


class Job(Base):
    """A unit of background work (see :mod:`fastif_core.jobs` for kinds and the state machine).

    ``dedup_key`` equals ``params_hash`` while the job is queued, running or done and is NULL once it
    failed or was cancelled, so the unique key (kind, dedup_key) lets one equal job exist at a time.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("kind", "dedup_key", name="uq_jobs_kind_dedup"),
        CheckConstraint(f"status IN {JOB_STATUSES!r}", name="ck_jobs_status"),
        Index("ix_jobs_claim", "status", "priority", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column()
    params_hash: Mapped[str] = mapped_column(String(64), index=True)
    dedup_key: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    device: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class InfluenceRun(Base):
    """One influence query: a model, a test example and the full InfluenceConfig (JSON + hash)."""

    __tablename__ = "influence_runs"
    __table_args__ = (
        UniqueConstraint("model_id", "example_id", "config_hash", name="uq_influence_runs_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    example_id: Mapped[str] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column()
    config_hash: Mapped[str] = mapped_column(String(64))
    num_candidates: Mapped[int] = mapped_column(Integer)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # seconds: knn, s_test, scoring, total
    s_test_stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class InfluenceScore(Base):
    """I(z_train, z_test) of one candidate; ``rank`` 0 = most helpful (most negative value)."""

    __tablename__ = "influence_scores"
    __table_args__ = (Index("ix_influence_scores_run_rank", "run_id", "rank"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("influence_runs.id", ondelete="CASCADE"), primary_key=True)
    train_id: Mapped[str] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)


class AppResultMixin:
    """Columns shared by the application results: config (JSON + hash), result JSON, provenance."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), default="default")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config_hash: Mapped[str] = mapped_column(String(64))
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Graph(AppResultMixin, Base):
    """An influence graph (application): nodes/edges in ``result``."""

    __tablename__ = "graphs"
    __table_args__ = (UniqueConstraint("model_id", "kind", "config_hash", name="uq_graphs_key"),)

    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class CorrectionRun(AppResultMixin, Base):
    """An error-correction run (application): before/after metrics and removed examples in ``result``."""

    __tablename__ = "correction_runs"
    __table_args__ = (UniqueConstraint("model_id", "kind", "config_hash", name="uq_correction_runs_key"),)

    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class BenchRun(AppResultMixin, Base):
    """One ``fastif bench`` result (``bench.json`` contents); repeated runs are all kept."""

    __tablename__ = "bench_runs"

    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class Worker(Base):
    """A running ``fastif worker`` process, so the dashboard can tell whether one is alive (rev 0002)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # the lease owner name
    host: Mapped[str] = mapped_column(String(200), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    devices: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, stopped
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Simulation(AppResultMixin, Base):
    """A simulatability study (application, rev 0006): per test example and explanation kind the
    simulator's loss change against the learning rate, and the summary, in ``result``."""

    __tablename__ = "simulations"
    __table_args__ = (UniqueConstraint("model_id", "kind", "config_hash", name="uq_simulations_key"),)

    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class InfluenceMatrix(Base):
    """An influence matrix (rev 0004): M test examples (rows) × N training examples (columns), one model,
    one InfluenceConfig; the values live in ``influence_matrix_chunks``. ``status`` is ``running`` until
    every chunk is stored (a restarted job continues from the chunks already there), then ``complete``."""

    __tablename__ = "influence_matrices"
    __table_args__ = (
        UniqueConstraint("model_id", "test_hash", "config_hash", name="uq_influence_matrices_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    test_ids: Mapped[list[Any]] = mapped_column()  # row order
    test_hash: Mapped[str] = mapped_column(String(64))
    train_positions: Mapped[list[Any]] = mapped_column()  # column order: training-set positions
    config: Mapped[dict[str, Any]] = mapped_column()
    config_hash: Mapped[str] = mapped_column(String(64))
    full: Mapped[bool] = mapped_column(Boolean, default=False)  # every training example, not the kNN union
    row_block: Mapped[int] = mapped_column(Integer)  # rows per chunk (tests whose s_test are solved together)
    col_block: Mapped[int] = mapped_column(Integer)  # columns per chunk
    status: Mapped[str] = mapped_column(String(16), default="running")
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class InfluenceMatrixChunk(Base):
    """One block of an influence matrix: rows ``row_start..+num_rows``, columns ``col_start..+num_cols``,
    as little-endian float32, row-major (NaN where the pair is not a kNN candidate of that test)."""

    __tablename__ = "influence_matrix_chunks"

    matrix_id: Mapped[int] = mapped_column(
        ForeignKey("influence_matrices.id", ondelete="CASCADE"), primary_key=True
    )
    row_start: Mapped[int] = mapped_column(Integer, primary_key=True)
    col_start: Mapped[int] = mapped_column(Integer, primary_key=True)
    num_rows: Mapped[int] = mapped_column(Integer)
    num_cols: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # compute time of this chunk
