"""Datasets, examples, the training-set mapping and example filters, as functions on a session."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Select, case, func, literal_column, or_, select, update
from sqlalchemy.orm import Session

from fastif_core.errors import ConfigError, WorkspaceError
from fastif_core.store._sql import any_of, chunks, upsert
from fastif_core.store.records import (
    DatasetInfo,
    ExampleFilter,
    ExampleLike,
    ExampleRow,
    ExampleSummary,
    GroupSummary,
)
from fastif_core.store.schema import (
    SLICE_COLUMNS,
    Dataset,
    Example,
    Model,
    Prediction,
    TrainingExample,
    utcnow,
)

EXAMPLE_CONTENT = ("dataset_id", "split", "premise", "hypothesis", "label", *SLICE_COLUMNS, "slices", "extra")
GROUP_COLUMNS = {
    "dataset": Dataset.name,
    "split": Example.split,
    "label": Example.label,
    "genre": Example.genre,
    "heuristic": Example.heuristic,
    "subcase": Example.subcase,
    "template": Example.template,
    "predicted": Prediction.predicted,
    "correct": Prediction.correct,
}
ORDER_COLUMNS = {
    **GROUP_COLUMNS,
    "id": Example.id,
    "train_pos": Example.train_pos,
    "confidence": Prediction.confidence,
}


def dataset_info(d: Dataset) -> DatasetInfo:
    return DatasetInfo(
        id=d.id,
        name=d.name,
        label_scheme=d.label_scheme,
        labels=list(d.labels),
        source=d.source,
        counts=dict(d.counts),
        num_examples=d.num_examples,
        created_at=d.created_at,
    )


def upsert_dataset(
    s: Session,
    name: str,
    *,
    label_scheme: str | None = None,
    labels: Sequence[str] | None = None,
    source: str | None = None,
) -> Dataset:
    """Create the dataset ``name`` or update the given fields of the existing one."""
    upsert(
        s,
        Dataset.__table__,
        [
            {
                "name": name,
                "label_scheme": "",
                "labels": [],
                "source": "",
                "counts": {},
                "num_examples": 0,
                "created_at": utcnow(),
            }
        ],
        ["name"],
    )
    ds = s.scalars(select(Dataset).where(Dataset.name == name)).one()
    for field, value in (("label_scheme", label_scheme), ("labels", labels), ("source", source)):
        if value is not None:
            setattr(ds, field, list(value) if field == "labels" else value)
    return ds


def _example_row(ex: ExampleLike, dataset_id: int) -> dict[str, Any]:
    slices = dict(ex.slices or {})
    row = {
        "id": ex.id,
        "dataset_id": dataset_id,
        "split": ex.split,
        "premise": ex.premise,
        "hypothesis": ex.hypothesis,
        "label": ex.label,
        "slices": slices,
        "extra": dict(ex.extra or {}),
    }
    row.update({c: slices.get(c) for c in SLICE_COLUMNS})
    return row


def add_examples(s: Session, examples: Iterable[ExampleLike]) -> int:
    """Insert or update examples by id (idempotent); creates missing datasets; refreshes their counts. The
    row dicts are built one chunk at a time (at N = 400,000 all of them at once would hold ~400 MB)."""
    items = list(examples)
    ids = {name: upsert_dataset(s, name).id for name in sorted({ex.dataset for ex in items})}
    for part in chunks(items):
        upsert(
            s, Example.__table__, [_example_row(ex, ids[ex.dataset]) for ex in part], ["id"], EXAMPLE_CONTENT
        )
    refresh_counts(s, list(ids.values()))
    return len(items)


def refresh_counts(s: Session, dataset_ids: Sequence[int]) -> None:
    """Recompute the per-split counts of the given datasets."""
    q = select(Example.dataset_id, Example.split, func.count()).where(
        Example.dataset_id.in_(list(dataset_ids))
    )
    counts: dict[int, dict[str, int]] = {i: {} for i in dataset_ids}
    for dataset_id, split, n in s.execute(q.group_by(Example.dataset_id, Example.split)):
        counts[dataset_id][split] = n
    for ds in s.scalars(select(Dataset).where(Dataset.id.in_(list(dataset_ids)))):
        ds.counts, ds.num_examples = counts[ds.id], sum(counts[ds.id].values())


def set_training_set(s: Session, ids: Sequence[str]) -> None:
    """Make ``ids`` the training set: ``ids[i]`` gets ``train_pos = i``; every other example gets NULL."""
    if len(set(ids)) != len(ids):
        raise WorkspaceError("training set ids are not unique")
    found = sum(s.scalar(select(func.count()).where(Example.id.in_(list(part)))) or 0 for part in chunks(ids))
    if found != len(ids):
        raise WorkspaceError(
            f"{len(ids) - found} training id(s) are not in the store; add the examples first"
        )
    s.execute(update(Example).where(Example.train_pos.is_not(None)).values(train_pos=None))
    rows = [{"id": example_id, "train_pos": pos} for pos, example_id in enumerate(ids)]
    for part in chunks(rows):
        s.execute(update(Example), list(part))


def train_ids(s: Session, model_id: int | None = None) -> list[str]:
    """A model's training ids in position order (FAISS row i = ``train_ids()[i]``); ``model_id`` None:
    the active training set (``train_pos``, also what workspaces prepared before rev 0003 have)."""
    if model_id is not None:
        q = select(TrainingExample.example_id).where(TrainingExample.model_id == model_id)
        return list(s.scalars(q.order_by(TrainingExample.pos)))
    q = select(Example.id).where(Example.train_pos.is_not(None)).order_by(Example.train_pos)
    return list(s.scalars(q))


def set_training_order(s: Session, model_id: int, ids: Sequence[str]) -> None:
    """Record ``ids`` as the training set of ``model_id``, once: an equal order again is a no-op, a
    different one is refused (a model is trained on exactly one ordered training set)."""
    known = train_ids(s, model_id)
    if known:
        if known != list(ids):
            raise WorkspaceError(f"model {model_id} already has a different training set ({len(known)} ids)")
        return
    rows = [{"model_id": model_id, "pos": pos, "example_id": i} for pos, i in enumerate(ids)]
    upsert(s, TrainingExample.__table__, rows, ["model_id", "pos"])


def set_workspace_members(s: Session, ids: Sequence[str]) -> None:
    """Exactly the examples ``ids`` belong to the workspace's current sources (what browse shows). Only
    the rows whose membership changes are written (a fresh import of 400,000 examples, all members
    already, writes none; clearing and setting every row rewrote the table twice on PostgreSQL)."""
    want = set(ids)
    have = set(s.scalars(select(Example.id).where(Example.in_workspace.is_(True))))
    for value, changed in ((False, have - want), (True, want - have)):
        for part in chunks(sorted(changed)):
            s.execute(update(Example).where(Example.id.in_(list(part))).values(in_workspace=value))


def set_active_model(s: Session, model_id: int) -> None:
    """``model_id`` becomes the one model the workspace serves."""
    s.execute(update(Model).where(Model.active.is_(True), Model.id != model_id).values(active=False))
    s.execute(update(Model).where(Model.id == model_id).values(active=True))


def latest_model_id(s: Session) -> int | None:
    """The active model (the newest one in databases without an active model)."""
    active = s.scalar(select(Model.id).where(Model.active.is_(True)).limit(1))
    return active if active is not None else s.scalar(select(Model.id).order_by(Model.id.desc()).limit(1))


def _filtered(s: Session, f: ExampleFilter, *cols: Any) -> Select[Any]:
    """SELECT ``cols`` FROM examples [JOIN datasets] [JOIN predictions (of the filter's model)] WHERE ...

    Each table is joined only when ``cols`` or ``f`` use it, and predictions by an inner join when ``f``
    filters on them (an outer join cannot be reordered: the planner would look up every example's
    prediction instead of reading the few incorrect ones from their index; 1.7 s against 0.02 s at
    N = 400,000), by a left join when only ``cols`` need them."""
    model_id = f.model_id if f.model_id is not None else latest_model_id(s)
    on = (Prediction.example_id == Example.id) & (
        Prediction.model_id == (model_id if model_id is not None else -1)
    )
    q = select(*cols).select_from(Example)
    used = set(q.columns_clause_froms)
    if f.dataset is not None or Dataset.__table__ in used:
        q = q.join(Dataset, Dataset.id == Example.dataset_id)
    if f.predicted is not None or f.correct is not None:
        q = q.join(Prediction, on)
    elif Prediction.__table__ in used:
        q = q.outerjoin(Prediction, on)
    for name in ("split", "label", "genre", "heuristic", "subcase", "template", "predicted"):
        value = getattr(f, name)
        if value is not None:
            q = q.where(any_of(GROUP_COLUMNS[name], value))
    if f.dataset is not None:
        q = q.where(any_of(Dataset.name, f.dataset))
    if f.correct is not None:
        q = q.where(Prediction.correct.is_(bool(f.correct)))
    if f.in_workspace is not None:
        q = q.where(Example.in_workspace.is_(bool(f.in_workspace)))
    if f.in_training_set is not None:
        q = q.where(Example.train_pos.is_not(None) if f.in_training_set else Example.train_pos.is_(None))
    return q.where(_text_search(f.search)) if f.search else q


def _text_search(text: str) -> Any:
    """Case-insensitive substring of premise, hypothesis or id (LIKE wildcards in ``text`` are literal)."""
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return or_(*(c.ilike(pattern, escape="\\") for c in (Example.premise, Example.hypothesis, Example.id)))


ROW_COLUMNS = (
    Example,
    Dataset.name,
    Prediction.predicted,
    Prediction.correct,
    Prediction.confidence,
    Prediction.probs,
)


def _row(ex: Example, dataset: str, predicted: Any, correct: Any, confidence: Any, probs: Any) -> ExampleRow:
    return ExampleRow(
        id=ex.id,
        dataset=dataset,
        split=ex.split,
        premise=ex.premise,
        hypothesis=ex.hypothesis,
        label=ex.label,
        slices=dict(ex.slices),
        extra=dict(ex.extra),
        train_pos=ex.train_pos,
        predicted=predicted,
        correct=correct,
        confidence=confidence,
        probs=list(probs) if probs is not None else None,
        in_workspace=bool(ex.in_workspace),
    )


def query(
    s: Session, f: ExampleFilter, order_by: str, descending: bool, limit: int | None, offset: int
) -> list[ExampleRow]:
    """Examples matching ``f``, sorted by ``order_by`` (then id), one page of ``limit`` from ``offset``."""
    if order_by not in ORDER_COLUMNS:
        raise ConfigError(f"order_by={order_by!r} is invalid: allowed {sorted(ORDER_COLUMNS)}")
    col = ORDER_COLUMNS[order_by]
    if limit is None and offset == 0:  # every match: one query
        q = _filtered(s, f, *ROW_COLUMNS).order_by(col.desc() if descending else col, Example.id)
        return [_row(*r) for r in s.execute(q)]
    # a page: its ids first, with only the joins the filter and the order need (the rows skipped by the
    # offset are never joined: the last 2,000 of 400,000 in 0.1 s instead of 1 s), then those rows in full
    key, tie = col, Example.id
    if (f.predicted is not None or f.correct is not None) and s.get_bind().dialect.name == "sqlite":
        # ORDER BY +col (SQLite's idiom): no index may supply the order, so the planner starts from the
        # predictions' index of the few matching rows and sorts them, instead of walking every example in
        # id order (the incorrect-only page of 400,000: 0.01 s instead of 0.7-1.6 s)
        key = literal_column(f"+{col.expression.table.name}.{col.expression.name}")
        tie = literal_column("+examples.id")
    page = _filtered(s, f, Example.id, col).order_by(key.desc() if descending else key, tie)
    page = page.offset(offset) if limit is None else page.offset(offset).limit(limit)
    ids = list(s.scalars(page))
    return get_examples(s, ids, f.model_id)


def get_examples(s: Session, ids: Sequence[str], model_id: int | None) -> list[ExampleRow]:
    """The examples with these ids, in the given order (unknown ids are left out)."""
    found: dict[str, ExampleRow] = {}
    for part in chunks(ids):
        q = _filtered(s, ExampleFilter(model_id=model_id, in_workspace=None), *ROW_COLUMNS)
        found.update(
            (r.id, r) for r in (_row(*row) for row in s.execute(q.where(Example.id.in_(list(part)))))
        )
    return [found[i] for i in ids if i in found]


def _sums() -> tuple[Any, Any, Any]:
    hit = func.sum(case((Prediction.correct.is_(True), 1), else_=0))
    return func.count(Example.id), func.count(Prediction.example_id), hit


def summary(s: Session, f: ExampleFilter) -> ExampleSummary:
    """How many examples match ``f``, how many have a prediction, how many of those are correct."""
    q = _filtered(s, f, *_sums())
    count, predicted, correct = s.execute(q).one()
    return ExampleSummary(count=count, predicted=predicted, correct=int(correct or 0))


def summary_by(s: Session, column: str, f: ExampleFilter) -> list[GroupSummary]:
    """:func:`summary` per value of ``column`` (e.g. accuracy per HANS heuristic), sorted by value."""
    if column not in GROUP_COLUMNS:
        raise ConfigError(f"column={column!r} is invalid: allowed {sorted(GROUP_COLUMNS)}")
    col = GROUP_COLUMNS[column]
    q = _filtered(s, f, col, *_sums())
    rows = s.execute(q.group_by(col).order_by(col)).all()
    return [GroupSummary(value=v, count=c, predicted=p, correct=int(k or 0)) for v, c, p, k in rows]


def distinct_values(s: Session, column: str, f: ExampleFilter) -> list[Any]:
    """The non-null values of ``column`` among examples matching ``f``, sorted (for filter widgets)."""
    if column not in GROUP_COLUMNS:
        raise ConfigError(f"column={column!r} is invalid: allowed {sorted(GROUP_COLUMNS)}")
    col = GROUP_COLUMNS[column]
    q = _filtered(s, f, col)
    return list(s.scalars(q.where(col.is_not(None)).distinct().order_by(col)))
