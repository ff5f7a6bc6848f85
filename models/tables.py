"""The one declaration of bookfeed's tables, columns, indexes and constraints (SQLAlchemy Core).

The public SQL interface is the views created by the migrations (order_books, book_metrics, price_averages,
rejected_messages); these tables behind them may change between releases.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.dialects.postgresql import base as postgresql_base
from sqlalchemy.types import UserDefinedType

__all__ = [
    "PARTITION_PREFIX",
    "averages_progress",
    "book_snapshots",
    "feed_gap_intervals",
    "ingest_batches",
    "metadata",
    "price_averages_table",
    "rejected_frames",
]

metadata = MetaData()
TZ = TIMESTAMP(timezone=True)


class Xid8(UserDefinedType[str]):
    """PostgreSQL's 64-bit transaction id (SQLAlchemy has no such type)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


class PgSnapshot(UserDefinedType[str]):
    """PostgreSQL's pg_snapshot (the transactions a snapshot sees), read and written as its text."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "pg_snapshot"


# Reflection (alembic's drift check) knows them by name too.
postgresql_base.ischema_names.setdefault("xid8", Xid8)
postgresql_base.ischema_names.setdefault("pg_snapshot", PgSnapshot)

# The transaction that wrote a row: workers.averages recomputes the windows of rows its previous run could not see.
_WRITER_XID = (Xid8(), text("pg_current_xact_id()"))
PARTITION_PREFIX = "book_snapshots_p"

# One row per stored frame: the raw book (levels in the order sent, values exactly as sent) and its metrics.
# Levels are stored in the compact text encoding of models.encoding (about 3x smaller than numeric[]), which the
# order_books view decodes; best bid/ask and spread are computed from them by the book_metrics view, so only the
# float metrics (and `crossed`, which the averages filter on) are stored. Fixed-width columns come first so the
# row needs no alignment padding. Partitioned by day on received_at; partitions are created on demand by
# workers.storage.ensure_partitions.
book_snapshots = Table(
    "book_snapshots",
    metadata,
    Column("received_at", TZ, nullable=False),
    Column("last_update_id", BigInteger, nullable=False),
    Column("bid_vwap", Double),
    Column("ask_vwap", Double),
    Column("price", Double),
    Column("depth", SmallInteger, nullable=False),
    # The decimals every value of the book has; NULL when they differ (the levels are then stored as sent).
    Column("scale", SmallInteger),
    Column("crossed", Boolean, nullable=False),
    Column("exchange", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("bid_prices", Text, nullable=False),
    Column("bid_quantities", Text, nullable=False),
    Column("ask_prices", Text, nullable=False),
    Column("ask_quantities", Text, nullable=False),
    # The frame's identity: a redelivered frame hits this key and is not stored twice. received_at leads because
    # rows arrive in time order: inserts append at the index's right end, whose pages split 90/10 and stay full,
    # where (exchange, symbol, ...) split in the middle of each symbol's range and left pages half empty. It also
    # serves every time range (averages, exports, the API): no other index is needed for them.
    Index(
        "book_snapshots_identity",
        "received_at",
        "symbol",
        "last_update_id",
        "depth",
        "exchange",
        unique=True,
    ),
    postgresql_partition_by="RANGE (received_at)",
)

# Frames that could not be stored as books, with the reason; never silently dropped.
rejected_frames = Table(
    "rejected_frames",
    metadata,
    Column("received_at", TZ, nullable=False),
    Column("exchange", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", Text, nullable=False),
    Index("rejected_frames_identity", "received_at", func.md5(text("raw")), unique=True),
)

# One row per stored batch: makes a redelivered batch a no-op and tells the averages which windows got late rows.
ingest_batches = Table(
    "ingest_batches",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("stored_at", TZ, nullable=False, server_default=func.now()),
    Column("min_received_at", TZ),
    Column("max_received_at", TZ),
    Column("n_books", Integer, nullable=False),
    Column("n_rejected", Integer, nullable=False),
    Column("stored_xid", _WRITER_XID[0], server_default=_WRITER_XID[1]),
    Index("ingest_batches_stored_at", "stored_at"),
    Index("ingest_batches_stored_xid", "stored_xid"),
)

# Intervals in which the feed may have missed a stream's frames (reconnect, stall, restart, dropped buffer).
# Windows that overlap one are marked incomplete in price_averages.
feed_gap_intervals = Table(
    "feed_gap_intervals",
    metadata,
    Column("exchange", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("stream", Text, nullable=False),
    Column("start_at", TZ, nullable=False),
    Column("end_at", TZ, nullable=False),
    Column("reason", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("recorded_at", TZ, nullable=False, server_default=func.now()),
    Column("recorded_xid", _WRITER_XID[0], server_default=_WRITER_XID[1]),
    Index("feed_gap_intervals_identity", "exchange", "stream", "start_at", "end_at", unique=True),
    Index("feed_gap_intervals_recorded_at", "recorded_at"),
    Index("feed_gap_intervals_recorded_xid", "recorded_xid"),
)

price_averages_table = Table(
    "price_average_windows",
    metadata,
    Column("exchange", Text, primary_key=True),
    Column("symbol", Text, primary_key=True),
    Column("window_seconds", Integer, primary_key=True),
    Column("window_start", TZ, primary_key=True),
    Column("avg_price", Double, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("complete", Boolean, nullable=False, server_default=text("true")),
    Column("computed_at", TZ, nullable=False, server_default=func.now()),
)

# How far each window size has been computed, so a beat that was down catches up on restart.
averages_progress = Table(
    "averages_progress",
    metadata,
    Column("window_seconds", Integer, primary_key=True),
    Column("computed_to", TZ, nullable=False),
    Column("last_run_at", TZ, nullable=False),
    # The snapshot the last run computed from (NULL before its first run under the 7c41d2e9a0b3 revision).
    Column("snapshot", PgSnapshot()),
)
