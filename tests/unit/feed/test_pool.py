"""feed.pool and feed.connection against the real simulator on loopback (and, for the exact wire messages, a small
in-test server): streams split over connections, subscribed by message in chunks and checked, the connection
rate, stream-list changes while live, make-before-break rotation (serverShutdown and age) without gaps or
duplicates, and connection failures visible in each connection's state and last error and in the log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest
from websockets.sync.server import ServerConnection, serve

from feed.ids import peek
from feed.stream import StreamClient
from models.settings import ReconnectPolicy
from simulator import ServerConfig, SimConfig, SimulatorThread
from tests.services import wait_for

pytestmark = pytest.mark.unit

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
STREAMS = [f"{s.lower()}@depth20@100ms" for s in SYMBOLS]
POLICY = replace(ReconnectPolicy.default(), silence_timeout_s=5.0)


@dataclass
class _Run:
    client: StreamClient
    frames: list[str] = field(default_factory=list)
    gaps: list[tuple[str, int, int, str]] = field(default_factory=list)

    def gap_reasons(self) -> set[str]:
        return {g[3] for g in self.gaps} - {"feed started", "feed stopped"}

    def ids(self, stream: str) -> list[int]:
        return [luid for s, luid in map(peek, self.frames) if s == stream and luid is not None]

    def states(self) -> list[str]:
        return [s.state for s in self.client.pool.statuses()]


@contextmanager
def _running(url: str, streams: list[str] | None = None, **options: Any) -> Iterator[_Run]:
    """A StreamClient reading `url` (subscribing `streams` at a bare endpoint) in a thread, stopped on exit."""
    holder: list[_Run] = []
    client = StreamClient(
        url,
        on_frame=lambda ns, raw: holder[0].frames.append(raw),
        on_gap=lambda *g: holder[0].gaps.append(g),
        **{"policy": POLICY, **options},
    )
    run = _Run(client)
    holder.append(run)
    if streams is not None:
        client.set_streams(streams)
    stop = threading.Event()
    thread = threading.Thread(target=client.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield run
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive()


def _every_stream_flows(run: _Run, streams: list[str], n: int = 3) -> bool:
    return all(len(run.ids(s)) >= n for s in streams)


def test_streams_beyond_streams_per_connection_are_spread_over_connections() -> None:
    with SimulatorThread(SimConfig(symbols=SYMBOLS)) as sim:
        bare = f"ws://127.0.0.1:{sim.port}"
        with _running(bare, STREAMS, streams_per_connection=2) as run:
            wait_for(lambda: _every_stream_flows(run, STREAMS), 20, "frames of every stream")
            assert sorted(s.streams for s in run.client.pool.statuses()) == [1, 2, 2]
            assert run.states() == ["live"] * 3 and run.client.pool.subscribed() == 5
            snap = run.client.snapshot()
        stats = sim.stats()
    assert stats["connections_total"] == 3
    assert not any(stats["violations"].values())
    assert snap["streams_subscribed"] == 5 and snap["connected"]
    assert [set(c) for c in snap["connections"]] == [{"id", "state", "streams", "last_error", "since", "frames"}] * 3
    assert run.gap_reasons() == set()


def test_a_thousand_streams_are_subscribed_in_chunks_within_the_message_rate() -> None:
    """1,000 streams on one connection: ten SUBSCRIBE messages and a LIST_SUBSCRIPTIONS, at most 3 a second (the
    simulator closes a connection sending more than 5 a second, and counts it as a violation)."""
    symbols = tuple(f"S{i:04d}USDT" for i in range(1_000))
    streams = [f"{s.lower()}@depth5" for s in symbols]
    with SimulatorThread(SimConfig(symbols=symbols)) as sim:
        with _running(f"ws://127.0.0.1:{sim.port}", streams, streams_per_connection=1_000) as run:
            wait_for(lambda: run.states() == ["live"], 30, "the connection live")
            assert run.client.pool.subscribed() == 1_000
        stats = sim.stats()
    assert stats["connections_total"] == 1 and not any(stats["violations"].values())


class _Recorder:
    """An in-test Binance-like endpoint that records each request; its first LIST_SUBSCRIPTIONS leaves out one
    stream (as if a SUBSCRIBE had not taken), and a SUBSCRIBE of `refuse` is answered with an error."""

    def __init__(self, refuse: str | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.refuse = refuse
        self.lists = 0

    def handler(self, ws: ServerConnection) -> None:
        subscribed: list[str] = []
        for message in ws:
            req = orjson.loads(message)
            self.requests.append(req)
            params = req.get("params", [])
            if req["method"] == "SUBSCRIBE" and self.refuse in params:
                ws.send(orjson.dumps({"error": {"code": 2, "msg": "Invalid request: no"}, "id": req["id"]}).decode())
                continue
            result: Any = None
            if req["method"] == "SUBSCRIBE":
                subscribed += params
            elif req["method"] == "UNSUBSCRIBE":
                subscribed = [s for s in subscribed if s not in params]
            elif req["method"] == "LIST_SUBSCRIPTIONS":
                self.lists += 1
                result = subscribed[1:] if self.lists == 1 else subscribed
            ws.send(orjson.dumps({"result": result, "id": req["id"]}).decode())


@contextmanager
def _recorder(refuse: str | None = None) -> Iterator[tuple[_Recorder, str]]:
    rec = _Recorder(refuse)
    with serve(rec.handler, "127.0.0.1", 0) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield rec, f"ws://127.0.0.1:{srv.socket.getsockname()[1]}"
        srv.shutdown()
        thread.join(10)


def test_subscribe_chunks_then_list_subscriptions_resubscribes_what_is_missing() -> None:
    streams = [f"s{i:03d}usdt@depth20" for i in range(250)]
    with _recorder() as (rec, url), _running(url, streams, streams_per_connection=250) as run:
        wait_for(lambda: run.states() == ["live"], 20, "the connection live")
    methods = [(r["method"], len(r.get("params", []))) for r in rec.requests]
    assert methods == [
        ("SUBSCRIBE", 100),
        ("SUBSCRIBE", 100),
        ("SUBSCRIBE", 50),
        ("LIST_SUBSCRIPTIONS", 0),
        ("SUBSCRIBE", 1),  # the stream the first list left out
        ("LIST_SUBSCRIPTIONS", 0),
    ]
    assert rec.requests[4]["params"] == [streams[0]]
    assert sorted(p for r in rec.requests[:3] for p in r["params"]) == streams
    assert len({r["id"] for r in rec.requests}) == 6


def test_an_error_reply_fails_the_connection_with_a_clear_last_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="feed")
    streams = ["btcusdt@depth20", "ethusdt@depth20"]
    with _recorder(refuse="ethusdt@depth20") as (_, url), _running(url, streams) as run:
        wait_for(lambda: run.states() == ["backoff"], 20, "the connection backing off")
        [status] = run.client.pool.statuses()
    assert status.last_error is not None
    assert status.last_error.startswith("SUBSCRIBE refused: code 2: Invalid request: no")
    assert "connection 1 (2 streams): SUBSCRIBE refused: code 2: Invalid request: no" in caplog.text


def test_connects_stay_within_the_connection_rate() -> None:
    with SimulatorThread(SimConfig(symbols=SYMBOLS)) as sim:
        bare = f"ws://127.0.0.1:{sim.port}"
        with _running(bare, STREAMS, streams_per_connection=2, connects_per_5m=2) as run:
            wait_for(lambda: sorted(run.states()) == ["connecting", "live", "live"], 20, "two connections live")
            waiting = next(s for s in run.client.pool.statuses() if s.state == "connecting")
            assert waiting.last_error is not None and "waiting for a connect slot (2 per 5 min)" in waiting.last_error
        assert sim.stats()["connections_total"] == 2


def test_set_streams_subscribes_new_streams_and_unsubscribes_removed_ones(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="feed.pool")
    first, later = STREAMS[:3], [*STREAMS[1:3], *STREAMS[3:]]  # btc removed, sol and xrp added
    with SimulatorThread(SimConfig(symbols=SYMBOLS)) as sim:
        with _running(f"ws://127.0.0.1:{sim.port}", first, streams_per_connection=2) as run:
            wait_for(lambda: _every_stream_flows(run, first), 20, "frames of the first streams")
            added, removed = run.client.set_streams(later)
            assert (added, removed) == (STREAMS[3:], STREAMS[:1])
            wait_for(lambda: _every_stream_flows(run, STREAMS[3:]), 20, "frames of the added streams")
            wait_for(lambda: run.client.pool.subscribed() == 4, 20, "btcusdt unsubscribed")
            assert run.client.streams == frozenset(later)
            assert sorted(s.streams for s in run.client.pool.statuses()) == [2, 2]  # the room left by btc is used
        assert not any(sim.stats()["violations"].values())
    assert "subscribing 2 streams: solusdt@depth20@100ms, xrpusdt@depth20@100ms" in caplog.text
    assert "unsubscribing 1 streams: btcusdt@depth20@100ms" in caplog.text
    assert run.gap_reasons() == {"unsubscribed"}


def _assert_rotated_cleanly(run: _Run, streams: list[str]) -> None:
    assert run.gap_reasons() == set()  # no gap for a rotation that lost nothing
    assert run.client.stats.duplicates > 0  # both connections delivered, each frame went on once
    for s in streams:
        ids = run.ids(s)
        assert ids == sorted(set(ids))


def test_rotation_on_server_shutdown_is_make_before_break(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="feed.pool")
    server = ServerConfig(max_lifetime_s=3.0, shutdown_notice_s=2.0)
    with SimulatorThread(SimConfig(symbols=SYMBOLS[:3], server=server)) as sim:
        with _running(f"ws://127.0.0.1:{sim.port}", STREAMS[:3], streams_per_connection=2) as run:
            wait_for(lambda: caplog.text.count("without a gap") >= 4, 30, "two rotations of each connection")
            wait_for(lambda: _every_stream_flows(run, STREAMS[:3], 5), 20, "frames after the rotations")
        assert not any(sim.stats()["violations"].values())
    _assert_rotated_cleanly(run, STREAMS[:3])
    assert "server announced shutdown; connection 3 replaces it" in caplog.text
    assert "replaced by connection 3 without a gap" in caplog.text


def test_rotation_at_the_connection_age_limit() -> None:
    policy = replace(POLICY, max_connection_age_s=2.0)
    with SimulatorThread(SimConfig(symbols=SYMBOLS[:2])) as sim:
        bare = f"ws://127.0.0.1:{sim.port}"
        with _running(bare, STREAMS[:2], policy=policy) as run:
            wait_for(lambda: run.client.pool._next_id >= 4, 30, "two rotations")
            wait_for(lambda: _every_stream_flows(run, STREAMS[:2], 5), 20, "frames after the rotations")
    _assert_rotated_cleanly(run, STREAMS[:2])
    assert run.client.pool.reconnects() == 0


def test_a_full_url_is_read_as_it_is_and_rotated_too() -> None:
    server = ServerConfig(max_lifetime_s=3.0, shutdown_notice_s=2.0)
    with SimulatorThread(SimConfig(symbols=SYMBOLS[:2], server=server)) as sim, _running(sim.url(STREAMS[:2])) as run:
        wait_for(lambda: run.client.pool._next_id >= 3, 30, "a rotation")
        wait_for(lambda: _every_stream_flows(run, STREAMS[:2], 4), 20, "frames after the rotation")
    _assert_rotated_cleanly(run, STREAMS[:2])


def test_a_refused_connect_shows_in_the_state_last_error_and_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="feed")
    server = ServerConfig(max_uri_bytes=64)
    sim = SimulatorThread(SimConfig(symbols=SYMBOLS, server=server))
    with sim, _running(sim.url(STREAMS), nothing_alarm_s=0.5) as run:
        wait_for(lambda: run.states() == ["backoff"], 20, "the connection backing off")
        [status] = run.client.pool.statuses()
        wait_for(lambda: "nothing subscribed" in caplog.text, 20, "the nothing-subscribed ERROR")
    assert status.last_error is not None
    assert status.last_error.startswith("connect failed: HTTP 414 Request-URI Too Long (Request-URI Too Long: URI of")
    assert status.last_error.endswith(" s") and "; retry in " in status.last_error
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING and "connect failed" in r.getMessage())
    assert warning.getMessage().startswith("connection 1 (5 streams): connect failed: HTTP 414 Request-URI Too Long")
    error = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert "nothing subscribed for" in error.getMessage() and "HTTP 414" in error.getMessage()
