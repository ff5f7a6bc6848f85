"""compact book levels: scaled-integer text per column (models.encoding), metrics narrowed, every partition converted

Revision ID: 5e2c7a9d4b61
Revises: 338b461e8b0d
Create Date: 2026-11-30 06:40:00

book_snapshots stored each level as numeric[] (about 1,300 bytes a depth20 snapshot with its indexes). Now the levels
are text in the encoding of models.encoding (one scale per book, per column the shared power of ten, prices as
distances from the best), best bid, best ask and spread are computed by book_metrics from the levels instead of
stored, and the identity index leads with received_at, so that it fills its pages. The public views return what
they returned: order_books decodes each value with its scale (bookfeed_levels), book_metrics reads the best prices
(bookfeed_best_price).

Every existing partition is rewritten under its name and bounds, in time order, its rows encoded by models.encoding
as the workers encode theirs. Downgrade rewrites them back to numeric[] with the views' decoder.
"""

import io
from collections.abc import Callable, Sequence
from typing import Any

from alembic import op
from sqlalchemy import text

from models.encoding import encode_levels

revision: str = "5e2c7a9d4b61"
down_revision: str | Sequence[str] | None = "338b461e8b0d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The values of one encoded column (models.encoding.decode_column is the reference): direction -1 for bid prices,
# +1 for ask prices, 0 for quantities. value_i = v_i * 10^(k - scale) with `scale` decimals, which is how numeric
# reads the text "<v_i><k zeros>e-<scale>" (an exponent form has as many decimals as its exponent shifts), so the
# integers are turned into that text and cast once; for prices the distances are first added to the best price.
# Scale NULL: the values as sent, which numeric reads with their own scale. PL/pgSQL, not SQL: a SQL function with
# a subquery is not inlined and runs several times slower (measured).
LEVELS = """
CREATE FUNCTION public.bookfeed_levels(encoded text, scale int2, direction int4) RETURNS numeric[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    a numeric[];
    tail text;
BEGIN
    IF encoded = '' THEN
        RETURN '{}';
    END IF;
    IF scale IS NULL THEN
        RETURN string_to_array(encoded, ',')::numeric[];
    END IF;
    tail := repeat('0', split_part(encoded, ',', 1)::int) || 'e-' || scale;
    IF direction = 0 THEN
        RETURN ('{' || replace(substr(encoded, strpos(encoded, ',') + 1), ',', tail || ',') || tail || '}')::numeric[];
    END IF;
    a := string_to_array(encoded, ',')::numeric[];
    a := a[2:2] || ARRAY(SELECT a[2] + direction * v FROM unnest(a[3:]) AS v);
    RETURN ('{' || array_to_string(a, tail || ',') || tail || '}')::numeric[];
END $$
"""

# The first value of an encoded column (the best price of a side), NULL for an empty side, read as bookfeed_levels
# reads it. A plain expression of immutable functions only (text || text, not text || int, which is stable), so
# PostgreSQL inlines it into book_metrics.
BEST_PRICE = """
CREATE FUNCTION public.bookfeed_best_price(encoded pg_catalog.text, scale pg_catalog.int2)
RETURNS pg_catalog.numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT CASE
    WHEN encoded OPERATOR(pg_catalog.=) '' THEN NULL
    WHEN scale IS NULL THEN CAST(pg_catalog.split_part(encoded, ',', 1) AS pg_catalog.numeric)
    ELSE CAST(pg_catalog.split_part(encoded, ',', 2)
              OPERATOR(pg_catalog.||)
              pg_catalog.repeat('0', CAST(pg_catalog.split_part(encoded, ',', 1) AS pg_catalog.int4))
              OPERATOR(pg_catalog.||) 'e-' OPERATOR(pg_catalog.||) CAST(scale AS pg_catalog.text)
              AS pg_catalog.numeric)
END
$$
"""

