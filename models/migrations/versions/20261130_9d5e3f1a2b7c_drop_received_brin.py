"""drop book_snapshots' BRIN index on received_at: the identity index, which leads with received_at, serves time ranges

Revision ID: 9d5e3f1a2b7c
Revises: 7c41d2e9a0b3
Create Date: 2026-11-30 13:55:00

The BRIN index dates from when the identity index led with (exchange, symbol); since 5e2c7a9d4b61 it leads with
received_at, so a time range reads only its own rows through it. The BRIN index had become a hazard: PostgreSQL
summarises a BRIN page range only when (auto)vacuum runs, and an unsummarised range matches every query. Today's
partition grows by up to a fifth between autovacuum's insert-triggered runs, so a plan through the BRIN index (what
the planner picks once its statistics are fresh) read that whole unsummarised tail for each averages window: measured
on 1.8 million books, 450,000 wanted, all 1.8 million read (149,872 lossy heap blocks), 1.5 s against 0.44 s through
the identity index. Downgrade creates it again.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "9d5e3f1a2b7c"
down_revision: str | Sequence[str] | None = "7c41d2e9a0b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP INDEX book_snapshots_received_brin")


def downgrade() -> None:
    op.execute("CREATE INDEX book_snapshots_received_brin ON book_snapshots USING brin (received_at)")
