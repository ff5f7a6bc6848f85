"""The exception tree of bookfeed. Catch by category; context travels as keyword-only attributes.

PipelineError
├── ConfigError                      bad settings or CLI values (exit 2, one line)
├── InvalidBookError                 a frame that cannot be stored as a book (never retried)
│   └── MalformedPayloadError        not JSON, missing fields, bad numbers, unknown stream
├── FeedError                        websocket side
│   └── RetriesExhaustedError        the reconnect budget is spent
└── StorageError                     PostgreSQL side
    ├── DuplicateRowError            a row with the same identity is stored already
    ├── PartitionRefusedError        a day too far from now for a partition (the function's own refusal)
    ├── MissingPartitionError        a row's day has no partition (one was dropped since it was made)
    └── TransientStorageError        connection lost, server restarting: retry later
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DuplicateRowError",
    "FeedError",
    "InvalidBookError",
    "MalformedPayloadError",
    "MissingPartitionError",
    "PartitionRefusedError",
    "PipelineError",
    "RetriesExhaustedError",
    "StorageError",
    "TransientStorageError",
]


class PipelineError(Exception):
    """Base of every error bookfeed raises on purpose."""


class ConfigError(PipelineError):
    """A setting or command-line value is invalid."""


class InvalidBookError(PipelineError):
    """A frame is not a storable order book; `reason` is what gets recorded."""

    def __init__(self, reason: str, *, symbol: str | None = None, last_update_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.symbol = symbol
        self.last_update_id = last_update_id


class MalformedPayloadError(InvalidBookError):
    """Not JSON, a missing or extra field, a bad number, or a stream we do not record."""


class FeedError(PipelineError):
    """The websocket feed failed."""


class RetriesExhaustedError(FeedError):
    """Reconnecting failed `attempts` times in a row."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class StorageError(PipelineError):
    """PostgreSQL refused or failed a write."""


class DuplicateRowError(StorageError):
    """A write met a row stored before under the same unique key (a frame re-published in another batch)."""


class PartitionRefusedError(StorageError):
    """bookfeed_ensure_partition refused a day (SQLSTATE 22008: outside today - 3650 .. today + 2)."""


class MissingPartitionError(StorageError):
    """A row's day has no partition of book_snapshots: one known to exist was dropped since (by hand, or the
    database re-created under running workers). Making the partition again and writing again succeeds."""


class TransientStorageError(StorageError):
    """PostgreSQL is unreachable or restarting; the same write will succeed later."""
