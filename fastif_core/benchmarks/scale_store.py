"""The store parts of ``fastif bench --section scale`` (:mod:`fastif_core.benchmarks.scale`): the Browse and
Example pages' queries and the job queue (into a copy of the database), timed through the store's API the
dashboard calls (``app/data_access.py``)."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fastif_core.benchmarks.common import spread, timed
from fastif_core.config import InfluenceConfig, STestConfig

BROWSE_PAGE = 2000  # rows of the Browse table (app/data_access.TABLE_LIMIT)
JOBS_PAGE = 200  # jobs the Jobs page lists (app/data_access.list_jobs)
BROWSE_COLUMNS = ("dataset", "split", "label", "genre", "heuristic", "subcase")


def repeat(fn: Callable[[], Any], n: int) -> tuple[Any, dict[str, Any]]:
    """The last value of ``n`` calls of ``fn`` and the spread of their seconds."""
    out, seconds = None, []
    for _ in range(max(n, 1)):
        out, sec = timed(fn)
        seconds.append(sec)
    return out, spread(seconds)


# ------------------------------------------------------------------------------------------------ browse
def browse_filters(store: Any, search: str) -> dict[str, Any]:
    """The filters the Browse part times, by name (values drawn from the store's own)."""
    from fastif_core.store import ExampleFilter

    labels = store.distinct_values("label")
    return {
        "none": ExampleFilter(),
        "training": ExampleFilter(in_training_set=True),
        "incorrect": ExampleFilter(correct=False),
        "label": ExampleFilter(label=labels[:1] or None),
        "search": ExampleFilter(search=search),
    }


def browse_part(store: Any, o: Any) -> dict[str, Any]:
    """The Browse page's queries: options, first page and counts per filter, groups, deep pages."""
    options, options_s = repeat(  # as app/data_access.filter_options asks for them
        lambda: {
            "predicted": store.predicted_labels(),
            **{c: store.distinct_values(c) for c in BROWSE_COLUMNS},
        },
        o.repeats,
    )
    filters = {}
    for name, f in browse_filters(store, o.search).items():
        rows, page_s = repeat(lambda f=f: store.query_examples(f, limit=o.page_size), o.repeats)
        summary, count_s = repeat(lambda f=f: store.summarize_examples(f), o.repeats)
        filters[name] = {
            "filter": {k: v for k, v in asdict(f).items() if v is not None},
            "count": summary.count,
            "predicted": summary.predicted,
            "correct": summary.correct,
            "rows": len(rows),
            "page": page_s,
            "counts": count_s,
        }
    groups = {}
    for column in BROWSE_COLUMNS:
        found, group_s = repeat(lambda c=column: store.summarize_by(c), o.repeats)
        groups[column] = {"groups": len(found), "seconds": group_s}
    total = filters["none"]["count"]
    offsets = o.offsets or (0, BROWSE_PAGE, total // 2, max(total - o.page_size, 0))
    pages = {}
    for offset in sorted({x for x in offsets if x < max(total, 1)}):
        rows, page_s = repeat(lambda x=offset: store.query_examples(limit=o.page_size, offset=x), o.repeats)
        pages[str(offset)] = {
            "rows": len(rows),
            "first_id": rows[0].id if rows else None,
            "last_id": rows[-1].id if rows else None,
            "seconds": page_s,
        }
    return {
        "options": {"values": {c: len(v) for c, v in options.items()}, "seconds": options_s},
        "page_size": o.page_size,
        "filters": filters,
        "summarize_by": groups,
        "pages": pages,
    }


def example_part(store: Any, model_id: int, ids: Sequence[str], o: Any) -> dict[str, Any]:
    """The Example page's queries for each of ``ids``."""
    out = {}
    for example_id in ids:
        row, get_s = repeat(lambda i=example_id: store.get_example(i, model_id), o.repeats)
        near, near_s = repeat(lambda i=example_id: store.get_neighbors(model_id, i), o.repeats)
        runs, runs_s = repeat(
            lambda i=example_id: store.list_influence_runs(model_id=model_id, example_id=i), o.repeats
        )
        entry = {
            "found": row is not None,
            "neighbors": len(near),
            "runs": len(runs),
            "example": get_s,
            "neighbors_seconds": near_s,
            "runs_seconds": runs_s,
        }
        if runs:
            run, run_s = repeat(lambda r=runs[0].id: store.get_influence_run(r), o.repeats)
            entry |= {"run_scores": len(run.scores) if run is not None else 0, "run_seconds": run_s}
        out[example_id] = entry
    return {"examples": out}


# ---------------------------------------------------------------------------------------------- import
def read_build(store: Any, model_id: int) -> dict[str, Any]:
    """What ``fastif prepare``'s import phase writes, read back from ``store``: the datasets, the workspace's
    examples, the model's training order, its predictions and neighbour lists (``Store.publish``'s input)."""
    from fastif_core.store import PredictionIn

    rows = store.query_examples(model_id=model_id, limit=None)
    names = {r.dataset for r in rows}
    datasets = {
        d.name: {"label_scheme": d.label_scheme, "labels": list(d.labels), "source": d.source}
        for d in store.list_datasets()
        if d.name in names
    }
    predictions = [
        PredictionIn(r.id, r.probs, r.predicted, bool(r.correct)) for r in rows if r.predicted is not None
    ]
    return {
        "datasets": datasets,
        "examples": rows,
        "train_ids": store.train_ids(model_id),
        "predictions": predictions,
        "neighbors": store.neighbor_lists(model_id),
    }


def empty_target(url: str) -> None:
    """Refuse (ConfigError) a ``--scale-db-url`` database that already holds examples: the import part
    writes a whole workspace into it and must start from nothing."""
    from fastif_core.errors import ConfigError
    from fastif_core.store import Store

    with Store.open(url=url) as target:
        held = target.count_examples(in_workspace=None)
    if held:
        raise ConfigError(
            f"--scale-db-url: {url} already holds {held:,} examples; allowed: an empty scratch database "
            "(drop and create it again)"
        )


def import_part(store: Any, model_id: int, o: Any) -> dict[str, Any]:
    """The import phase again, timed alone: the workspace's build (read from its own store) published into
    an empty database: ``o.db_url`` (e.g. PostgreSQL) or a new SQLite file that is deleted afterwards."""
    from fastif_core.store import Store

    model = store.get_model(model_id)
    (build, read_s) = timed(lambda: read_build(store, model_id))
    with tempfile.TemporaryDirectory(prefix="fastif-scale-import-") as tmp:
        url = o.db_url or f"sqlite:///{Path(tmp) / 'fastif.db'}"
        if o.db_url:
            empty_target(url)
        with Store.open(url=url) as target:
            target_model = target.get_or_create_model(
                model.name,
                model.checkpoint_path,
                model.train_config,
                model.label_names,
                metrics=model.metrics,
                config_hash=model.config_hash,
                lineage=model.lineage,
            )
            _, publish_s = timed(lambda: target.publish(model_id=target_model.id, **build))
            _, analyze_s = timed(target.analyze)  # as prepare's import phase does
            counts = {
                "examples": target.count_examples(),
                "training": target.count_examples(in_training_set=True),
                "neighbours": sum(len(v) for v in target.neighbor_lists(target_model.id).values()),
            }
            size_mb, shown = database_mb(target, url), target.url
    return {
        "database": "sqlite (a temporary file)" if not o.db_url else shown,
        "read_seconds": read_s,
        "publish_seconds": publish_s,
        "analyze_seconds": analyze_s,
        "examples": len(build["examples"]),
        "predictions": len(build["predictions"]),
        "neighbour_rows": sum(len(v) for v in build["neighbors"].values()),
        "stored": counts,
        "database_mb": size_mb,
    }


def database_mb(store: Any, url: str) -> float | None:
    """MiB the database takes: the SQLite file with its WAL, or PostgreSQL's ``pg_database_size``."""
    from sqlalchemy import text

    if url.startswith("sqlite:///"):
        store.checkpoint()  # the write-ahead log folded into the file first
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()) / 2**20
    if url.startswith("postgresql"):
        with store.engine.connect() as conn:
            return float(conn.execute(text("SELECT pg_database_size(current_database())")).scalar()) / 2**20
    return None


# ------------------------------------------------------------------------------------------------ jobs
def copy_database(root: Path, into: Path) -> Path | None:
    """A consistent copy of the workspace's SQLite database (its WAL included) in ``into``; None when the
    workspace's database is not its own SQLite file (``$FASTIF_DB_URL`` names another)."""
    from fastif_core.store.engine import resolve_url

    src = root / "fastif.db"
    if not src.is_file() or resolve_url(root) != resolve_url(root, f"sqlite:///{src.resolve()}"):
        return None
    dst = into / "fastif.db"
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def jobs_part(root: Path, model_id: int, ids: Sequence[str], o: Any) -> dict[str, Any]:
    """``o.jobs`` influence jobs enqueued into a copy of the database, then the pages' job listings."""
    from fastif_core import jobs
    from fastif_core.store import Store

    with tempfile.TemporaryDirectory(prefix="fastif-scale-jobs-") as tmp:
        copy = None if o.db_url else copy_database(root, Path(tmp))
        if copy is None and not o.db_url:
            return {
                "skipped": "the workspace's database is not its own SQLite file: nothing is copied "
                "(give a scratch database with --scale-db-url)"
            }
        url = o.db_url or f"sqlite:///{copy}"
        with Store.open(url=url) as store:
            before = sum(store.job_counts().values())

            def enqueue(i: int) -> Any:
                s_test = replace(STestConfig.default(), seed=o.seed + i)  # distinct settings: distinct jobs
                params = jobs.InfluenceParams(
                    example_id=ids[i % len(ids)], config=InfluenceConfig(s_test=s_test), model_id=model_id
                )
                return jobs.enqueue(store, "influence", params)

            _, insert_s = timed(lambda: [enqueue(i) for i in range(o.jobs)])
            listed, list_s = repeat(lambda: store.list_jobs(limit=JOBS_PAGE), o.repeats)
            _, active_s = repeat(
                lambda: store.list_jobs(status=["queued", "running"], limit=JOBS_PAGE), o.repeats
            )
            found, lookup_s = repeat(  # the Example page's look-up (app/data_access.influence_job)
                lambda: store.list_jobs(kind="influence", example_id=ids[0], limit=JOBS_PAGE), o.repeats
            )
            counts, counts_s = repeat(store.job_counts, o.repeats)
            every, shown = store.list_jobs(limit=None), store.url
    return {
        "inserted": o.jobs,
        "before": before,
        "listed_all": len(every),
        "counts": counts,
        "insert_seconds": insert_s,
        "insert_ms_per_job": insert_s * 1000 / max(o.jobs, 1),
        "page_rows": len(listed),
        "list": list_s,
        "list_active": active_s,
        "example_job_lookup": lookup_s,
        "example_jobs_found": len(found),
        "database": "sqlite (a copy)" if not o.db_url else shown,
        "job_counts": counts_s,
    }
