"""Engines and migrations: URL resolution, SQLite pragmas and transaction control, Alembic upgrade.

SQLite specifics live here and nowhere else: WAL journal, foreign keys, busy timeout (connect
pragmas) and SQLAlchemy-emitted ``BEGIN`` / ``BEGIN IMMEDIATE`` (the sqlite3 driver's own
transaction handling is switched off, as the SQLAlchemy docs recommend, so that a write unit of work
can take the write lock up front and never fails half-way with "database is locked").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from fastif_core.errors import WorkspaceError

DB_FILENAME = "fastif.db"
ENV_URL = "FASTIF_DB_URL"
BUSY_TIMEOUT_MS = (
    30_000  # default wait for another process's write lock; $FASTIF_DB_BUSY_TIMEOUT_MS overrides
)
ENV_BUSY_TIMEOUT = "FASTIF_DB_BUSY_TIMEOUT_MS"
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
# Execution option read by the SQLite "begin" hook: "IMMEDIATE" takes the write lock at BEGIN.
BEGIN_OPTION = "fastif_sqlite_begin"


def resolve_url(workspace: str | Path | None = None, url: str | None = None) -> str:
    """The database URL: ``url`` if given, else ``$FASTIF_DB_URL``, else ``<workspace>/fastif.db``."""
    url = url or os.environ.get(ENV_URL) or None
    if url:
        return url
    if workspace is None:
        raise WorkspaceError(f"no database: pass a workspace directory, a URL, or set {ENV_URL}")
    return f"sqlite:///{Path(workspace).expanduser().resolve() / DB_FILENAME}"


def busy_timeout_ms() -> int:
    """How long a write waits for another process's lock (``$FASTIF_DB_BUSY_TIMEOUT_MS``, default 30 s)."""
    raw = os.environ.get(ENV_BUSY_TIMEOUT, "").strip()
    if not raw:
        return BUSY_TIMEOUT_MS
    if not raw.isdigit():
        raise WorkspaceError(f"{ENV_BUSY_TIMEOUT}={raw!r} is invalid: allowed a number of milliseconds >= 0")
    return int(raw)


def _where(url: str) -> str:
    """How the user named ``url`` in messages (the variable when it came from the environment)."""
    shown = make_url(url).render_as_string(hide_password=True) if "://" in url else url
    return f"{ENV_URL}={shown}" if os.environ.get(ENV_URL) == url else f"database URL {shown}"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url``; for SQLite with the pragmas and BEGIN control installed. A malformed URL or
    a missing driver is a WorkspaceError naming the URL."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return create_engine(url, echo=echo, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        hint = " (PostgreSQL: pip install -e .[pg])" if url.startswith("postgresql") else ""
        raise WorkspaceError(
            f"{_where(url)}: its driver module {exc.name!r} is not installed{hint}"
        ) from None
    except ArgumentError as exc:
        raise WorkspaceError(
            f"{_where(url)}: not a usable SQLAlchemy URL ({str(exc).splitlines()[0]}); "
            "e.g. sqlite:////path/fastif.db or postgresql+psycopg://user@host/db"
        ) from None
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    timeout_ms = busy_timeout_ms()
    engine = create_engine(url, echo=echo, connect_args={"timeout": timeout_ms / 1000})
    event.listen(engine, "connect", lambda conn, rec: _sqlite_on_connect(conn, rec, timeout_ms))
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def describe_db_error(exc: BaseException, url: str) -> str:
    """One line for a database error: a lock held by another process, or the driver's first line."""
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    text = first[0] if first else type(exc).__name__
    if "locked" in text.lower():
        return (
            f"database {url} is locked by another process (waited {busy_timeout_ms() / 1000:g} s for "
            "its write to finish): retry when it is done"
        )
    return f"database {url}: {text}"


def _sqlite_on_connect(dbapi_conn: Any, _record: Any, timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _sqlite_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={timeout_ms}")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes in WAL mode
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(BEGIN_OPTION, "")
    conn.exec_driver_sql(f"BEGIN {mode}".strip())


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def alembic_config(url: str) -> Any:
    """An Alembic Config built in code (no alembic.ini): our script location and ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` in one transaction (serialised between processes)."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"}).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7413101)"))  # one migrator at a time
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest migration shipped with this version of fastif."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head
