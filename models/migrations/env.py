"""Alembic environment: URL from the settings, metadata from models.tables, type comparison on."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool

from models.settings import get_settings
from models.tables import PARTITION_PREFIX, metadata

config = context.config


def _url() -> str:
    # The URL workers.schema.alembic_config puts in the config (`bookfeed migrate`, `bookfeed up`, the tests) wins;
    # DATABASE_URL only serves a config built without one.
    return config.attributes.get("url") or get_settings().require_database_url()


def _include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    # Daily partitions are created at run time by bookfeed_ensure_partition(); they are not schema drift.
    return not (type_ == "table" and name is not None and name.startswith(PARTITION_PREFIX))


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        include_object=_include_object,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
