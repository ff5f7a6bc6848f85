"""feed.stream: the combined-stream URL, and StreamClient without a socket: stale frames dropped, broken ones
forwarded, control events, id resets, state kept for subscribed streams only, the gaps of interruptions, feed start
and feed stop, and the reconnect backoff."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from feed.frames import Reconnect
from feed.stream import OTHER_STREAMS, StreamClient, build_url
from models.errors import ConfigError
from models.settings import ReconnectPolicy
from models.vocabulary import Speed
from tests.unit.feed._fakes import RecordingStop

pytestmark = pytest.mark.unit

SYMBOLS = ("btcusdt", "ethusdt", "bnbusdt")
ALL3_100MS = "streams=btcusdt@depth20@100ms/ethusdt@depth20@100ms/bnbusdt@depth20@100ms"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://stream.binance.com:9443", f"wss://stream.binance.com:9443/stream?{ALL3_100MS}"),
        ("wss://stream.binance.com:9443/", f"wss://stream.binance.com:9443/stream?{ALL3_100MS}"),
        ("wss://stream.binance.com:9443/ws", f"wss://stream.binance.com:9443/stream?{ALL3_100MS}"),
        ("wss://stream.binance.com:9443/ws/", f"wss://stream.binance.com:9443/stream?{ALL3_100MS}"),
        ("ws://127.0.0.1:9000", f"ws://127.0.0.1:9000/stream?{ALL3_100MS}"),
        ("wss://proxy.example/binance/ws", f"wss://proxy.example/binance/stream?{ALL3_100MS}"),
    ],
    ids=["bare", "bare-slash", "ws", "ws-slash", "local", "prefixed-ws"],
)
def test_endpoint_gets_the_streams_of_the_symbols(url: str, expected: str) -> None:
    assert build_url(url, symbols=SYMBOLS, depth=20, speed="100ms") == expected


@pytest.mark.parametrize(
    ("depth", "speed", "streams"),
    [
        (20, "100ms", "btcusdt@depth20@100ms"),
        (20, "1000ms", "btcusdt@depth20"),  # 1000 ms is Binance's default: no suffix
        (10, "100ms", "btcusdt@depth10@100ms"),
        (5, "1000ms", "btcusdt@depth5"),
    ],
)
def test_depth_and_speed_suffixes(depth: int, speed: Speed, streams: str) -> None:
    url = build_url("wss://stream.binance.com:9443", symbols=("btcusdt",), depth=depth, speed=speed)
    assert url == f"wss://stream.binance.com:9443/stream?streams={streams}"


def test_symbols_are_lower_cased_in_stream_names() -> None:
    url = build_url("wss://h:9443", symbols=("BTCUSDT", "EthUsdt"), depth=5, speed="100ms")
    assert url == "wss://h:9443/stream?streams=btcusdt@depth5@100ms/ethusdt@depth5@100ms"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://h:9443/ws/btcusdt@depth20@100ms", "wss://h:9443/stream?streams=btcusdt@depth20@100ms"),
        ("wss://h:9443/ws/btcusdt@depth5/", "wss://h:9443/stream?streams=btcusdt@depth5"),
        ("ws://h/api/ws/ethusdt@depth10", "ws://h/api/stream?streams=ethusdt@depth10"),
    ],
)
def test_raw_stream_url_becomes_combined(url: str, expected: str) -> None:
    # The stream named in the URL wins over symbols/depth/speed.
    assert build_url(url, symbols=SYMBOLS, depth=20, speed="1000ms") == expected


@pytest.mark.parametrize(
    "url",
    [
        "wss://stream.binance.com:9443/stream?streams=btcusdt@depth20@100ms/ethusdt@depth5",
        "wss://stream.binance.com:9443/stream/?streams=btcusdt@depth20",
        "ws://127.0.0.1:9000/stream?streams=BTCUSDT@depth20&timeUnit=MICROSECOND",
    ],
)
def test_combined_url_is_kept_verbatim(url: str) -> None:
    assert build_url(url, symbols=SYMBOLS, depth=20, speed="100ms") == url


@pytest.mark.parametrize("url", ["wss://h/stream", "wss://h/stream?streams=", "wss://h/stream?other=1"])
def test_combined_url_without_streams(url: str) -> None:
    with pytest.raises(ConfigError, match=r"has no \?streams="):
        build_url(url, symbols=SYMBOLS, depth=20, speed="100ms")


@pytest.mark.parametrize(
    "url",
    [
        "https://stream.binance.com:9443",
        "http://stream.binance.com/ws",
        "stream.binance.com:9443",
        "wss://",
        "wss:///ws/btcusdt@depth20",
        "",
    ],
)
def test_not_a_websocket_url(url: str) -> None:
    with pytest.raises(ConfigError, match="not a websocket URL"):
        build_url(url, symbols=SYMBOLS, depth=20, speed="100ms")


# --- StreamClient -----------------------------------------------------------------------------------------------------


def _client() -> tuple[StreamClient, list[tuple[int, str]]]:
    got: list[tuple[int, str]] = []
    url = "ws://127.0.0.1:1/stream?streams=btcusdt@depth20/ethusdt@depth20"
    return StreamClient(url, on_frame=lambda ns, raw: got.append((ns, raw))), got


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
    with pytest.raises(Reconnect):
        client._handle(2, '{"e":"serverShutdown","E":1790000000000}')


def test_unparseable_text_is_forwarded_for_the_worker_to_reject() -> None:
    client, got = _client()
    client._handle(1, "garbage")
    assert got == [(1, "garbage")]


class _Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000_000

    def __call__(self) -> int:
        return self.ns


def _gap_client(
    last_seen: dict[str, int] | None = None,
) -> tuple[StreamClient, list[tuple[str, int, int, str]], _Clock]:
    clock = _Clock()
    gaps: list[tuple[str, int, int, str]] = []
    client = StreamClient(
        "ws://127.0.0.1:1/stream?streams=btcusdt@depth20/ethusdt@depth20",
        on_frame=lambda ns, raw: None,
        on_gap=lambda *g: gaps.append(g),
        last_seen=last_seen,
        policy=replace(ReconnectPolicy.default(), stall_timeout_s=5),
        clock_ns=clock,
    )
    return client, gaps, clock


def test_a_reconnect_is_a_gap_per_stream_from_its_last_frame_to_its_next() -> None:
    client, gaps, _ = _gap_client()
    client._handle(100, _frame(1))
    client._handle(200, _frame(1, "ethusdt@depth20"))
    del gaps[:]  # "feed started"
    client._interrupt_all("reconnected: server closed the connection")
    client._handle(900, _frame(2))
    assert gaps == [("btcusdt@depth20", 100, 900, "reconnected: server closed the connection")]
    client._handle(950, _frame(3))  # one gap per interruption
    client._handle(990, _frame(2, "ethusdt@depth20"))
    assert gaps[-1] == ("ethusdt@depth20", 200, 990, "reconnected: server closed the connection")
    assert len(gaps) == 2


def test_a_silent_stream_is_a_stall_gap_once_it_speaks_again() -> None:
    client, gaps, clock = _gap_client()
    client._handle(clock.ns, _frame(1))
    del gaps[:]  # "feed started"
    start = clock.ns
    clock.ns += 4 * 10**9
    client.check_stalls()
    assert gaps == [] and "btcusdt@depth20" not in client._interrupted
    clock.ns += 2 * 10**9
    client.check_stalls()
    client.check_stalls()  # marked once
    client._handle(clock.ns, _frame(2))
    assert gaps == [("btcusdt@depth20", start, clock.ns, "stalled")]


def test_where_the_previous_feed_stopped_starts_a_restart_gap() -> None:
    client, gaps, _ = _gap_client(last_seen={"btcusdt@depth20": 50, "solusdt@depth20": 7})
    client._handle(500, _frame(1))
    assert gaps == [("btcusdt@depth20", 50, 500, "feed restarted")]
    assert "solusdt@depth20" not in client._interrupted  # not ours


# --- lastUpdateId out of range, id resets (issue 7, point 2) ------------------------------------------------------

ABSURD = 9999999999999999999  # 19 digits, beyond 2**63 - 1: the worker rejects it


def test_an_absurd_id_is_forwarded_and_does_not_silence_its_stream() -> None:
    client, got = _client()
    for ns, luid in enumerate([10, ABSURD, 11, 2**63 - 1, 12]):
        client._handle(ns, _frame(luid))
    assert [raw for _, raw in got] == [_frame(10), _frame(ABSURD), _frame(11), _frame(2**63 - 1), _frame(12)]
    assert client.stats.duplicates == 0  # 12 came after the largest valid id, yet far below it: a reset


def test_ids_going_back_after_a_reconnect_are_a_reset_gap_and_the_frames_are_forwarded() -> None:
    client, gaps, _ = _gap_client()
    got: list[str] = []
    client._on_frame = lambda ns, raw: got.append(raw)
    client._handle(100, _frame(500_000))
    client._handle(200, _frame(500_001))
    del gaps[:]
    client._interrupt_all("reconnected: server closed the connection")
    client._handle(900, _frame(500_001))  # the server repeats its last book: still a duplicate
    client._handle(950, _frame(3))  # ids restarted
    client._handle(960, _frame(4))
    client._handle(970, _frame(3))  # stale again within the new sequence
    assert got == [_frame(500_000), _frame(500_001), _frame(3), _frame(4)]
    assert gaps == [
        (
            "btcusdt@depth20",
            200,
            950,
            "reconnected: server closed the connection; lastUpdateId reset from 500001 to 3",
        )
    ]
    assert client.stats.duplicates == 2


def test_a_server_a_few_updates_behind_after_a_reconnect_is_not_forwarded_twice() -> None:
    client, gaps, _ = _gap_client()
    got: list[str] = []
    client._on_frame = lambda ns, raw: got.append(raw)
    for ns, luid in enumerate([1000, 1001, 1002], start=100):
        client._handle(ns, _frame(luid))
    del gaps[:]
    client._interrupt_all("reconnected: server closed the connection")
    for ns, luid in enumerate([1000, 1001, 1002, 1003], start=900):  # two updates behind
        client._handle(ns, _frame(luid))
    assert got == [_frame(1000), _frame(1001), _frame(1002), _frame(1003)]
    assert client.stats.duplicates == 3
    assert gaps == [("btcusdt@depth20", 102, 903, "reconnected: server closed the connection")]


def test_a_bogus_jump_forward_is_undone_by_the_next_real_id() -> None:
    client, gaps, _ = _gap_client()
    got: list[str] = []
    client._on_frame = lambda ns, raw: got.append(raw)
    client._handle(100, _frame(1000))
    client._handle(110, _frame(900_000))  # bogus, yet in range
    del gaps[:]
    for ns, luid in enumerate([1001, 1002, 1003], start=120):
        client._handle(ns, _frame(luid))
    assert got == [_frame(1000), _frame(900_000), _frame(1001), _frame(1002), _frame(1003)]
    assert gaps == [("btcusdt@depth20", 110, 120, "lastUpdateId reset from 900000 to 1001")]
    assert client.stats.duplicates == 0


def test_a_small_bogus_jump_silences_at_most_its_span_and_that_silence_is_a_stall_gap() -> None:
    client, gaps, clock = _gap_client()  # stall timeout 5 s
    got: list[str] = []
    client._on_frame = lambda ns, raw: got.append(raw)
    client._handle(clock.ns, _frame(1000))
    client._handle(clock.ns, _frame(1500))  # 500 ahead: not a reset when the real ids resume below it
    jumped = clock.ns
    del gaps[:]
    for luid in range(1001, 1501):  # one update every 20 ms: 10 s of real updates hidden behind the jump
        clock.ns += 20_000_000
        client._handle(clock.ns, _frame(luid))
        client.check_stalls()
    clock.ns += 20_000_000
    client._handle(clock.ns, _frame(1501))
    assert got == [_frame(1000), _frame(1500), _frame(1501)]
    assert client.stats.duplicates == 500
    assert gaps == [("btcusdt@depth20", jumped, clock.ns, "stalled")]


def test_a_small_step_back_without_interruption_is_stale_a_huge_one_is_a_reset() -> None:
    client, gaps, _ = _gap_client()
    client._handle(100, _frame(5_000_000))
    client._handle(110, _frame(4_999_999))
    assert client.stats.duplicates == 1
    del gaps[:]
    client._handle(120, _frame(7))
    assert gaps == [("btcusdt@depth20", 100, 120, "lastUpdateId reset from 5000000 to 7")]
    assert client.stats.duplicates == 1


# --- bounded state (point 6) --------------------------------------------------------------------------------------


def test_only_subscribed_streams_have_state_the_rest_share_one_counter() -> None:
    client, got = _client()
    huge = "x" * (1 << 20)
    for ns in range(50):
        client._handle(ns, _frame(ns + 1, f"s{ns}@depth20"))
    client._handle(60, _frame(1, huge))
    client._handle(61, _frame(1))
    assert len(got) == 52  # all forwarded: the worker judges them
    assert client.stats.per_stream == {OTHER_STREAMS: 51, "btcusdt@depth20": 1}
    assert set(client.last_seen) == {"btcusdt@depth20"}
    assert set(client._last) == {"btcusdt@depth20"}
    assert set(client._interrupted) <= set(client.streams)


# --- the windows in which the feed starts and stops are incomplete (point 10) ----------------------------------------


def test_a_stream_without_a_previous_feed_gets_a_feed_started_gap_at_its_first_frame() -> None:
    client, gaps, _ = _gap_client(last_seen={"ethusdt@depth20": 50})
    client._handle(5_000, _frame(1))
    client._handle(6_000, _frame(2))
    client._handle(7_000, _frame(1, "ethusdt@depth20"))
    assert gaps == [
        ("btcusdt@depth20", 4_000, 5_000, "feed started"),
        ("ethusdt@depth20", 50, 7_000, "feed restarted"),
    ]


def test_run_ends_with_a_feed_stopped_gap_per_stream_that_had_frames() -> None:
    client, gaps, clock = _gap_client()
    client._handle(clock.ns, _frame(1))
    seen = clock.ns
    del gaps[:]
    clock.ns += 3 * 10**9
    stop = threading.Event()
    stop.set()
    client.run(stop)
    assert gaps == [("btcusdt@depth20", seen, clock.ns, "feed stopped")]  # ethusdt had no frame: nothing to stop


def test_the_next_process_starts_its_restart_gap_where_this_one_reported_its_stop() -> None:
    client, gaps, clock = _gap_client()
    client._handle(clock.ns, _frame(1))
    clock.ns += 3 * 10**9
    stop = threading.Event()
    stop.set()
    client.run(stop)
    assert gaps[-1] == ("btcusdt@depth20", clock.ns - 3 * 10**9, clock.ns, "feed stopped")
    assert client.stopped == {"btcusdt@depth20": clock.ns}  # what the feed saves as last seen for the next process


# --- reconnect backoff ---------------------------------------------------------------------------------------------


class _FakeSocket:
    def close(self, timeout: float = 0) -> None:
        pass

    def shutdown(self) -> None:
        pass


class _FakeBuffer:
    oversized = False


@pytest.mark.parametrize("lasted_s", [0.2, 11.0])
def test_connections_that_end_quickly_back_off_like_failed_connects(lasted_s: float) -> None:
    """A server that accepts, sends a frame and closes must not be reconnected to in a tight loop."""
    client, _, clock = _gap_client()
    stop = RecordingStop()
    sessions: list[int] = []

    def read(ws: object, buf: object, stop_: threading.Event) -> None:
        sessions.append(clock.ns)
        clock.ns += int(lasted_s * 1e9)
        if len(sessions) == 6:
            stop_.set()
        raise Reconnect("server closed the connection")

    client._connect = lambda stop_: (_FakeSocket(), _FakeBuffer())  # type: ignore[assignment, method-assign, return-value]
    client._read = read  # type: ignore[method-assign, assignment]
    client.run(stop)
    assert client.stats.reconnects == 5
    if lasted_s < 10:
        assert len(stop.waits) == 5
        for failures, delay in enumerate(stop.waits, start=1):  # doubling, as after failed connects
            assert client.policy.backoff_s(failures) / 2 <= delay <= client.policy.backoff_s(failures)
    else:
        assert stop.waits == []  # a connection that lasted is followed by an immediate reconnect
