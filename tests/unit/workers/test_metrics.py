"""workers.metrics' signal handlers: what each task result counts (the values live in this process; a worker node
sums its pool's files, see tests/e2e/test_operations.py), and the first frame's receive time of a batch."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from models.vocabulary import AVERAGES_TASK, INGEST_TASK
from workers import metrics

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def node() -> Iterator[metrics._Metrics]:
    m = metrics._Metrics()  # registered once in this process's default registry
    yield m
    for c in vars(m).values():
        REGISTRY.unregister(c)


@pytest.fixture
def counting(node: metrics._Metrics, monkeypatch: pytest.MonkeyPatch) -> metrics._Metrics:
    monkeypatch.setattr(metrics._node, "metrics", node)
    return node


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _task(name: str, task_id: str = "t1") -> SimpleNamespace:
    return SimpleNamespace(name=name, request=SimpleNamespace(id=task_id))


def test_a_stored_batch_counts_books_rejections_and_times(counting: metrics._Metrics) -> None:
    before = _value("bookfeed_frames_stored_total"), _value("bookfeed_receive_to_commit_seconds_count")
    metrics._on_task_prerun(sender=_task(INGEST_TASK), task_id="t1", args=({"frames": [[1_000, "x"]]},))
    result = {"batch_id": "b", "n_books": 7, "n_rejected": 2, "duplicate": False, "duration_ms": 12.5}
    metrics._on_task_success(sender=_task(INGEST_TASK), result=result)
    assert _value("bookfeed_frames_stored_total") == before[0] + 7
    assert _value("bookfeed_frames_rejected_total", reason="invalid") >= 2
    assert _value("bookfeed_receive_to_commit_seconds_count") == before[1] + 1
    assert _value("bookfeed_receive_to_commit_seconds_sum") > 1e9  # received at 1 µs after the epoch
    assert metrics._node.started_ns == {}


def test_a_batch_given_up_and_a_retry_are_counted(counting: metrics._Metrics) -> None:
    gave_up = _value("bookfeed_ingest_give_ups_total")
    metrics._on_task_success(sender=_task(INGEST_TASK), result={"rejected_batch": 30})
    assert _value("bookfeed_ingest_give_ups_total") == gave_up + 1
    assert _value("bookfeed_frames_rejected_total", reason="given_up") >= 30
    retries = _value("bookfeed_task_retries_total", task=INGEST_TASK)
    metrics._on_task_retry(sender=_task(INGEST_TASK), request=SimpleNamespace(id="t2"))
    assert _value("bookfeed_task_retries_total", task=INGEST_TASK) == retries + 1


def test_averages_runs_set_the_newest_window(counting: metrics._Metrics) -> None:
    metrics._on_task_success(sender=_task(AVERAGES_TASK), result={"window_s": 30, "to_s": 1_700_000_010})
    assert _value("bookfeed_averages_computed_to_seconds", window_seconds="30") == 1_700_000_010


def test_nothing_is_counted_outside_a_worker_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics._node, "metrics", None)
    metrics._on_task_success(sender=_task(INGEST_TASK), result={"n_books": 1})  # no error, nothing to count


def test_first_frame_of_a_whole_batch_message() -> None:
    assert metrics._first_received_ns({"frames": [[5, "a"], [3, "b"]]}) == 5
    assert metrics._first_received_ns({"frames": []}) is None
    assert metrics._first_received_ns("junk") is None
