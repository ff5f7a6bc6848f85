"""StreamClient's frame handling without a socket: stale frames dropped, broken ones forwarded, control events."""

from __future__ import annotations

import pytest

from feed.stream import StreamClient, _Reconnect

pytestmark = pytest.mark.unit


def _client() -> tuple[StreamClient, list[tuple[int, str]]]:
    got: list[tuple[int, str]] = []
    return StreamClient("ws://127.0.0.1:1/stream?streams=x", on_frame=lambda ns, raw: got.append((ns, raw))), got


def _frame(luid: int, stream: str = "btcusdt@depth20") -> str:
    return f'{{"stream":"{stream}","data":{{"lastUpdateId":{luid},"bids":[],"asks":[]}}}}'


def test_stale_and_repeated_frames_are_dropped_and_counted_per_stream() -> None:
    client, got = _client()
    for ns, raw in enumerate(
        [_frame(10), _frame(12), _frame(12), _frame(11), _frame(5, "ethusdt@depth20"), _frame(13)]
    ):
        client._handle(ns, raw)
    assert [raw for _, raw in got] == [_frame(10), _frame(12), _frame(5, "ethusdt@depth20"), _frame(13)]
    assert client.stats.duplicates == 2
    assert client.stats.per_stream == {"btcusdt@depth20": 3, "ethusdt@depth20": 1}


def test_a_frame_cut_inside_its_id_is_forwarded_not_dropped() -> None:
    client, got = _client()
    client._handle(1, _frame(236268423789))
    cut = '{"stream":"btcusdt@depth20","data":{"lastUpdateId":236268423}'  # looks stale, is broken
    client._handle(2, cut)
    assert got[-1] == (2, cut)
    assert client.stats.duplicates == 0


def test_server_shutdown_event_triggers_a_reconnect_and_replies_are_ignored() -> None:
    client, got = _client()
    client._handle(1, '{"result":null,"id":1}')
    assert got == []
    with pytest.raises(_Reconnect):
        client._handle(2, '{"e":"serverShutdown","E":1790000000000}')


def test_unparseable_text_is_forwarded_for_the_worker_to_reject() -> None:
    client, got = _client()
    client._handle(1, "garbage")
    assert got == [(1, "garbage")]
