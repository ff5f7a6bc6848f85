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
    Numeric,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP

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
PARTITION_PREFIX = "book_snapshots_p"

# One row per stored frame: the raw book (levels in the order sent, values exactly as sent) and its metrics.
# Partitioned by day on received_at; partitions are created on demand by workers.storage.ensure_partitions.
book_snapshots = Table(
    "book_snapshots",
    metadata,
    Column("received_at", TZ, nullable=False),
    Column("exchange", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("depth", SmallInteger, nullable=False),
    Column("last_update_id", BigInteger, nullable=False),
    Column("bid_prices", ARRAY(Numeric), nullable=False),
    Column("bid_quantities", ARRAY(Numeric), nullable=False),
    Column("ask_prices", ARRAY(Numeric), nullable=False),
    Column("ask_quantities", ARRAY(Numeric), nullable=False),
    Column("best_bid", Numeric),
    Column("best_ask", Numeric),
    Column("spread", Numeric),
    Column("bid_vwap", Double),
    Column("ask_vwap", Double),
    Column("price", Double),
    Column("crossed", Boolean, nullable=False),
    # The frame's identity: a redelivered frame hits this key and is not stored twice.
    Index(
        "book_snapshots_identity",
        "exchange",
        "symbol",
        "received_at",
        "last_update_id",
        "depth",
        unique=True,
    ),
    # Rows arrive in time order, so a BRIN index serves time-range scans (averages) at a tiny size.
    Index("book_snapshots_received_brin", "received_at", postgresql_using="brin"),
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
    Index("ingest_batches_stored_at", "stored_at"),
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
    Index("feed_gap_intervals_identity", "exchange", "stream", "start_at", "end_at", unique=True),
    Index("feed_gap_intervals_recorded_at", "recorded_at"),
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
)
