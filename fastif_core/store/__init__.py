"""Persistence: SQLAlchemy 2.x models, Alembic-versioned schema, and the :class:`Store` API.

``Store.open(workspace)`` opens ``<workspace>/fastif.db`` (SQLite, WAL, foreign keys on, busy
timeout) or any SQLAlchemy URL (argument or ``$FASTIF_DB_URL``; PostgreSQL for scale-out) and
migrates it to the newest schema. Methods return plain dataclasses (``records``).

Example::

    store = Store.open("workspaces/demo")
    store.add_examples(records)                           # idempotent bulk upsert
    rows = store.query_examples(dataset="hans", correct=False, limit=50)
    job = store.enqueue_job("influence", {...})           # or fastif_core.jobs.enqueue (validated)
"""

from fastif_core.store.engine import DB_FILENAME, ENV_URL, head_revision, resolve_url
from fastif_core.store.records import (
    AppResultInfo,
    DatasetInfo,
    ExampleFilter,
    ExampleLike,
    ExampleRow,
    ExampleSummary,
    GroupSummary,
    InfluenceRunInfo,
    JobInfo,
    ModelInfo,
    NeighborInfo,
    PredictionIn,
    PredictionInfo,
    ScoreInfo,
    WorkerInfo,
)
from fastif_core.store.schema import JOB_STATUSES
from fastif_core.store.store import Store

__all__ = [
    "DB_FILENAME",
    "ENV_URL",
    "JOB_STATUSES",
    "AppResultInfo",
    "DatasetInfo",
    "ExampleFilter",
    "ExampleLike",
    "ExampleRow",
    "ExampleSummary",
    "GroupSummary",
    "InfluenceRunInfo",
    "JobInfo",
    "ModelInfo",
    "NeighborInfo",
    "PredictionIn",
    "PredictionInfo",
    "ScoreInfo",
    "Store",
    "WorkerInfo",
    "head_revision",
    "resolve_url",
]
