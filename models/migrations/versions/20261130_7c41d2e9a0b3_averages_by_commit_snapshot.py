"""averages find late rows by commit snapshot: the transaction id of each batch and gap, the snapshot of each run

Revision ID: 7c41d2e9a0b3
Revises: 5e2c7a9d4b61
Create Date: 2026-11-30 13:20:00

An averages run recomputed every window of the last `BOOKFEED_AVERAGES_LOOKBACK_S` (600 s) and every window that got
rows from a batch stored in the 120 s before the previous run (a transaction that began before a run can commit
after it). At the whole market (15,000 books/s) that is 9 million rows scanned every 30 s, and more with each minute
of backlog: the averages' cost grew with the lookback, not with what changed.

Now each batch (ingest_batches) and each gap (feed_gap_intervals) records the id of the transaction that wrote it
(xid8, `pg_current_xact_id()` by default), and each run records the snapshot it computed from
(averages_progress.snapshot, `pg_current_snapshot()`). The next run recomputes exactly the windows that got rows or
gaps from transactions that snapshot did not see, plus the windows closed since. Rows written before this revision
have no transaction id (NULL): the first run after it uses the old margin once, then records a snapshot.
The columns are added without a default and then given one, so existing rows are not rewritten.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "7c41d2e9a0b3"
down_revision: str | Sequence[str] | None = "5e2c7a9d4b61"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_XID_COLUMNS = (("ingest_batches", "stored_xid"), ("feed_gap_intervals", "recorded_xid"))


def upgrade() -> None:
    for table, column in _XID_COLUMNS:
        op.execute(f"ALTER TABLE {table} ADD COLUMN {column} xid8")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT pg_current_xact_id()")
        op.execute(f"CREATE INDEX {table}_{column} ON {table} ({column})")
    op.execute("ALTER TABLE averages_progress ADD COLUMN snapshot pg_snapshot")


def downgrade() -> None:
    op.execute("ALTER TABLE averages_progress DROP COLUMN snapshot")
    for table, column in _XID_COLUMNS:
        op.execute(f"DROP INDEX {table}_{column}")
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
