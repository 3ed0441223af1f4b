"""Models, predictions, neighbours, influence runs and application results, as functions on a session."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, aliased

from fastif_core.config import config_hash, to_dict
from fastif_core.errors import ConfigError, WorkspaceError
from fastif_core.store._sql import CHUNK, chunks, upsert
from fastif_core.store.records import (
    AppResultInfo,
    InfluenceRunInfo,
    ModelInfo,
    NeighborInfo,
    PredictionIn,
    PredictionInfo,
    ScoreInfo,
)
from fastif_core.store.schema import (
    BenchRun,
    CorrectionRun,
    Example,
    Graph,
    InfluenceRun,
    InfluenceScore,
    Model,
    Neighbor,
    Prediction,
    Simulation,
    utcnow,
)

APP_TABLES: dict[str, type[Graph] | type[CorrectionRun] | type[BenchRun] | type[Simulation]] = {
    "graph": Graph,
    "correction": CorrectionRun,
    "bench": BenchRun,
    "simulation": Simulation,
}


def as_config(config: Any) -> tuple[dict[str, Any], str]:
    """A config dataclass or dict as (plain dict, hash)."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    return data, config_hash(data)


def model_info(m: Model) -> ModelInfo:
    return ModelInfo(
        id=m.id,
        name=m.name,
        checkpoint_path=m.checkpoint_path,
        train_config=dict(m.train_config),
        config_hash=m.config_hash,
        metrics=dict(m.metrics),
        label_names=list(m.label_names),
        created_at=m.created_at,
        lineage=dict(m.lineage or {}),
        active=bool(m.active),
    )


def get_or_create_model(
    s: Session,
    name: str,
    checkpoint_path: str,
    train_config: Any,
    label_names: Sequence[str],
    metrics: dict[str, Any] | None,
    key: str | None,
    lineage: dict[str, Any] | None = None,
) -> Model:
    """The model with this config hash (``key``, default: hash of ``train_config``), created if missing."""
    cfg, digest = as_config(train_config)
    row = {
        "name": name,
        "checkpoint_path": str(checkpoint_path),
        "train_config": cfg,
        "config_hash": key or digest,
        "metrics": dict(metrics or {}),
        "label_names": list(label_names),
        "created_at": utcnow(),
        "lineage": dict(lineage or {}),
        "active": False,
    }
    upsert(s, Model.__table__, [row], ["config_hash"])
    return s.scalars(select(Model).where(Model.config_hash == row["config_hash"])).one()


def save_predictions(
    s: Session, model_id: int, predictions: Iterable[PredictionIn], chunk: int = CHUNK
) -> int:
    """Insert or replace the model's predictions (bulk, idempotent); returns how many were given. The rows
    are built ``chunk`` at a time: at N = 400,000 one list of every row would hold hundreds of MB."""
    given = iter(predictions)
    total = 0
    while part := list(itertools.islice(given, chunk)):
        rows = [
            {
                "model_id": model_id,
                "example_id": p.example_id,
                "probs": [float(x) for x in p.probs],
                "predicted": p.predicted,
                "confidence": float(max(p.probs)),
                "correct": bool(p.correct),
            }
            for p in part
        ]
        upsert(
            s,
            Prediction.__table__,
            rows,
            ["model_id", "example_id"],
            ["probs", "predicted", "confidence", "correct"],
        )
        total += len(rows)
    return total


def prediction_info(p: Prediction) -> PredictionInfo:
    return PredictionInfo(
        model_id=p.model_id,
        example_id=p.example_id,
        probs=list(p.probs),
        predicted=p.predicted,
        confidence=p.confidence,
        correct=p.correct,
    )


def get_predictions(
    s: Session, model_id: int, example_ids: Sequence[str] | None
) -> dict[str, PredictionInfo]:
    """The model's predictions by example id (all of them when ``example_ids`` is None)."""
    q = select(Prediction).where(Prediction.model_id == model_id)
    if example_ids is None:
        return {p.example_id: prediction_info(p) for p in s.scalars(q)}
    out: dict[str, PredictionInfo] = {}
    for part in chunks(example_ids):
        out.update(
            (p.example_id, prediction_info(p)) for p in s.scalars(q.where(Prediction.example_id.in_(part)))
        )
    return out


