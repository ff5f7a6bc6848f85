"""JSON responses written while rows arrive: `{"items": [...], ...}` streamed in chunks, so a response of any length
holds one chunk and one cursor batch in memory."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson
from fastapi.responses import StreamingResponse

__all__ = ["json_items", "primed"]

_CHUNK_BYTES = 64 * 1024


def primed(items: Iterator[Any]) -> Iterator[Any]:
    """Run the query behind `items` now (its first row), so database errors become an error status, not a response
    cut short after a 200 went out."""
    try:
        first = next(items)
    except StopIteration:
        return iter(())
    return itertools.chain((first,), items)


def _body(
    items: Iterable[Mapping[str, Any]], head: Mapping[str, Any], tail: Callable[[], Mapping[str, Any]] | None
) -> Iterator[bytes]:
    buf = bytearray(b"{")
    for k, v in head.items():
        buf += orjson.dumps(k) + b":" + orjson.dumps(v) + b","
    buf += b'"items":['
    sep = b""
    for item in items:
        buf += sep + orjson.dumps(item)
        sep = b","
        if len(buf) >= _CHUNK_BYTES:
            yield bytes(buf)
            buf.clear()
    buf += b"]"
    for k, v in (tail() if tail else {}).items():
        buf += b"," + orjson.dumps(k) + b":" + orjson.dumps(v)
    yield bytes(buf + b"}")


def json_items(
    items: Iterable[Mapping[str, Any]],
    *,
    head: Mapping[str, Any] | None = None,
    tail: Callable[[], Mapping[str, Any]] | None = None,
) -> StreamingResponse:
    """`{<head fields>, "items": [<items>], <tail fields>}`; `tail` is called once every item is written."""
    return StreamingResponse(_body(items, head or {}, tail), media_type="application/json")
