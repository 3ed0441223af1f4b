"""Database backends for the store and job-queue tests: SQLite files always; PostgreSQL when
``FASTIF_TEST_PG_URL`` names a scratch database (it is wiped before each test), e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/fastif_test`` (needs ``pip install "psycopg[binary]"``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("FASTIF_TEST_PG_URL")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(not PG_URL, reason="set FASTIF_TEST_PG_URL to run on PostgreSQL"),
    ),
]


def reset_postgres(url: str) -> None:
    """Drop every table of the scratch database (the schema ``public`` is recreated empty)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def fresh_url(backend: str, tmp_path: Path) -> str:
    """A fresh, empty database URL on ``backend`` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ws' / 'fastif.db'}"
    assert PG_URL is not None
    reset_postgres(PG_URL)
    return PG_URL
