"""Alembic environment for fastif: run from code (``fastif_core.store.engine.upgrade``), no alembic.ini.

The caller passes an open connection in ``config.attributes["connection"]``; without one (e.g. the
``alembic`` command line with ``-x``-less config) the URL in ``sqlalchemy.url`` is used.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from fastif_core.store.schema import Base

target_metadata = Base.metadata


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE via copy-and-move on SQLite
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _configure(conn)


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
