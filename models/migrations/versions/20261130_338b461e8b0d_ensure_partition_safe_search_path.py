"""ensure_partition hardened: pinned search_path with pg_temp last, every name qualified, dates near today only

Revision ID: 338b461e8b0d
Revises: 19994596cc2e
Create Date: 2026-11-30 04:00:00

bookfeed_ensure_partition runs as its owner (SECURITY DEFINER) for bookfeed_writer. With `search_path = public`,
pg_temp was implicitly searched first for relations: a caller's temp table named like tomorrow's partition made the
function skip creating the real one. Now the path is `pg_catalog, public, pg_temp` and every name is qualified.

Dates are refused outside [today - 3650 days, today + 2 days] (UTC, server clock). The feed stamps received_at
with its own clock when a frame arrives (replays are re-stamped too), so real days are today or a little earlier
(a batch may wait in Redis during an outage, for days at most); the 2 days ahead cover the next day's partition
near midnight plus clock skew between feed and server. Ten years back still accepts any queued or re-driven batch
while bounding how many partitions one forged batch can create.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "338b461e8b0d"
down_revision: str | Sequence[str] | None = "19994596cc2e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DAYS_AHEAD = 2
DAYS_BACK = 3650

# Operators are qualified too (OPERATOR(pg_catalog.+)): an operator in public taking other argument types could
# otherwise win the resolution. CREATE OR REPLACE keeps the owner and the EXECUTE grants of the roles revision.
ENSURE_PARTITION = f"""
CREATE OR REPLACE FUNCTION public.bookfeed_ensure_partition(day pg_catalog.date) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    today pg_catalog.date := CAST(pg_catalog.timezone('UTC', pg_catalog.now()) AS pg_catalog.date);
    first_day pg_catalog.date := today OPERATOR(pg_catalog.-) {DAYS_BACK};
    last_day pg_catalog.date := today OPERATOR(pg_catalog.+) {DAYS_AHEAD};
    part pg_catalog.text;
BEGIN
    IF day IS NULL OR (day OPERATOR(pg_catalog.<) first_day) OR (day OPERATOR(pg_catalog.>) last_day) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'datetime_field_overflow',
            MESSAGE = pg_catalog.format(
                'bookfeed_ensure_partition: day %s is outside [%s, %s] (today - %s to today + %s days, UTC)',
                day, first_day, last_day, {DAYS_BACK}, {DAYS_AHEAD});
    END IF;
    part := pg_catalog.format('book_snapshots_p%s', pg_catalog.to_char(day, 'YYYYMMDD'));
    IF pg_catalog.to_regclass(pg_catalog.format('public.%I', part)) IS NOT NULL THEN
        RETURN;
    END IF;
    -- Serialise creators: two workers meeting a new day at once must not both run CREATE.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bookfeed_ensure_partition'));
    -- The catalog cache may not show a table created by the lock's previous holder, so also accept losing the race.
    BEGIN
        EXECUTE pg_catalog.format(
            'CREATE TABLE IF NOT EXISTS public.%I PARTITION OF public.book_snapshots FOR VALUES FROM (%L) TO (%L)',
            part,
            pg_catalog.timezone('UTC', CAST(day AS pg_catalog.timestamp)),
            pg_catalog.timezone('UTC', CAST(day OPERATOR(pg_catalog.+) 1 AS pg_catalog.timestamp)));
    EXCEPTION WHEN duplicate_table OR unique_violation THEN
        NULL;
    END;
END $$
"""

# The definition before this revision: the initial schema's body, made SECURITY DEFINER by the roles revision.
PREVIOUS = """
CREATE OR REPLACE FUNCTION bookfeed_ensure_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'book_snapshots_p' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN;
    END IF;
    -- Serialise creators: two workers meeting a new day at once must not both run CREATE.
    PERFORM pg_advisory_xact_lock(hashtext('bookfeed_ensure_partition'));
    -- The catalog cache may not show a table created by the lock's previous holder, so also accept losing the race.
    BEGIN
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF book_snapshots FOR VALUES FROM (%L) TO (%L)',
            part, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    EXCEPTION WHEN duplicate_table OR unique_violation THEN
        NULL;
    END;
END $$
"""


def upgrade() -> None:
    op.execute(ENSURE_PARTITION)


def downgrade() -> None:
    op.execute(PREVIOUS)
    op.execute("ALTER FUNCTION bookfeed_ensure_partition(date) SECURITY DEFINER SET search_path = public")
