"""Response shapes of the API, for its OpenAPI document. Handlers stream JSON of these shapes (api.streaming);
times are RFC 3339 strings in UTC (`2026-11-30T06:00:00.123456Z`), prices and quantities exact decimal strings."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "AveragesPage",
    "BookOut",
    "BooksPage",
    "GapsPage",
    "HealthOut",
    "MetricsPage",
    "Problem",
    "RejectedPage",
    "SymbolsPage",
]

Level = tuple[str, str]


class Problem(BaseModel):
    """RFC 9457 problem details (`application/problem+json`)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None


class SymbolOut(BaseModel):
    symbol: str
    first: str = Field(description="received_at of its first stored book")
    last: str = Field(description="received_at of its last stored book")
    books: int


class SymbolsPage(BaseModel):
    items: list[SymbolOut]


class BookOut(BaseModel):
    symbol: str
    received_at: str
    last_update_id: int
    bids: list[Level] = Field(description="[price, qty] best first, exactly as stored")
    asks: list[Level]


class BooksPage(BaseModel):
    items: list[BookOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class MetricsOut(BaseModel):
    received_at: str
    last_update_id: int
    depth: int
    best_bid: str | None
    best_ask: str | None
    spread: str | None = Field(description="best_ask - best_bid, exact")
    bid_vwap: float | None
    ask_vwap: float | None
    price: float | None = Field(description="(bid_vwap + ask_vwap) / 2")
    crossed: bool


class MetricsPage(BaseModel):
    symbol: str
    items: list[MetricsOut]


class AverageOut(BaseModel):
    window_start: str
    window_end: str
    avg_price: float
    samples: int
    complete: bool = Field(description="false when the feed may have missed books in the window (feed_gaps)")
    computed_at: str


class AveragesPage(BaseModel):
    symbol: str
    window: int
    items: list[AverageOut]


class GapOut(BaseModel):
    exchange: str
    symbol: str
    stream: str
    start_at: str
    end_at: str
    reason: str


class GapsPage(BaseModel):
    items: list[GapOut]


class RejectedOut(BaseModel):
    received_at: str
    reason: str
    raw: str
    exchange: str
    batch_id: str


class RejectedPage(BaseModel):
    items: list[RejectedOut]


class SymbolHealth(BaseModel):
    symbol: str
    last_book_age_s: float = Field(description="seconds since its newest stored book was received")
    stale: bool


class HealthOut(BaseModel):
    """`bookfeed status --json`'s shape; what the API cannot count cheaply (feeds, workers) is null."""

    state: str = Field(description="healthy, degraded or down")
    problems: list[str]
    checked_at: float = Field(description="seconds since the epoch")
    queue_depth: int | None = Field(description="tasks waiting in the queues plus delivered, unacknowledged ones")
    queues: dict[str, int] | None = Field(None, description="tasks waiting per Celery queue")
    unacked: int | None = None
    outbox: int | None = Field(None, description="batches in Redis not yet committed to PostgreSQL")
    oldest_batch_age_s: float | None = Field(description="age of the oldest uncommitted batch's first frame")
    feeds: int | None = Field(description="null: `bookfeed status` counts the feeds")
    workers_alive: int | None = Field(description="null: `bookfeed status` pings the workers")
    database_lag_s: float | None = Field(description="age of the newest stored book")
    symbols: list[SymbolHealth] | None = Field(description="symbols with a book stored in the last 10 minutes")
