"""Portable bulk writes: ``INSERT ... ON CONFLICT`` on SQLite and PostgreSQL, select-then-insert elsewhere."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, and_, insert, or_, select, tuple_, update
from sqlalchemy.orm import Session

T = TypeVar("T")
CHUNK = 2000  # rows per statement: far below SQLite's 32766 bound parameters for our widest rows


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _dialect_insert(session: Session, table: Table) -> Any | None:
    name = session.get_bind().dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        return None
    return dialect_insert(table)


def upsert(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    update_cols: Sequence[str] = (),
) -> None:
    """Insert ``rows``; on a conflict of the unique ``keys`` update ``update_cols`` (or do nothing)."""
    if not rows:
        return
    stmt = _dialect_insert(session, table)
    if stmt is None:
        _generic_upsert(session, table, rows, keys, update_cols)
        return
    if update_cols:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in update_cols}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    for part in chunks(rows):
        session.execute(stmt, list(part))


def _generic_upsert(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    update_cols: Sequence[str],
) -> None:
    """Fallback for databases without ON CONFLICT: find existing keys, update those, insert the rest."""
    cols = [table.c[k] for k in keys]
    for part in chunks(rows):
        wanted = {tuple(r[k] for k in keys) for r in part}
        cond = tuple_(*cols).in_(list(wanted)) if len(cols) > 1 else cols[0].in_([w[0] for w in wanted])
        existing = {tuple(r) for r in session.execute(select(*cols).where(cond))}
        new = [r for r in part if tuple(r[k] for k in keys) not in existing]
        if new:
            session.execute(insert(table), new)
        for r in part if update_cols else ():
            if tuple(r[k] for k in keys) in existing:
                where = and_(*(table.c[k] == r[k] for k in keys))
                session.execute(update(table).where(where).values({c: r[c] for c in update_cols}))


def any_of(column: Any, value: Any) -> Any:
    """``column = value`` or ``column IN (values)`` for a list/tuple/set."""
    if isinstance(value, list | tuple | set | frozenset):
        values = list(value)
        has_none = None in values
        cond = column.in_([v for v in values if v is not None])
        return or_(cond, column.is_(None)) if has_none else cond
    return column.is_(None) if value is None else column == value
