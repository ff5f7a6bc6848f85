"""least-privilege roles: bookfeed_writer for workers, bookfeed_reader for people who query the views

Revision ID: a1c3e5f7b9d2
Revises: 8403b8fee19e
Create Date: 2026-11-27 06:10:00

Both are NOLOGIN group roles; give a login to each user of them, e.g.
``CREATE ROLE worker LOGIN PASSWORD '...' IN ROLE bookfeed_writer``. Roles are cluster-wide, so they are created only
when missing, and downgrade revokes this database's grants without dropping them. A migrating user without
CREATEROLE skips the role creation with a notice instead of failing.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a1c3e5f7b9d2"
down_revision: str | Sequence[str] | None = "8403b8fee19e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bookfeed_writer') THEN
        CREATE ROLE bookfeed_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bookfeed_reader') THEN
        CREATE ROLE bookfeed_reader NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'bookfeed roles not created: the migrating user lacks CREATEROLE';
END $$
"""

WRITER_TABLES = ("book_snapshots", "rejected_frames", "ingest_batches")
AVERAGE_TABLES = ("price_average_windows", "averages_progress")
VIEWS = ("order_books", "book_metrics", "price_averages", "rejected_messages")


def _grants(verb: str) -> list[str]:
    to = "TO" if verb == "GRANT" else "FROM"
    return [
        f"{verb} USAGE ON SCHEMA public {to} bookfeed_writer, bookfeed_reader",
        f"{verb} SELECT, INSERT ON {', '.join(WRITER_TABLES)} {to} bookfeed_writer",
        # The frame-by-frame path corrects a claimed batch's counts.
        f"{verb} UPDATE (n_books, n_rejected) ON ingest_batches {to} bookfeed_writer",
        f"{verb} SELECT, INSERT, UPDATE ON {', '.join(AVERAGE_TABLES)} {to} bookfeed_writer",
        f"{verb} EXECUTE ON FUNCTION bookfeed_ensure_partition(date) {to} bookfeed_writer",
        f"{verb} SELECT ON {', '.join(VIEWS)} {to} bookfeed_writer, bookfeed_reader",
    ]


def upgrade() -> None:
    op.execute(ROLES)
    # Workers create daily partitions without CREATE on the schema: the function runs as its owner.
    op.execute("ALTER FUNCTION bookfeed_ensure_partition(date) SECURITY DEFINER SET search_path = public")
    op.execute("REVOKE EXECUTE ON FUNCTION bookfeed_ensure_partition(date) FROM PUBLIC")
    op.execute(_when_roles_exist(_grants("GRANT")))


def downgrade() -> None:
    op.execute(_when_roles_exist(_grants("REVOKE")))
    op.execute("GRANT EXECUTE ON FUNCTION bookfeed_ensure_partition(date) TO PUBLIC")
    op.execute("ALTER FUNCTION bookfeed_ensure_partition(date) SECURITY INVOKER RESET search_path")


def _when_roles_exist(statements: list[str]) -> str:
    """A DO block running `statements` only where both roles exist (a migrating user without CREATEROLE)."""
    body = "\n".join(f"        EXECUTE {_quote(sql)};" for sql in statements)
    return f"""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bookfeed_writer')
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bookfeed_reader') THEN
{body}
    END IF;
END $$
"""


def _quote(sql: str) -> str:
    return "'" + sql.replace("'", "''") + "'"
