"""Wire contract between the feed and the workers: the batch payload shape (task and queue names: models.vocabulary).

A batch is a JSON object ``{"v": 1, "exchange": EXCHANGE, "batch_id": str, "frames": [[received_ns, raw], ...]}``:
``received_ns`` is the feed's receive time (int, ns since the Unix epoch, UTC) and ``raw`` the frame text exactly as
the websocket delivered it (a combined-stream wrapper ``{"stream": ..., "data": ...}``). Parsing happens once,
in the worker. Optional keys: ``gaps`` (intervals in which a stream may have lost data) and ``rejected`` (messages
the feed refused itself, e.g. over the size limit: ``[received_ns, reason, excerpt]``, recorded as rejected frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NotRequired, TypedDict

from models.vocabulary import EXCHANGE

__all__ = [
    "PAYLOAD_VERSION",
    "Batch",
    "FeedRejected",
    "Gap",
    "make_batch",
    "transport_options",
]

PAYLOAD_VERSION: Final = 1


class Batch(TypedDict):
    v: int
    exchange: str
    batch_id: str
    frames: list[list[Any]]
    # Intervals in which a stream may have lost data: [stream, start_ns, end_ns, reason]. Absent when none.
    gaps: NotRequired[list[list[Any]]]
    # Messages the feed refused (oversized): [received_ns, reason, excerpt]. Absent when none.
    rejected: NotRequired[list[list[Any]]]


Gap = tuple[str, int, int, str]  # (stream, start_ns, end_ns, reason)
FeedRejected = tuple[int, str, str]  # (received_ns, reason, excerpt of the refused message)


def make_batch(
    *,
    batch_id: str,
    frames: list[tuple[int, str]],
    exchange: str = EXCHANGE,
    gaps: Sequence[Gap] = (),
    rejected: Sequence[FeedRejected] = (),
) -> Batch:
    """Build the payload of one ingest task from (received_ns, raw text) pairs, feed gaps and feed rejections."""
    batch: Batch = {
        "v": PAYLOAD_VERSION,
        "exchange": exchange,
        "batch_id": batch_id,
        "frames": [list(f) for f in frames],
    }
    if gaps:
        batch["gaps"] = [list(g) for g in gaps]
    if rejected:
        batch["rejected"] = [list(r) for r in rejected]
    return batch


def transport_options(key_prefix: str = "") -> dict[str, Any]:
    """kombu Redis transport options every producer and consumer must share. A key prefix lets several deployments
    (or test runs) share one Redis database without seeing each other's queues."""
    return {"global_keyprefix": key_prefix} if key_prefix else {}