def save_neighbors(
    s: Session, model_id: int, neighbors: Mapping[str, Sequence[tuple[str, float]]], chunk: int = CHUNK
) -> int:
    """Replace each query's neighbour list (rank = list position, 0 = nearest); returns rows written. The
    rows are built for ``chunk`` queries at a time (N x k row dicts at once would take GBs at N = 400,000)."""
    total = 0
    # a model with no lists yet (every prepare's new model) has nothing to replace: no DELETE per chunk
    stored = s.scalar(select(Neighbor.query_id).where(Neighbor.model_id == model_id).limit(1)) is not None
    for part in chunks(list(neighbors), chunk):
        if stored:
            s.execute(delete(Neighbor).where(Neighbor.model_id == model_id, Neighbor.query_id.in_(part)))
        rows = [
            {"model_id": model_id, "query_id": q, "rank": r, "train_id": t, "distance": float(d)}
            for q in part
            for r, (t, d) in enumerate(neighbors[q])
        ]
        upsert(s, Neighbor.__table__, rows, ["model_id", "query_id", "rank"], ["train_id", "distance"])
        total += len(rows)
    return total


def get_neighbors(s: Session, model_id: int, query_id: str, limit: int | None) -> list[NeighborInfo]:
    """The stored neighbours of ``query_id``, nearest first, with their text and gold label."""
    q = (
        select(
            Neighbor.rank,
            Neighbor.train_id,
            Neighbor.distance,
            Example.premise,
            Example.hypothesis,
            Example.label,
        )
        .join(Example, Example.id == Neighbor.train_id)
        .where(Neighbor.model_id == model_id, Neighbor.query_id == query_id)
        .order_by(Neighbor.rank)
        .limit(limit)
    )
    return [NeighborInfo(*row) for row in s.execute(q)]


def neighbor_lists(s: Session, model_id: int) -> dict[str, list[tuple[str, float]]]:
    """Every stored neighbour list of the model, ``{query_id: [(train_id, distance), ...]}`` nearest first
    (what :func:`save_neighbors` takes)."""
    q = (
        select(Neighbor.query_id, Neighbor.train_id, Neighbor.distance)
        .where(Neighbor.model_id == model_id)
        .order_by(Neighbor.query_id, Neighbor.rank)
    )
    out: dict[str, list[tuple[str, float]]] = {}
    for query_id, train_id, distance in s.execute(q).yield_per(CHUNK):
        out.setdefault(query_id, []).append((train_id, float(distance)))
    return out


def run_info(r: InfluenceRun, scores: list[ScoreInfo] | None = None) -> InfluenceRunInfo:
    return InfluenceRunInfo(
        id=r.id,
        model_id=r.model_id,
        example_id=r.example_id,
        config=dict(r.config),
        config_hash=r.config_hash,
        num_candidates=r.num_candidates,
        timings=dict(r.timings),
        s_test_stats=dict(r.s_test_stats),
        created_at=r.created_at,
        job_id=r.job_id,
        scores=scores or [],
    )


def find_run(s: Session, model_id: int, example_id: str, digest: str) -> InfluenceRun | None:
    q = select(InfluenceRun).where(
        InfluenceRun.model_id == model_id,
        InfluenceRun.example_id == example_id,
        InfluenceRun.config_hash == digest,
    )
    return s.scalar(q)


