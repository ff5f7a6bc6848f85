"""`simulate` and `replay` as real processes: start-up line, serving, clean exit on SIGTERM / SIGINT."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from feed.sim import record

pytestmark = pytest.mark.integration

# Stand-in for feed/cli.py: an argparse parser with only the sim subcommands.
WRAPPER = (
    "import argparse, sys\n"
    "from feed.sim.commands import register\n"
    "parser = argparse.ArgumentParser(prog='bookfeed')\n"
    "register(parser.add_subparsers(required=True))\n"
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
