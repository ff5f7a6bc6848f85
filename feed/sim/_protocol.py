"""Binance market-stream JSON methods (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET/GET_PROPERTY).

Pure: a request text and the connection's subscription state in, the reply and the new state out.
Error codes follow Binance's documented table: 0 unknown property, 1 invalid value type, 2 invalid request,
3 invalid JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_EXPECTED = ", ".join(f"`{m}`" for m in METHODS)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Reply text to send, and the connection's subscriptions and ``combined`` property afterwards."""

    reply: str
    streams: tuple[str, ...]
    combined: bool


class _RequestError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def result_reply(result: Any, request_id: Any) -> str:
    """Render ``{"result": <result>, "id": <id>}``."""
    return orjson.dumps({"result": result, "id": request_id}).decode()


def error_reply(code: int, msg: str, request_id: Any) -> str:
    """Render ``{"error": {"code": <code>, "msg": <msg>}, "id": <id>}``."""
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": request_id}).decode()


def _valid_id(value: Any) -> bool:
    # Binance takes a 64-bit integer, a string of at most 36 characters, or null.
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    return value is None or (isinstance(value, str) and len(value) <= 36)


def _stream_params(request: dict[str, Any]) -> list[str]:
    params = request.get("params", [])
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
        raise _RequestError(2, "Invalid request: invalid type: expected a sequence of stream names")
    return params


def _apply(
    request: dict[str, Any], streams: tuple[str, ...], combined: bool, max_streams: int
) -> tuple[Any, tuple[str, ...], bool]:
    method = request.get("method")
    if method is None:
        raise _RequestError(2, "Invalid request: missing field `method`")
    if method not in METHODS:
        raise _RequestError(2, f"Invalid request: unknown variant `{method}`, expected one of {_EXPECTED}")
    if method == "SUBSCRIBE":
        merged = tuple(dict.fromkeys((*streams, *_stream_params(request))))
        if len(merged) > max_streams:
            raise _RequestError(2, f"Invalid request: too many streams, at most {max_streams} per connection")
        return None, merged, combined
    if method == "UNSUBSCRIBE":
        removed = set(_stream_params(request))
        return None, tuple(s for s in streams if s not in removed), combined
    if method == "LIST_SUBSCRIPTIONS":
        return list(streams), streams, combined
    params = request.get("params", [])
    if not isinstance(params, list) or not params or not isinstance(params[0], str):
        raise _RequestError(2, "Invalid request: property name must be a string")
    if params[0] != "combined":
        raise _RequestError(0, "Unknown property")
    if method == "GET_PROPERTY":
        return combined, streams, combined
    if len(params) != 2 or not isinstance(params[1], bool):
        raise _RequestError(1, "Invalid value type: expected Boolean")
    return None, streams, params[1]


def handle_request(raw: str | bytes, *, streams: Sequence[str], combined: bool, max_streams: int) -> Outcome:
    """Answer one client message; the subscription state only changes on success."""
    current = tuple(streams)
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Outcome(error_reply(3, f"Invalid JSON: {exc}", None), current, combined)
    if not isinstance(request, dict):
        return Outcome(error_reply(2, "Invalid request: expected a JSON object", None), current, combined)
    request_id = request.get("id")
    if not _valid_id(request_id):
        msg = "Invalid request: request ID must be an unsigned integer or a string of at most 36 characters"
        return Outcome(error_reply(2, msg, None), current, combined)
    try:
        result, new_streams, new_combined = _apply(request, current, combined, max_streams)
    except _RequestError as exc:
        return Outcome(error_reply(exc.code, exc.msg, request_id), current, combined)
    return Outcome(result_reply(result, request_id), new_streams, new_combined)
