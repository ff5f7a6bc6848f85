"""Processes started together: each without waiting, then every one waited for, so their start-ups overlap; and
stopped together, so their shutdowns do."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Sequence

from stack.harness import Child, Harness, NotReadyError, Ready, wait_until

READY_TIMEOUT_S = 60.0  # each process, from its own start (as stack.harness.start_process gives it)
STOP_TIMEOUT_S = 30.0  # SIGTERM, then SIGKILL to its group (as stack.harness.stop_process)


def wait_ready(started: Sequence[tuple[Child, Ready, float]]) -> None:
    """Wait until each (child, ready, started at time.monotonic()) is ready; NotReadyError with the log's tail of the
    first that exits or is not ready READY_TIMEOUT_S seconds after its start."""
    for child, ready, at in started:
        left = max(0.0, at + READY_TIMEOUT_S - time.monotonic())
        try:
            wait_until(lambda c=child, r=ready: r(c), timeout=left, what=f"{child.name} ready", alive=child.running)
        except NotReadyError as exc:
            raise NotReadyError(f"{exc}; its log ({child.log}) ends with:\n{child.tail()}") from None


def stop_together(harness: Harness, first: Sequence[str] = ()) -> None:
    """Stop the children named in `first`, one after the other; then SIGTERM to all the others at once, SIGKILL to
    the group of any still running STOP_TIMEOUT_S seconds later (and to every group's stragglers)."""
    for name in first:
        harness.stop(name, timeout=STOP_TIMEOUT_S)
    rest = list(harness.children)
    for name in rest:
        with contextlib.suppress(ProcessLookupError):
            if harness.children[name].running():
                harness.children[name].popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name in rest:
        try:
            harness.children[name].popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            harness.stop(name, sig=signal.SIGKILL)
        else:
            harness.stop(name)  # exited: its group's stragglers only
