"""The command lines of the Celery processes, as `bookfeed up`, `make chaos`, the benches and the tests start them.
Lists of arguments only: starting and stopping them is stack.harness's job."""

from __future__ import annotations

import sys
from pathlib import Path

from models.vocabulary import QUEUES

__all__ = ["beat_command", "flower_command", "worker_command"]

_CELERY = (sys.executable, "-m", "celery", "-A", "workers")


def worker_command(*, concurrency: int, name: str, quiet: bool = False) -> list[str]:
    """`celery -A workers worker` on every queue (ingest and metrics) with `concurrency` pool processes, as node
    `name@host`. `quiet` leaves out gossip and mingle, which a node alone on its broker does not need (tests)."""
    args = [*_CELERY, "worker", "-Q", ",".join(QUEUES), "-c", str(concurrency), "-n", f"{name}@%h"]
    args += ["--loglevel", "INFO"]
    if quiet:
        args += ["--without-gossip", "--without-mingle"]
    return args


def beat_command(schedule: Path) -> list[str]:
    """`celery -A workers beat` with its schedule file at `schedule`."""
    return [*_CELERY, "beat", "--schedule", str(schedule), "--loglevel", "INFO"]


def flower_command(port: int) -> list[str]:
    """`celery -A workers flower` on loopback only. Credentials go in the environment (FLOWER_BASIC_AUTH), never on
    the command line, which every local user can read in `ps`."""
    return [*_CELERY, "flower", f"--port={port}", "--address=127.0.0.1"]
