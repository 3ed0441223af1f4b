"""Influence matrices in the store: one ``influence_matrices`` row per matrix, its values in
``influence_matrix_chunks`` as float32 blocks (never one row per value).

Layout: the (M, N) matrix is cut into blocks of ``row_block`` rows (the tests whose s_test are solved
together) × ``col_block`` columns (a candidate chunk); each block is one row holding
``num_rows × num_cols`` little-endian float32 values, row-major. A 400 × 8,000 matrix in blocks of
64 × 1,024 is 56 rows of at most 256 KiB, the same bytes in SQLite (BLOB) and PostgreSQL (BYTEA).
Reading assembles the blocks with ``numpy.frombuffer`` (no per-value Python work).

A matrix is keyed by (model id, hash of the ordered test ids, config hash): computing the same request
twice finds the stored one; a request whose earlier run was interrupted finds the chunks stored so far
(``stored_chunks``) and adds only the missing ones. ``complete_matrix`` marks it complete (and, with a
job, the job done in the same transaction).

Functions take a :class:`~fastif_core.store.Store` (one short session or transaction per call).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, select

from fastif_core.config import config_hash
from fastif_core.errors import WorkspaceError
from fastif_core.store import jobs_queue as jq
from fastif_core.store._sql import upsert
from fastif_core.store.schema import InfluenceMatrix, InfluenceMatrixChunk, utcnow

DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class MatrixInfo:
    """A stored influence matrix without its values (see :func:`read_values`)."""

    id: int
    model_id: int
    test_ids: list[str]
    train_positions: list[int]  # column j = position train_positions[j] of the model's training set
    config: dict[str, Any]
    config_hash: str
    full: bool
    row_block: int
    col_block: int
    status: str  # running | complete
    timings: dict[str, Any]
    created_at: datetime
    completed_at: datetime | None
    job_id: int | None

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.test_ids), len(self.train_positions)

    def blocks(self) -> list[tuple[int, int]]:
        """Every chunk's ``(row_start, col_start)``, row block by row block."""
        m, n = self.shape
        return [(r, c) for r in range(0, m, self.row_block) for c in range(0, n, self.col_block)]


def test_hash(test_ids: Sequence[str]) -> str:
    """Hash of the ordered test ids (the row order is part of a matrix's identity)."""
    return hashlib.sha256(json.dumps(list(test_ids)).encode()).hexdigest()[:32]


test_hash.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one


def _info(row: InfluenceMatrix) -> MatrixInfo:
    return MatrixInfo(
        id=row.id,
        model_id=row.model_id,
        test_ids=list(row.test_ids),
        train_positions=list(row.train_positions),
        config=dict(row.config),
        config_hash=row.config_hash,
        full=bool(row.full),
        row_block=row.row_block,
        col_block=row.col_block,
        status=row.status,
        timings=dict(row.timings or {}),
        created_at=row.created_at,
        completed_at=row.completed_at,
        job_id=row.job_id,
    )


def _key(model_id: int, test_ids: Sequence[str], config: dict[str, Any]) -> Any:
    return (
        InfluenceMatrix.model_id == model_id,
        InfluenceMatrix.test_hash == test_hash(test_ids),
        InfluenceMatrix.config_hash == config_hash(config),
    )


def find_matrix(
    store: Any, model_id: int, test_ids: Sequence[str], config: dict[str, Any]
) -> MatrixInfo | None:
    """The matrix stored for (model, ordered test ids, config), complete or not; None if never started."""
    with store.session() as s:
        row = s.scalar(select(InfluenceMatrix).where(*_key(model_id, test_ids, config)))
        return _info(row) if row is not None else None


def get_matrix(store: Any, matrix_id: int) -> MatrixInfo | None:
    with store.session() as s:
        row = s.get(InfluenceMatrix, matrix_id)
        return _info(row) if row is not None else None


def list_matrices(store: Any, model_id: int | None = None, limit: int = 50) -> list[MatrixInfo]:
    """Matrices newest first (all models when ``model_id`` is None)."""
    q = select(InfluenceMatrix).order_by(InfluenceMatrix.id.desc()).limit(limit)
    q = q.where(InfluenceMatrix.model_id == model_id) if model_id is not None else q
    with store.session() as s:
        return [_info(r) for r in s.scalars(q)]


