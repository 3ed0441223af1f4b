"""``Store``: every database access of fastif goes through this class.

One session per unit of work: each method opens its own short session (reads) or write transaction
and returns plain dataclasses from :mod:`fastif_core.store.records`, never live ORM objects. For
several writes that must land together use ``with store.transaction() as s:`` and the session-level
functions of ``examples``, ``results`` and ``jobs_queue``.

A ``Store`` holds an engine (a connection pool): open one per process (after a fork, open a new one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from fastif_core.errors import WorkspaceError
from fastif_core.store import engine as eng
from fastif_core.store import examples as ex
from fastif_core.store import jobs_queue as jq
from fastif_core.store import results as res
from fastif_core.store.queue_api import QueueMethods
from fastif_core.store.records import (
    AppResultInfo,
    DatasetInfo,
    ExampleFilter,
    ExampleLike,
    ExampleRow,
    ExampleSummary,
    GroupSummary,
    InfluenceRunInfo,
    ModelInfo,
    NeighborInfo,
    PredictionIn,
    PredictionInfo,
)
from fastif_core.store.schema import Dataset, InfluenceRun, Model, Prediction

T = TypeVar("T")


def _filter(f: ExampleFilter | None, kw: dict[str, Any]) -> ExampleFilter:
    """``f`` with the keyword filters applied on top (unknown keywords raise TypeError)."""
    if f is None:
        return ExampleFilter(**kw)
    return replace(f, **kw) if kw else f


class Store(QueueMethods):
    """The workspace database (SQLite ``<workspace>/fastif.db`` by default, any SQLAlchemy URL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer_engine = engine.execution_options(**{eng.BEGIN_OPTION: "IMMEDIATE"})

    @classmethod
    def open(
        cls,
        workspace: str | Path | None = None,
        url: str | None = None,
        *,
        migrate: bool = True,
        echo: bool = False,
    ) -> Store:
        """Open (creating if needed) and migrate to the newest schema.

        Args:
            workspace: directory whose ``fastif.db`` is used when no URL is given.
            url: any SQLAlchemy URL; default ``$FASTIF_DB_URL``, then the workspace file.
            migrate: run the Alembic migrations up to head (``False``: use the schema as it is).
        """
        store = cls(eng.make_engine(eng.resolve_url(workspace, url), echo=echo))
        if migrate:
            try:
                eng.upgrade(store.engine)
            except (
                Exception
            ) as err:  # e.g. a database written by a newer fastif, a lock, a refused connection
                store.close()
                if isinstance(err, DBAPIError):
                    raise WorkspaceError(eng.describe_db_error(err, store.url)) from err
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise WorkspaceError(f"cannot migrate database {store.url}: {first}") from err
        return store

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def analyze(self) -> None:
        """Refresh the query planner's statistics (``ANALYZE``, SQLite and PostgreSQL) after a bulk load:
        without them SQLite walks the (in_workspace, id) index for filters that match nearly every row and
        looks each row up (0.7 s instead of 0.1 s per Browse count at N = 400,000)."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the database file (and truncate it), so the file's size is
        the database's; nothing for a server database."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def revision(self) -> str | None:
        """The schema (Alembic) revision of the database."""
        return eng.current_revision(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (nothing is committed unless the caller commits)."""
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write unit of work, committed on success, rolled back on error (SQLite: BEGIN IMMEDIATE)."""
        with Session(self._writer_engine, expire_on_commit=False) as s, s.begin():
            yield s

    def _read(self, fn: Callable[[Session], T]) -> T:
        with self.session() as s:
            return fn(s)

    def _write(self, fn: Callable[[Session], T]) -> T:
        with self.transaction() as s:
            return fn(s)

    def _write_for_job(
        self,
        fn: Callable[[Session], T],
        ref: Callable[[T], dict[str, Any]],
        job_id: int | None,
        owner: str | None,
    ) -> T:
        """Run ``fn``; with a job, check its lease first and mark it done in the same transaction."""
        with self.transaction() as s:
            if job_id is not None:
                jq.owned(s, job_id, owner or "")
            out = fn(s)
            if job_id is not None:
                jq.complete(s, job_id, owner or "", ref(out))
            return out

    # ---- datasets and examples -------------------------------------------------------------------
    def upsert_dataset(
        self,
        name: str,
        *,
        label_scheme: str | None = None,
        labels: Sequence[str] | None = None,
        source: str | None = None,
    ) -> DatasetInfo:
        """Create the dataset or update the fields given (None = keep)."""
        return self._write(
            lambda s: ex.dataset_info(
                ex.upsert_dataset(s, name, label_scheme=label_scheme, labels=labels, source=source)
            )
        )

    def get_dataset(self, name: str) -> DatasetInfo | None:
        return self._read(
            lambda s: _opt(ex.dataset_info, s.scalar(select(Dataset).where(Dataset.name == name)))
        )

    def list_datasets(self) -> list[DatasetInfo]:
        return self._read(
            lambda s: [ex.dataset_info(d) for d in s.scalars(select(Dataset).order_by(Dataset.name))]
        )

    def add_examples(self, examples: Iterable[ExampleLike]) -> int:
        """Insert or update ``NLIExample``-like records by id in bulk (idempotent); returns the count given."""
        return self._write(lambda s: ex.add_examples(s, examples))

    def get_example(self, example_id: str, model_id: int | None = None) -> ExampleRow | None:
        """One example with the prediction of ``model_id`` (None = latest model); None if unknown."""
        rows = self.get_examples([example_id], model_id)
        return rows[0] if rows else None

    def get_examples(self, ids: Sequence[str], model_id: int | None = None) -> list[ExampleRow]:
        """Examples in the order of ``ids`` (unknown ids are left out)."""
        return self._read(lambda s: ex.get_examples(s, list(ids), model_id))

    def query_examples(
        self,
        filters: ExampleFilter | None = None,
        *,
        order_by: str = "id",
        descending: bool = False,
        limit: int | None = 100,
        offset: int = 0,
        **kw: Any,
    ) -> list[ExampleRow]:
        """One page of examples matching ``filters`` (or the same fields as keywords).

        ``order_by``: id, dataset, split, label, genre, heuristic, subcase, template, train_pos,
        predicted, correct, confidence.
        """
        f = _filter(filters, kw)
        return self._read(lambda s: ex.query(s, f, order_by, descending, limit, offset))

    def count_examples(self, filters: ExampleFilter | None = None, **kw: Any) -> int:
        return self.summarize_examples(filters, **kw).count

    def summarize_examples(self, filters: ExampleFilter | None = None, **kw: Any) -> ExampleSummary:
        """Count, predicted count, correct count (and ``.accuracy``) for a filter."""
        f = _filter(filters, kw)
        return self._read(lambda s: ex.summary(s, f))

    def summarize_by(
        self, column: str, filters: ExampleFilter | None = None, **kw: Any
    ) -> list[GroupSummary]:
        """Counts and accuracy per value of ``column`` (dataset, split, label, genre, heuristic, ...)."""
        f = _filter(filters, kw)
        return self._read(lambda s: ex.summary_by(s, column, f))

    def distinct_values(self, column: str, filters: ExampleFilter | None = None, **kw: Any) -> list[Any]:
        """Sorted non-null values of ``column`` among matching examples (for filter widgets)."""
        f = _filter(filters, kw)
        return self._read(lambda s: ex.distinct_values(s, column, f))

    def predicted_labels(self, model_id: int | None = None) -> list[str]:
        """Sorted labels ``model_id`` (None = the active model) predicted for any stored example, read from
        the predictions' own index (the Predicted-label filter's options: no join with the examples)."""

        def fn(s: Session) -> list[str]:
            mid = model_id if model_id is not None else ex.latest_model_id(s)
            q = select(Prediction.predicted).where(Prediction.model_id == (mid if mid is not None else -1))
            return list(s.scalars(q.distinct().order_by(Prediction.predicted)))

        return self._read(fn)

    def set_training_set(self, ids: Sequence[str]) -> None:
        """Training position ``i`` (the FAISS row) is ``ids[i]``; replaces any previous training set."""
        self._write(lambda s: ex.set_training_set(s, list(ids)))

    def train_ids(self, model_id: int | None = None) -> list[str]:
        """Training example ids in position order: FAISS position ``p`` ↔ ``train_ids()[p]``; of
        ``model_id`` (its own order, never changed), or of the active training set when None."""
        return self._read(lambda s: ex.train_ids(s, model_id))

    def publish(
        self,
        *,
        datasets: Mapping[str, Mapping[str, Any]],
        examples: Sequence[ExampleLike],
        model_id: int,
        train_ids: Sequence[str],
        predictions: Iterable[PredictionIn],
        neighbors: Mapping[str, Sequence[tuple[str, float]]],
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Switch the workspace to a new build in one transaction: datasets (name → upsert fields) and
        ``examples`` (exactly the workspace's members from now on), the model's training order, its
        predictions and neighbours, the active model. ``before_commit`` (the manifest rename) runs last
        inside the transaction: if it fails, nothing in the store changes."""

        def fn(s: Session) -> None:
            for name, fields in datasets.items():
                ex.upsert_dataset(s, name, **fields)
            ex.add_examples(s, examples)
            ex.set_training_order(s, model_id, list(train_ids))
            ex.set_training_set(s, list(train_ids))
            ex.set_workspace_members(s, [e.id for e in examples])
            res.save_predictions(s, model_id, predictions)
            res.save_neighbors(s, model_id, neighbors)
            ex.set_active_model(s, model_id)
            if before_commit is not None:
                s.flush()
                before_commit()

        self._write(fn)

    # ---- models, predictions, neighbours ----------------------------------------------------------
    def get_or_create_model(
        self,
        name: str,
        checkpoint_path: str | Path,
        train_config: Any,
        label_names: Sequence[str],
        *,
        metrics: dict[str, Any] | None = None,
        config_hash: str | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> ModelInfo:
        """The model registered under ``config_hash`` (default: hash of ``train_config``), created if new
        (``lineage``: how it was made, e.g. base model, method, settings, data hash, parent model)."""
        return self._write(
            lambda s: res.model_info(
                res.get_or_create_model(
                    s, name, str(checkpoint_path), train_config, label_names, metrics, config_hash, lineage
                )
            )
        )

    def find_model(self, *, config_hash: str | None = None, name: str | None = None) -> ModelInfo | None:
        """The newest model matching the given fields (no fields: the newest model)."""
        q = select(Model).order_by(Model.id.desc()).limit(1)
        q = q.where(Model.config_hash == config_hash) if config_hash is not None else q
        q = q.where(Model.name == name) if name is not None else q
        return self._read(lambda s: _opt(res.model_info, s.scalar(q)))

    def get_model(self, model_id: int) -> ModelInfo | None:
        return self._read(lambda s: _opt(res.model_info, s.get(Model, model_id)))

    def list_models(self) -> list[ModelInfo]:
        return self._read(lambda s: [res.model_info(m) for m in s.scalars(select(Model).order_by(Model.id))])

    def update_model(
        self,
        model_id: int,
        *,
        metrics: dict[str, Any] | None = None,
        checkpoint_path: str | Path | None = None,
    ) -> ModelInfo:
        """Replace a model's metrics and/or checkpoint path."""

        def fn(s: Session) -> ModelInfo:
            m = s.get(Model, model_id)
            if m is None:
                raise WorkspaceError(f"model {model_id} does not exist")
            m.metrics = dict(metrics) if metrics is not None else m.metrics
            m.checkpoint_path = str(checkpoint_path) if checkpoint_path is not None else m.checkpoint_path
            return res.model_info(m)

        return self._write(fn)

    def save_predictions(self, model_id: int, predictions: Iterable[PredictionIn]) -> int:
        """Insert or replace predictions in bulk (idempotent)."""
        return self._write(lambda s: res.save_predictions(s, model_id, predictions))

    def get_prediction(self, model_id: int, example_id: str) -> PredictionInfo | None:
        return self.get_predictions(model_id, [example_id]).get(example_id)

    def get_predictions(
        self, model_id: int, example_ids: Sequence[str] | None = None
    ) -> dict[str, PredictionInfo]:
        """Predictions by example id (all of the model's when ``example_ids`` is None)."""
        return self._read(lambda s: res.get_predictions(s, model_id, example_ids))

    def save_neighbors(self, model_id: int, neighbors: Mapping[str, Sequence[tuple[str, float]]]) -> int:
        """``{query_id: [(train_id, distance), ...nearest first]}``; replaces those queries' lists."""
        return self._write(lambda s: res.save_neighbors(s, model_id, neighbors))

    def get_neighbors(self, model_id: int, query_id: str, limit: int | None = None) -> list[NeighborInfo]:
        return self._read(lambda s: res.get_neighbors(s, model_id, query_id, limit))

    def neighbor_lists(self, model_id: int) -> dict[str, list[tuple[str, float]]]:
        """Every stored neighbour list of the model by query id, nearest first (a re-import's input)."""
        return self._read(lambda s: res.neighbor_lists(s, model_id))

    # ---- influence --------------------------------------------------------------------------------
    def find_influence_run(self, model_id: int, example_id: str, config_hash: str) -> InfluenceRunInfo | None:
        """The stored run for this (model, example, config hash), without scores; None if not computed."""
        return self._read(lambda s: _opt(res.run_info, res.find_run(s, model_id, example_id, config_hash)))

    def save_influence_run(
        self,
        model_id: int,
        example_id: str,
        config: Any,
        scores: Mapping[str, float] | Sequence[tuple[str, float]],
        *,
        num_candidates: int | None = None,
        timings: Mapping[str, Any] | None = None,
        s_test_stats: Mapping[str, Any] | None = None,
        job_id: int | None = None,
        owner: str | None = None,
        config_hash: str | None = None,
    ) -> int:
        """Store a run and all its scores atomically; returns the run id.

        ``config`` is the InfluenceConfig (or its dict), stored under ``config_hash`` (default: the hash
        of ``config``, see ``fastif_core.config.config_hash``); ranks are assigned by value ascending. With
        ``job_id``/``owner`` the job is marked done (``result={"influence_run_id": id}``) in the same
        transaction, and LeaseLostError is raised (nothing written) if ``owner`` lost the job. A
        run already stored under the same key is returned as is (retried writes are idempotent).
        """
        return self._write_for_job(
            lambda s: (
                res.save_run(
                    s,
                    model_id,
                    example_id,
                    config,
                    scores,
                    num_candidates,
                    timings,
                    s_test_stats,
                    job_id,
                    config_hash,
                ).id
            ),
            lambda run_id: {"influence_run_id": run_id},
            job_id,
            owner,
        )

    def get_influence_run(self, run_id: int, *, with_text: bool = True) -> InfluenceRunInfo | None:
        """A run with all scores, most helpful first (``.helpful(n)`` / ``.harmful(n)``)."""
        return self._read(lambda s: res.get_run(s, run_id, with_text))

    def list_influence_runs(
        self, *, model_id: int | None = None, example_id: str | None = None, limit: int = 100
    ) -> list[InfluenceRunInfo]:
        """Runs newest first, without scores."""
        q = select(InfluenceRun).order_by(InfluenceRun.id.desc()).limit(limit)
        q = q.where(InfluenceRun.model_id == model_id) if model_id is not None else q
        q = q.where(InfluenceRun.example_id == example_id) if example_id is not None else q
        return self._read(lambda s: [res.run_info(r) for r in s.scalars(q)])

    # ---- application results ----------------------------------------------------------------------
    def save_app_result(
        self,
        app: str,
        config: Any,
        result: Mapping[str, Any],
        *,
        model_id: int | None = None,
        kind: str = "default",
        job_id: int | None = None,
        owner: str | None = None,
        config_hash: str | None = None,
    ) -> AppResultInfo:
        """Store a result of app "graph", "correction" or "bench" (the latter always appended).

        Graph and correction results are unique per (model, kind, config hash; default: hash of
        ``config``): a repeat returns the stored one. With ``job_id``/``owner`` the job is done in the
        same transaction (``result={"<app>_id": id}``).
        """
        return self._write_for_job(
            lambda s: res.app_info(
                app, res.save_app_result(s, app, model_id, config, result, kind, job_id, config_hash)
            ),
            lambda info: {f"{app}_id": info.id},
            job_id,
            owner,
        )

    def find_app_result(
        self, app: str, config_hash: str, *, model_id: int | None = None, kind: str = "default"
    ) -> AppResultInfo | None:
        return self._read(
            lambda s: _opt(
                lambda r: res.app_info(app, r), res.find_app_result(s, app, model_id, kind, config_hash)
            )
        )

    def get_app_result(self, app: str, result_id: int) -> AppResultInfo | None:
        return self._read(
            lambda s: _opt(lambda r: res.app_info(app, r), s.get(res.app_table(app), result_id))
        )

    def list_app_results(
        self, app: str, *, model_id: int | None = None, kind: str | None = None, limit: int = 50
    ) -> list[AppResultInfo]:
        """Results of ``app``, newest first."""
        table = res.app_table(app)
        q = select(table).order_by(table.id.desc()).limit(limit)
        q = q.where(table.model_id == model_id) if model_id is not None and app != "bench" else q
        q = q.where(table.kind == kind) if kind is not None else q
        return self._read(lambda s: [res.app_info(app, r) for r in s.scalars(q)])

    def save_bench(
        self,
        config: Any,
        result: Mapping[str, Any],
        *,
        kind: str = "default",
        job_id: int | None = None,
        owner: str | None = None,
    ) -> AppResultInfo:
        """Append a ``fastif bench`` result (``bench.json`` contents)."""
        return self.save_app_result("bench", config, result, kind=kind, job_id=job_id, owner=owner)

    def latest_bench(self, kind: str | None = None) -> AppResultInfo | None:
        runs = self.list_app_results("bench", kind=kind, limit=1)
        return runs[0] if runs else None


def _opt(fn: Callable[[Any], T], value: Any) -> T | None:
    return fn(value) if value is not None else None
