"""Running the Alembic migrations (the only source of the schema) from code: `bookfeed migrate`, `bookfeed up`,
the test fixtures. Works from a source checkout and from an installed package alike."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

__all__ = ["alembic_config", "downgrade", "ensure_login", "upgrade_to_head"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = database_url
    return cfg


def upgrade_to_head(database_url: str) -> None:
    """Apply every migration not yet applied (idempotent; safe to run from several processes in turn)."""
    command.upgrade(alembic_config(database_url), "head")


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


_ENSURE_LOGIN = """
DO $$
DECLARE
    name text := current_setting('bookfeed.login_name');
    pw text := current_setting('bookfeed.login_password');
    grp text := current_setting('bookfeed.login_group');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
        EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', name, pw);
    ELSE
        EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', name, pw);
    END IF;
    EXECUTE format('GRANT %I TO %I', grp, name);
END $$
"""


def ensure_login(database_url: str, *, name: str, password: str, group: str) -> None:
    """Create (or update the password of) a login role that is a member of `group` (bookfeed_writer or
    bookfeed_reader). Values travel as bound parameters and are quoted by the server (format %I / %L)."""
    if group not in ("bookfeed_writer", "bookfeed_reader"):
        raise ValueError(f"unknown group {group!r}")
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for key, value in (("name", name), ("password", password), ("group", group)):
                conn.execute(
                    text("SELECT set_config(:key, :value, true)"), {"key": f"bookfeed.login_{key}", "value": value}
                )
            conn.execute(text(_ENSURE_LOGIN))
    finally:
        engine.dispose()