def start_matrix(
    store: Any,
    *,
    model_id: int,
    test_ids: Sequence[str],
    train_positions: Sequence[int],
    config: dict[str, Any],
    full: bool,
    row_block: int,
    col_block: int,
    job_id: int | None = None,
) -> MatrixInfo:
    """The matrix of this key, created (status ``running``) if new. An unfinished one whose columns or
    layout differ from the request (e.g. a rebuilt index) loses its chunks and takes the new ones; a
    complete one is returned as stored."""
    row = {
        "model_id": model_id,
        "test_ids": list(test_ids),
        "test_hash": test_hash(test_ids),
        "train_positions": [int(p) for p in train_positions],
        "config": dict(config),
        "config_hash": config_hash(config),
        "full": bool(full),
        "row_block": int(row_block),
        "col_block": int(col_block),
        "status": "running",
        "timings": {},
        "created_at": utcnow(),
        "job_id": job_id,
    }
    with store.transaction() as s:
        upsert(s, InfluenceMatrix.__table__, [row], ["model_id", "test_hash", "config_hash"])
        found = s.scalar(select(InfluenceMatrix).where(*_key(model_id, test_ids, config)))
        layout = (list(found.train_positions), found.row_block, found.col_block)
        if found.status != "complete" and layout != (row["train_positions"], row_block, col_block):
            s.execute(delete(InfluenceMatrixChunk).where(InfluenceMatrixChunk.matrix_id == found.id))
            found.train_positions, found.row_block, found.col_block = (
                row["train_positions"],
                row_block,
                col_block,
            )
        return _info(found)


def stored_chunks(store: Any, matrix_id: int) -> set[tuple[int, int]]:
    """``(row_start, col_start)`` of every chunk stored so far."""
    q = select(InfluenceMatrixChunk.row_start, InfluenceMatrixChunk.col_start).where(
        InfluenceMatrixChunk.matrix_id == matrix_id
    )
    with store.session() as s:
        return {(int(r), int(c)) for r, c in s.execute(q)}


def save_chunk(
    store: Any, matrix_id: int, row_start: int, col_start: int, values: np.ndarray, seconds: float = 0.0
) -> None:
    """Store one block ``values (rows, cols)`` (float32); a block stored before is kept (idempotent)."""
    block = np.ascontiguousarray(values, dtype=DTYPE)
    if block.ndim != 2:
        raise WorkspaceError(f"a matrix chunk must be 2-D, got shape {block.shape}")
    row = {
        "matrix_id": matrix_id,
        "row_start": int(row_start),
        "col_start": int(col_start),
        "num_rows": block.shape[0],
        "num_cols": block.shape[1],
        "data": block.tobytes(),
        "seconds": float(seconds),
    }
    with store.transaction() as s:
        upsert(s, InfluenceMatrixChunk.__table__, [row], ["matrix_id", "row_start", "col_start"])


def complete_matrix(
    store: Any,
    matrix_id: int,
    timings: dict[str, Any],
    *,
    job_id: int | None = None,
    owner: str | None = None,
) -> MatrixInfo:
    """Mark the matrix complete with its timings; with ``job_id``/``owner`` the job is done in the same
    transaction (``result={"matrix_id": id}``; LeaseLostError, nothing written, if the lease was lost)."""
    with store.transaction() as s:
        if job_id is not None:
            jq.owned(s, job_id, owner or "")
        row = s.get(InfluenceMatrix, matrix_id)
        if row is None:
            raise WorkspaceError(f"influence matrix {matrix_id} does not exist")
        row.status, row.timings, row.completed_at = "complete", dict(timings), utcnow()
        if job_id is not None:
            jq.complete(s, job_id, owner or "", {"matrix_id": matrix_id})
        return _info(row)


def read_values(store: Any, matrix_id: int) -> np.ndarray:
    """The ``(M, N)`` float32 values; NaN where no chunk is stored yet (and at non-candidate pairs)."""
    info = get_matrix(store, matrix_id)
    if info is None:
        raise WorkspaceError(f"influence matrix {matrix_id} does not exist")
    out = np.full(info.shape, np.nan, dtype=np.float32)
    q = select(
        InfluenceMatrixChunk.row_start,
        InfluenceMatrixChunk.col_start,
        InfluenceMatrixChunk.num_rows,
        InfluenceMatrixChunk.num_cols,
        InfluenceMatrixChunk.data,
    ).where(InfluenceMatrixChunk.matrix_id == matrix_id)
    with store.session() as s:
        for r, c, rows, cols, data in s.execute(q):
            out[r : r + rows, c : c + cols] = np.frombuffer(data, dtype=DTYPE).reshape(rows, cols)
    return out
