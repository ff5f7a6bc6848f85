"""Running the Alembic migrations (the only source of the schema) from code: `bookfeed migrate`, `bookfeed up`,
the test fixtures. Works from a source checkout and from an installed package alike."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

__all__ = ["alembic_config", "downgrade", "upgrade_to_head"]

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