NEW_TABLE = """
CREATE TABLE book_snapshots (
    received_at timestamptz NOT NULL,
    last_update_id bigint NOT NULL,
    bid_vwap double precision,
    ask_vwap double precision,
    price double precision,
    depth smallint NOT NULL,
    scale smallint,
    crossed boolean NOT NULL,
    exchange text NOT NULL,
    symbol text NOT NULL,
    bid_prices text NOT NULL,
    bid_quantities text NOT NULL,
    ask_prices text NOT NULL,
    ask_quantities text NOT NULL
) PARTITION BY RANGE (received_at)
"""
NEW_INDEXES = (
    "CREATE UNIQUE INDEX book_snapshots_identity ON book_snapshots "
    "(received_at, symbol, last_update_id, depth, exchange)",
    "CREATE INDEX book_snapshots_received_brin ON book_snapshots USING brin (received_at)",
)
NEW_VIEWS = (
    """CREATE VIEW order_books AS
    SELECT exchange, symbol, received_at, last_update_id,
           bookfeed_levels(bid_prices, scale, -1) AS bid_prices,
           bookfeed_levels(bid_quantities, scale, 0) AS bid_quantities,
           bookfeed_levels(ask_prices, scale, 1) AS ask_prices,
           bookfeed_levels(ask_quantities, scale, 0) AS ask_quantities,
           depth
    FROM book_snapshots""",
    """CREATE VIEW book_metrics AS
    SELECT exchange, symbol, received_at, last_update_id, best_bid, best_ask, best_ask - best_bid AS spread,
           bid_vwap, ask_vwap, price, crossed, depth
    FROM (SELECT exchange, symbol, received_at, last_update_id,
                 bookfeed_best_price(bid_prices, scale) AS best_bid,
                 bookfeed_best_price(ask_prices, scale) AS best_ask,
                 bid_vwap, ask_vwap, price, crossed, depth
          FROM book_snapshots) b""",
)
NEW_COLUMNS = (
    "received_at, last_update_id, bid_vwap, ask_vwap, price, depth, scale, crossed, exchange, symbol, "
    "bid_prices, bid_quantities, ask_prices, ask_quantities"
)
# Every value as the text PostgreSQL writes (float8's is the shortest that reads back the same; a numeric's keeps
# its scale, so a level reads as it was sent), each side's values comma-joined.
OLD_ROWS = (
    "SELECT received_at::text, last_update_id::text, bid_vwap::text, ask_vwap::text, price::text, depth::text, "
    "crossed, exchange, symbol, array_to_string(bid_prices, ','), array_to_string(bid_quantities, ','), "
    "array_to_string(ask_prices, ','), array_to_string(ask_quantities, ',') FROM {old} ORDER BY received_at"
)
CHUNK_ROWS = 10_000

OLD_TABLE = """
CREATE TABLE book_snapshots (
    received_at timestamptz NOT NULL,
    exchange text NOT NULL,
    symbol text NOT NULL,
    depth smallint NOT NULL,
    last_update_id bigint NOT NULL,
    bid_prices numeric[] NOT NULL,
    bid_quantities numeric[] NOT NULL,
    ask_prices numeric[] NOT NULL,
    ask_quantities numeric[] NOT NULL,
    best_bid numeric,
    best_ask numeric,
    spread numeric,
    bid_vwap double precision,
    ask_vwap double precision,
    price double precision,
    crossed boolean NOT NULL
) PARTITION BY RANGE (received_at)
"""
OLD_INDEXES = (
    "CREATE UNIQUE INDEX book_snapshots_identity ON book_snapshots "
    "(exchange, symbol, received_at, last_update_id, depth)",
    "CREATE INDEX book_snapshots_received_brin ON book_snapshots USING brin (received_at)",
)
OLD_VIEWS = (
    """CREATE VIEW order_books AS
    SELECT exchange, symbol, received_at, last_update_id,
           bid_prices, bid_quantities, ask_prices, ask_quantities, depth
    FROM book_snapshots""",
    """CREATE VIEW book_metrics AS
    SELECT exchange, symbol, received_at, last_update_id,
           best_bid, best_ask, spread, bid_vwap, ask_vwap, price, crossed, depth
    FROM book_snapshots""",
)
OLD_COPY = """
INSERT INTO {new} (received_at, exchange, symbol, depth, last_update_id, bid_prices, bid_quantities, ask_prices,
                   ask_quantities, best_bid, best_ask, spread, bid_vwap, ask_vwap, price, crossed)
SELECT received_at, exchange, symbol, depth, last_update_id,
       bookfeed_levels(bid_prices, scale, -1), bookfeed_levels(bid_quantities, scale, 0),
       bookfeed_levels(ask_prices, scale, 1), bookfeed_levels(ask_quantities, scale, 0),
       best_bid, best_ask, best_ask - best_bid, bid_vwap, ask_vwap, price, crossed
FROM (SELECT *, bookfeed_best_price(bid_prices, scale) AS best_bid, bookfeed_best_price(ask_prices, scale) AS best_ask
      FROM {old}) o
ORDER BY received_at
"""