def save_run(
    s: Session,
    model_id: int,
    example_id: str,
    config: Any,
    scores: Mapping[str, float] | Sequence[tuple[str, float]],
    num_candidates: int | None,
    timings: Mapping[str, Any] | None,
    s_test_stats: Mapping[str, Any] | None,
    job_id: int | None,
    key: str | None = None,
) -> InfluenceRun:
    """Write a run and all its scores, or return the run already stored under the same key.

    ``key`` overrides the config hash (e.g. one that ignores display-only fields such as ``top``).
    """
    cfg, digest = as_config(config)
    digest = key or digest
    existing = find_run(s, model_id, example_id, digest)
    if existing is not None:
        return existing
    pairs = list(scores.items()) if isinstance(scores, Mapping) else [(t, v) for t, v in scores]
    if len({t for t, _ in pairs}) != len(pairs):
        raise ConfigError("influence scores name the same training example twice")
    run = InfluenceRun(
        model_id=model_id,
        example_id=example_id,
        config=cfg,
        config_hash=digest,
        num_candidates=len(pairs) if num_candidates is None else num_candidates,
        timings=dict(timings or {}),
        s_test_stats=dict(s_test_stats or {}),
        created_at=utcnow(),
        job_id=job_id,
    )
    s.add(run)
    s.flush()
    ranked = sorted(pairs, key=lambda p: (p[1], p[0]))  # most helpful (most negative) first
    rows = [
        {"run_id": run.id, "train_id": t, "value": float(v), "rank": i} for i, (t, v) in enumerate(ranked)
    ]
    upsert(s, InfluenceScore.__table__, rows, ["run_id", "train_id"])
    return run


def get_run(s: Session, run_id: int, with_text: bool) -> InfluenceRunInfo | None:
    """A run with its scores sorted by value ascending (rank order)."""
    run = s.get(InfluenceRun, run_id)
    if run is None:
        return None
    if not with_text:
        q = select(InfluenceScore.train_id, InfluenceScore.value, InfluenceScore.rank)
        q = q.where(InfluenceScore.run_id == run_id).order_by(InfluenceScore.rank)
        return run_info(run, [ScoreInfo(*row) for row in s.execute(q)])
    ex = aliased(Example)
    q = (
        select(
            InfluenceScore.train_id,
            InfluenceScore.value,
            InfluenceScore.rank,
            ex.premise,
            ex.hypothesis,
            ex.label,
        )
        .join(ex, ex.id == InfluenceScore.train_id)
        .where(InfluenceScore.run_id == run_id)
        .order_by(InfluenceScore.rank)
    )
    return run_info(run, [ScoreInfo(*row) for row in s.execute(q)])


def app_table(app: str) -> Any:
    if app not in APP_TABLES:
        raise ConfigError(f"app={app!r} is invalid: allowed {sorted(APP_TABLES)}")
    return APP_TABLES[app]


def app_info(app: str, r: Any) -> AppResultInfo:
    return AppResultInfo(
        id=r.id,
        app=app,
        kind=r.kind,
        model_id=getattr(r, "model_id", None),
        config=dict(r.config),
        config_hash=r.config_hash,
        result=dict(r.result),
        created_at=r.created_at,
        job_id=r.job_id,
    )


def find_app_result(s: Session, app: str, model_id: int | None, kind: str, digest: str) -> Any:
    table = app_table(app)
    q = select(table).where(table.kind == kind, table.config_hash == digest)
    if app != "bench":
        q = q.where(table.model_id.is_(None) if model_id is None else table.model_id == model_id)
    return s.scalar(q.order_by(table.id.desc()).limit(1))


def save_app_result(
    s: Session,
    app: str,
    model_id: int | None,
    config: Any,
    result: Mapping[str, Any],
    kind: str,
    job_id: int | None,
    key: str | None = None,
) -> Any:
    """Store an application result; graphs and correction runs are unique per (model, kind, config hash)."""
    table, (cfg, digest) = app_table(app), as_config(config)
    digest = key or digest
    if app != "bench" and (existing := find_app_result(s, app, model_id, kind, digest)) is not None:
        return existing
    if app == "bench" and model_id is not None:
        raise WorkspaceError("bench results are not tied to a model: pass model_id=None")
    row = table(
        kind=kind, config=cfg, config_hash=digest, result=dict(result), created_at=utcnow(), job_id=job_id
    )
    if app != "bench":
        row.model_id = model_id
    s.add(row)
    s.flush()
    return row
