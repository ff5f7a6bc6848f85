"""Each fault, switched on through the HTTP control API, the Python API or start-up configuration; each fault
setting has the same name in all three."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
import pytest

from models.errors import ConfigError
from simulator import (
    FAULT_SETTINGS,
    FaultConfig,
    RecordingWriter,
    ReplayConfig,
    ReplayThread,
    SimConfig,
    SimulatorThread,
)

pytestmark = pytest.mark.integration

FAST = "btcusdt@depth20@100ms"


def test_drop_now_by_http(sim, connect, http) -> None:
    clients = [connect(sim.url([FAST])) for _ in range(2)]
    for client in clients:
        client.recv()
    assert http(sim.http_url("/control/drop"), "POST") == (200, {"dropped": 2})
    for client in clients:
        assert client.wait_closed() is None  # no close frame: the TCP connection just died
    _, stats = http(sim.http_url("/control/stats"))
    assert stats["connections"] == 0 and stats["connections_total"] == 2 and stats["faults"]["drop"] == 2
    assert "lastUpdateId" in connect(sim.url([FAST])).recv()  # reconnecting works


def test_drop_every_from_config(connect) -> None:
    with SimulatorThread(SimConfig(faults=FaultConfig(drop_every_s=0.3))) as sim:
        start = time.monotonic()
        assert connect(sim.url([FAST])).wait_closed() is None
        assert time.monotonic() - start < 1.0
        assert sim.set_faults(drop_every_s=0)["drop_every_s"] is None
        client = connect(sim.url([FAST]))
        assert len(client.frames(0.5)) >= 3


def test_stall_keeps_the_socket_open_and_silent(sim, connect, http) -> None:
    client = connect(sim.url([FAST, "ethusdt@depth5@100ms"]))
    client.recv()
    start = time.monotonic()
    status, _ = http(sim.http_url(f"/control/stall?stream={FAST}&seconds=0.6"), "POST")
    assert status == 200
    frames = client.frames(1.2)
    stalled = [t - start for t, text in frames if FAST in text]
    others = [t for t, text in frames if "ethusdt" in text]
    assert not [t for t in stalled if 0.15 < t < 0.5]  # one frame may have been in flight
    assert len([t for t in stalled if t >= 0.5]) >= 3  # it comes back after the stall
    assert len(others) >= 9


def test_stall_all_streams_by_python_api(sim, connect) -> None:
    client = connect(sim.url([FAST]))
    client.recv()
    sim.stall(0.5)
    time.sleep(0.12)  # a frame may have been in flight
    client.frames(0.05)
    assert client.frames(0.25) == []
    assert len(client.frames(0.6)) >= 2
    assert sim.stats()["faults"]["stall"] == 1


def _is_malformed(text: str) -> bool:
    try:
        data = orjson.loads(text)["data"]
    except (orjson.JSONDecodeError, KeyError):
        return True
    if set(data) != {"lastUpdateId", "bids", "asks"} or not isinstance(data["lastUpdateId"], int):
        return True
    try:
        return any(float(p) <= 0 or float(q) < 0 for p, q in data["bids"] + data["asks"])
    except (TypeError, ValueError):
        return True


def test_malformed_frames_by_http(sim, connect, http, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="simulator")
    client = connect(sim.url([FAST]))
    client.recv()
    status, settings = http(sim.http_url("/control/faults?malformed_fraction=1"), "POST")
    assert status == 200 and settings == {**FaultConfig().to_dict(), "malformed_fraction": 1.0}
    time.sleep(0.15)
    client.frames(0.05)
    frames = [text for _, text in client.frames(0.5)]
    assert frames and all(_is_malformed(text) for text in frames)
    assert any("injected malformed fault on btcusdt@depth20@100ms" in r.getMessage() for r in caplog.records)
    assert sim.stats()["faults"]["malformed"] >= len(frames)


def test_crossed_books_by_python_api(sim, connect) -> None:
    client = connect(sim.url([FAST]))
    sim.set_faults(crossed_fraction=1.0)
    client.frames(0.15)
    for _, text in client.frames(0.4):
        data = orjson.loads(text)["data"]
        assert float(data["bids"][0][0]) > float(data["asks"][0][0])


def test_one_sided_books_from_config(connect) -> None:
    with SimulatorThread(SimConfig(faults=FaultConfig(one_sided_fraction=1.0))) as sim:
        frames = connect(sim.url([FAST])).frames(0.5)
        assert frames
        for _, text in frames:
            data = orjson.loads(text)["data"]
            assert (data["bids"] == []) != (data["asks"] == [])


def test_fault_fraction_is_respected(connect) -> None:
    with SimulatorThread(SimConfig(rate=2000, faults=FaultConfig(crossed_fraction=0.25))) as sim:
        frames = [orjson.loads(t)["data"] for _, t in connect(sim.url([FAST])).frames(1.0)]
        crossed = sum(float(d["bids"][0][0]) >= float(d["asks"][0][0]) for d in frames)
        assert len(frames) > 1000 and 0.2 < crossed / len(frames) < 0.3


def test_delay_by_http(sim, connect, http) -> None:
    client = connect(sim.url(combined=False))
    status, settings = http(sim.http_url("/control/faults?delay_ms=400"), "POST")
    assert status == 200 and settings["delay_ms"] == 400.0
    start = time.monotonic()
    client.send({"method": "SUBSCRIBE", "params": [FAST], "id": 1})
    assert client.recv() == '{"result":null,"id":1}'  # replies are not delayed, data frames are
    client.recv()
    assert time.monotonic() - start >= 0.38
    http(sim.http_url("/control/reset"), "POST")
    client.frames(0.5)
    start = time.monotonic()
    client.recv()
    assert time.monotonic() - start < 0.2


def test_bad_control_requests(sim, http) -> None:
    status, body = http(sim.http_url("/control/faults?malformed_fraction=2"), "POST")
    assert status == 400 and body["error"] == "malformed_fraction must be in [0, 1], got 2.0"
    assert http(sim.http_url("/control/faults?malformed=0.5"), "POST")[0] == 400  # not a setting's name
    assert http(sim.http_url("/control/faults?delay_ms=abc"), "POST")[0] == 400
    assert http(sim.http_url("/control/stall"), "POST")[0] == 400
    assert http(sim.http_url("/control/malformed?fraction=1"), "POST")[0] == 404
    assert http(sim.http_url("/control/explode"), "POST")[0] == 404
    with pytest.raises(ConfigError, match="unknown fault setting"):
        sim.set_faults(crossed=0.5)
    assert http(sim.http_url("/control/faults")) == (200, FaultConfig().to_dict())  # nothing changed


def test_each_setting_has_one_name_in_config_python_and_http(http) -> None:
    config = FaultConfig(delay_ms=1.0, stall_every_s=60.0, stall_for_s=2.0)
    with SimulatorThread(SimConfig(faults=config)) as sim:
        assert http(sim.http_url("/control/faults")) == (200, config.to_dict())
        assert list(config.to_dict()) == list(FAULT_SETTINGS)
        changed = {name: 0.5 if name.endswith("_fraction") else 30.0 for name in FAULT_SETTINGS}
        query = "&".join(f"{name}={value}" for name, value in changed.items())
        assert http(sim.http_url(f"/control/faults?{query}"), "POST") == (200, changed)
        sim.reset_faults()
        assert sim.set_faults() == FaultConfig(stall_for_s=30.0).to_dict()


def test_a_replay_refuses_book_faults(tmp_path: Path, http) -> None:
    path = tmp_path / "r.jsonl.gz"
    with RecordingWriter(path, url=None) as writer:
        writer.write(1, '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":[],"asks":[]}}')
    with ReplayThread(ReplayConfig(path)) as replay:
        status, body = http(replay.http_url("/control/faults?crossed_fraction=0.5"), "POST")
        assert status == 400 and "need(s) the simulator" in body["error"]
        assert replay.set_faults(delay_ms=5.0)["delay_ms"] == 5.0


def test_stats_count_frames_per_stream(sim, connect, http) -> None:
    client = connect(sim.url([FAST, "ethusdt@depth5"]))
    received = client.frames(0.55)
    status, stats = http(sim.http_url("/control/stats"))
    assert status == 200 and stats["connections"] == 1
    assert stats["frames"][FAST] >= sum(FAST in t for _, t in received) >= 4
    assert stats["frames_total"] == sum(stats["frames"].values())
