"""Running the Alembic migrations (the only source of the schema) from code: `bookfeed migrate`, `bookfeed up`,
the test fixtures. Works from a source checkout and from an installed package alike."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from psycopg2.extensions import connection as PgConnection
from psycopg2.extensions import encrypt_password
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

__all__ = ["alembic_config", "downgrade", "ensure_login", "upgrade_to_head"]

# The migrations are models' (they declare the schema); this module only runs them.
MIGRATIONS = Path(__file__).resolve().parent.parent / "models" / "migrations"


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
    verifier text := current_setting('bookfeed.login_verifier');
    grp text := current_setting('bookfeed.login_group');
BEGIN
    IF verifier NOT LIKE 'SCRAM-SHA-256$%' THEN
        RAISE EXCEPTION 'ensure_login: a SCRAM-SHA-256 verifier is expected, never a password';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
        EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', name, verifier);
    ELSE
        EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', name, verifier);
    END IF;
    EXECUTE format('GRANT %I TO %I', grp, name);
END $$
"""


def ensure_login(database_url: str, *, name: str, password: str, group: str) -> None:
    """Create (or update the password of) a login role that is a member of `group` (bookfeed_writer or
    bookfeed_reader). The password never leaves this process: libpq computes its SCRAM-SHA-256 verifier here
    (RFC 5802/7677, random salt, 4096 iterations, as psql's \\password does) and only the verifier is sent, which
    PostgreSQL stores as is; plain text would show in the server's statement log and in pg_stat_activity.
    Values travel as bound parameters and are quoted by the server (format %I / %L)."""
    if group not in ("bookfeed_writer", "bookfeed_reader"):
        raise ValueError(f"unknown group {group!r}")
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, PgConnection)  # the driver of every bookfeed URL
            verifier = encrypt_password(password, name, raw, "scram-sha-256")
            for key, value in (("name", name), ("verifier", verifier), ("group", group)):
                conn.execute(
                    text("SELECT set_config(:key, :value, true)"), {"key": f"bookfeed.login_{key}", "value": value}
                )
            conn.execute(text(_ENSURE_LOGIN))
    finally:
        engine.dispose()
