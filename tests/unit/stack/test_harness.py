"""The process harness: start in a new session, ready on a log line of this run, stop the whole group, command lines."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from models.vocabulary import QUEUES
from stack.harness import (
    NotReadyError,
    feed_command,
    log_line,
    simulate_command,
    start_process,
    stop_process,
    wait_until,
    worker_command,
)

pytestmark = pytest.mark.unit

# A parent that ignores SIGTERM and leaves a grandchild (which ignores it too) in its process group.
_STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('grandchild', flush=True); " \
    "time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", code])
print("pid", child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): count it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_stop_kills_the_whole_group_when_sigterm_is_ignored(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    child = start_process([sys.executable, "-c", _STUBBORN], log=log, ready=log_line("grandchild"), timeout=30)
    assert os.getpgid(child.pid) == child.pid  # a session (and group) of its own
    wait_until(lambda: b"pid " in child.output(), timeout=10, what="pid line")
    grandchild = int(child.output().split(b"pid ")[1].split()[0])
    assert stop_process(child.popen, timeout=0.5) == -signal.SIGKILL
    wait_until(lambda: not _alive(grandchild), timeout=5, what="grandchild gone")


def test_a_process_that_exits_before_it_is_ready_fails_fast_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('no luck'); raise SystemExit(3)"]
    with pytest.raises(NotReadyError, match="no luck"):
        start_process(argv, log=tmp_path / "x.log", ready=log_line("never"), timeout=30)


def test_readiness_is_read_from_this_run_only(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("an earlier run said: ready.\n")
    argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    with pytest.raises(NotReadyError, match="not within"):
        start_process(argv, log=log, ready=log_line("ready."), timeout=0.5)


def test_command_lines() -> None:
    worker = worker_command(concurrency=3, name="w1")
    assert worker[worker.index("-Q") + 1] == ",".join(QUEUES)
    assert worker[worker.index("-c") + 1] == "3" and "w1@%h" in worker
    assert feed_command()[-3:] == ["-m", "stack.cli", "feed"]
    sim = simulate_command(port=9, symbols=("BTCUSDT", "ETHUSDT"), rate=5.0, faults={"malformed_fraction": 0.002})
    assert sim[sim.index("simulate") :] == [
        *("simulate", "--port", "9", "--symbols", "BTCUSDT,ETHUSDT", "--rate", "5.0"),
        *("--malformed-fraction", "0.002"),
    ]


def test_wait_until_polls_until_the_condition_holds() -> None:
    calls = iter([False, False, True])
    wait_until(lambda: next(calls), timeout=5, what="third poll", interval=0.01)
    with pytest.raises(NotReadyError, match="exited"):
        wait_until(lambda: False, timeout=5, what="x", interval=0.01, alive=lambda: False)
