"""The commands end to end, with their exit codes: 0 done (SIGTERM / SIGINT, or a finished recording), 2 bad usage or
configuration, 1 runtime failure; each failure is one line on stderr."""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator import read_recording, record, register_commands

pytestmark = pytest.mark.integration

# Stand-in for feed/cli.py: an argparse parser with only the sim subcommands.
WRAPPER = (
    "import argparse, sys\n"
    "from simulator import register_commands\n"
    "parser = argparse.ArgumentParser(prog='bookfeed')\n"
    "register_commands(parser.add_subparsers(required=True))\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


@pytest.fixture
def run() -> Iterator:
    procs: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None
        return proc, proc.stdout.readline().strip()

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _port(line: str, kind: str) -> int:
    match = re.fullmatch(rf"{kind} listening on ws://127\.0\.0\.1:(\d+) \(symbols: (.*)\)", line)
    assert match, line
    return int(match.group(1))


def test_simulate_process(run, connect) -> None:
    proc, line = run("simulate", "--port", "0", "--symbols", "btcusdt,solusdt", "--seed", "9")
    port = _port(line, "simulator")
    assert line.endswith("(symbols: BTCUSDT,SOLUSDT)")
    text = connect(f"ws://127.0.0.1:{port}/stream?streams=solusdt@depth10@100ms").recv()
    assert text.startswith('{"stream":"solusdt@depth10@100ms","data":')
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_replay_process(run, connect, sim, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    record(sim.url(["bnbusdt@depth5@100ms"], combined=False), path, max_frames=3)
    proc, line = run("replay", str(path), "--port", "0", "--fast")
    port = _port(line, "replayer")
    client = connect(f"ws://127.0.0.1:{port}/ws/bnbusdt@depth5@100ms")
    assert [client.recv() for _ in range(3)] and client.frames(0.2) == []
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_bad_flag_is_one_line(run) -> None:
    proc, _ = run("simulate", "--crossed-fraction", "3")
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].endswith("argument --crossed-fraction: must be in [0, 1], got 3")


def test_busy_port_exits_1_with_one_line(run) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, line = run("simulate", "--port", str(port))
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 1 and line == ""
    (message,) = err.strip().splitlines()
    assert message.startswith(f"bookfeed simulate: cannot listen on 127.0.0.1:{port}: ")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bookfeed")
    register_commands(parser.add_subparsers(required=True))
    return parser.parse_args(argv)


def test_record_command_exits_0(sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.jsonl.gz"
    args = _parse(["record", "--url", sim.url(["btcusdt@depth5@100ms"]), "--out", str(out), "--max-frames", "5"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == f"recorded 5 frames to {out}"
    assert len(read_recording(out).frames) == 5


def test_unreachable_source_exits_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        url = f"ws://127.0.0.1:{closed.getsockname()[1]}/ws"
        args = _parse(["record", "--url", url, "--out", str(tmp_path / "x.jsonl.gz")])
        assert args.func(args) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"bookfeed record: cannot record {url}: ")
