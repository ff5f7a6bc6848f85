"""feed.control and the pool's TokenBucket, without a socket: requests and replies, chunks, the message pace, the
connection rate, and one-line failure descriptions."""

from __future__ import annotations

import orjson
import pytest
import websocket

from feed.control import MESSAGES_PER_S, Pacer, chunks, describe, parse_reply, request
from feed.pool import TokenBucket

pytestmark = pytest.mark.unit


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_are_binance_json_and_list_subscriptions_has_no_params() -> None:
    assert orjson.loads(request(7, "SUBSCRIBE", ["a@depth20", "b@depth20"])) == {
        "method": "SUBSCRIBE",
        "id": 7,
        "params": ["a@depth20", "b@depth20"],
    }
    assert orjson.loads(request(8, "LIST_SUBSCRIPTIONS")) == {"method": "LIST_SUBSCRIPTIONS", "id": 8}


def test_chunks_cut_a_list_in_order() -> None:
    names = [f"s{i}" for i in range(250)]
    parts = list(chunks(names, 100))
    assert [len(p) for p in parts] == [100, 100, 50]
    assert [n for p in parts for n in p] == names


def test_replies_results_and_errors() -> None:
    ok = parse_reply('{"result":null,"id":3}')
    assert ok is not None and (ok.id, ok.result, ok.error) == (3, None, None)
    listed = parse_reply('{"result":["a@depth20"],"id":4}')
    assert listed is not None and listed.result == ["a@depth20"]
    err = parse_reply('{"error":{"code":2,"msg":"Invalid request: too many streams"},"id":5}')
    assert err is not None and err.error == "code 2: Invalid request: too many streams"
    for other in ('{"stream":"a","data":{}}', '{"e":"serverShutdown"}', "garbage", '{"result":1,"id":"x"}'):
        assert parse_reply(other) is None


def test_the_pacer_allows_three_messages_in_any_second() -> None:
    clock = _Clock()
    pacer = Pacer(clock=clock)
    for _ in range(MESSAGES_PER_S):
        assert pacer.delay() == 0.0
        pacer.sent()
    wait = pacer.delay()
    assert 1.0 <= wait <= 1.1
    clock.now += wait
    assert pacer.delay() == 0.0


def test_the_token_bucket_starts_full_and_refills_evenly() -> None:
    clock = _Clock()
    bucket = TokenBucket(3, period_s=300.0, clock=clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.try_take()
    assert wait == pytest.approx(100.0)  # one token per 100 s
    clock.now += 99.0
    assert bucket.try_take() == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.try_take() == 0.0
    clock.now += 10_000.0  # never more than its capacity
    assert [bucket.try_take() for _ in range(4)][-1] > 0


def test_a_handshake_failure_is_described_in_one_line() -> None:
    body = b'{"code":-1,"msg":"URI of 9000 bytes > 8192"}'
    exc = websocket.WebSocketBadStatusException("Handshake status 414 ...", 414, "Request-URI Too Long", {}, body)
    assert describe(exc) == "HTTP 414 Request-URI Too Long (URI of 9000 bytes > 8192)"
    plain = websocket.WebSocketBadStatusException("Handshake status 502 -+-+- {}", 502, "Bad Gateway", {}, b"<html>")
    assert describe(plain) == "HTTP 502 Bad Gateway"
    assert describe(ConnectionRefusedError(111, "Connection refused")) == "[Errno 111] Connection refused"
    assert describe(TimeoutError()) == "TimeoutError"