# The rights the roles revision gave on the table and the two views it replaces, given again when the roles exist.
GRANTS = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bookfeed_writer')
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bookfeed_reader') THEN
        GRANT SELECT, INSERT ON book_snapshots TO bookfeed_writer;
        GRANT SELECT ON order_books, book_metrics TO bookfeed_writer, bookfeed_reader;
    END IF;
END $$
"""


def upgrade() -> None:
    op.execute(LEVELS)
    op.execute(BEST_PRICE)
    _rewrite(NEW_TABLE, NEW_INDEXES, _copy_encoded, NEW_VIEWS)


def downgrade() -> None:
    _rewrite(OLD_TABLE, OLD_INDEXES, lambda new, old: op.execute(OLD_COPY.format(new=new, old=old)), OLD_VIEWS)
    op.execute("DROP FUNCTION bookfeed_best_price(text, int2)")
    op.execute("DROP FUNCTION bookfeed_levels(text, int2, int4)")


def _rewrite(table: str, indexes: Sequence[str], copy: Callable[[str, str], None], views: Sequence[str]) -> None:
    """Replace book_snapshots by `table`: every partition is created again under its name and bounds and filled by
    `copy(new, old)` from the previous one, one partition at a time (the previous one dropped once copied)."""
    op.execute("DROP VIEW order_books, book_metrics")
    op.execute("ALTER TABLE book_snapshots RENAME TO book_snapshots_previous")
    op.execute("ALTER INDEX book_snapshots_identity RENAME TO book_snapshots_previous_identity")
    op.execute("ALTER INDEX book_snapshots_received_brin RENAME TO book_snapshots_previous_received_brin")
    op.execute(table)
    for sql in indexes:
        op.execute(sql)
    partitions = (
        op.get_bind()
        .execute(
            text(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c "
                "ON c.oid = i.inhrelid WHERE i.inhparent = 'book_snapshots_previous'::regclass ORDER BY c.relname"
            )
        )
        .all()
    )
    for name, bound in partitions:
        old = f"{name}_previous"
        op.execute(f'ALTER TABLE "{name}" RENAME TO "{old}"')
        op.execute(f'CREATE TABLE "{name}" PARTITION OF book_snapshots {bound}')
        copy(f'"{name}"', f'"{old}"')
        op.execute(f'DROP TABLE "{old}"')
    op.execute("DROP TABLE book_snapshots_previous")
    for sql in views:
        op.execute(sql)
    op.execute(GRANTS)


def _copy_encoded(new: str, old: str) -> None:
    """Fill partition `new` from `old` in time order, the levels encoded by models.encoding, the very encoder of the
    workers (5,000-8,000 rows a second from one process on a busy 2-core machine, where a PL/pgSQL encoder managed
    1,200). Should that encoding ever change, this revision must keep a copy of the one it writes."""
    op.execute("SET LOCAL extra_float_digits = 1")  # float8 text that reads back exactly (the default, made sure)
    dbapi = op.get_bind().connection.dbapi_connection
    assert dbapi is not None
    with dbapi.cursor(name="bookfeed_compact_levels") as rows, dbapi.cursor() as out:
        rows.itersize = CHUNK_ROWS
        rows.execute(OLD_ROWS.format(old=old))
        while chunk := rows.fetchmany(CHUNK_ROWS):
            out.copy_expert(f"COPY {new} ({NEW_COLUMNS}) FROM STDIN", io.StringIO("".join(map(_line, chunk))))


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _line(row: tuple[Any, ...]) -> str:
    received_at, luid, bid_vwap, ask_vwap, price, depth, crossed, exchange, symbol, bp, bq, ap, aq = row
    levels = encode_levels(*(c.split(",") if c else () for c in (bp, bq, ap, aq)))
    fields = (
        received_at,
        luid,
        bid_vwap,
        ask_vwap,
        price,
        depth,
        None if levels.scale is None else str(levels.scale),
        "t" if crossed else "f",
        exchange.translate(_COPY_ESCAPES),
        symbol.translate(_COPY_ESCAPES),
        levels.bid_prices,
        levels.bid_quantities,
        levels.ask_prices,
        levels.ask_quantities,
    )
    return "\t".join("\\N" if f is None else f for f in fields) + "\n"
