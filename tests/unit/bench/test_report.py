"""The whole-market bench's pure parts: its option lists, rates from counters and from a backlog's drain, weighted
percentiles, per-second series, the run and capacity summaries, the ratios, the printed table and the plot file. No
services, no timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import build_parser, scenarios
from bench.probes import MACHINE
from bench.report import (
    BatchRow,
    bucket_sum,
    drain_rate,
    format_summary,
    latency_series,
    middle_rate,
    parse_list,
    plot,
    rate_between,
    rates,
    ratio,
    ratios,
    weighted_percentiles,
)
from bench.whole_market import (
    CAPACITY,
    CAPACITY_MIDDLE,
    OTHERS,
    Drain,
    Sample,
    Scenario,
    _capacity_phase,
    _env,
    summarise,
    summarise_capacity,
)

pytestmark = pytest.mark.unit


def test_parse_list_keeps_order_and_drops_repeats() -> None:
    assert parse_list("1,2,4") == (1, 2, 4)
    assert parse_list(" 4, 1 ,4,") == (4, 1)


@pytest.mark.parametrize("text", ["", ",", "0", "1,-2", "two"])
def test_parse_list_refuses_what_is_not_positive_integers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_list(text)


def test_rates_between_samples_skip_a_counter_that_went_back() -> None:
    samples = [(0.0, 0.0), (1.0, 100.0), (3.0, 500.0), (4.0, 10.0), (5.0, 60.0)]
    assert rates(samples) == [(1.0, 100.0), (3.0, 200.0), (5.0, 50.0)]


def test_rate_between_uses_the_samples_inside_the_window() -> None:
    samples = [(float(t), 10.0 * t * t) for t in range(10)]
    assert rate_between(samples, 2.0, 4.0) == (160.0 - 40.0) / 2.0
    assert rate_between(samples, 20.0, 30.0) == 0.0


def test_bucket_sum_fills_empty_seconds() -> None:
    points = [(100.2, 1.0), (100.7, 2.0), (103.1, 5.0)]
    assert bucket_sum(points, origin=100.0) == [(0.0, 3.0), (1.0, 0.0), (2.0, 0.0), (3.0, 5.0)]
    assert bucket_sum([], origin=0.0) == []


def test_weighted_percentiles_count_each_value_by_its_weight() -> None:
    values = [(1.0, 98), (5.0, 1), (9.0, 1)]
    assert weighted_percentiles(values, [0.5, 0.99, 1.0]) == [1.0, 5.0, 9.0]
    assert weighted_percentiles([(3.0, 0)], [0.5]) == [None]
    assert weighted_percentiles([], [0.5, 0.99]) == [None, None]


def test_latency_series_takes_each_batch_oldest_frame_per_commit_second() -> None:
    batches = [
        BatchRow("a", 10.2, 10.0, 10.1, 100, seen_at=10.5),
        BatchRow("b", 10.9, 10.3, 10.8, 1, seen_at=11.2),
        BatchRow("c", 12.5, 11.5, 12.0, 10, seen_at=None),
        BatchRow("empty", 12.6, None, None, 0),
    ]
    series = latency_series(batches, origin=10.0)
    assert [round(t, 3) for t, _, _ in series] == [0.0, 2.0]
    assert series[0][1] == pytest.approx(0.2)  # 100 books at 0.2 s outweigh one at 0.6 s
    assert series[0][2] == pytest.approx(0.6)
    assert series[1][1] == pytest.approx(1.0)
    seen = latency_series(batches, origin=10.0, use_seen=True)
    assert [round(t, 3) for t, _, _ in seen] == [0.0, 1.0]  # c was never seen while polling


def test_ratio_is_none_without_a_denominator() -> None:
    assert ratio(12.0, 3.0) == 4.0
    assert ratio(12.0, 0.0) is None


def _drain_batches(t0: float = 100.0) -> list[BatchRow]:
    """A drain: the pool's first batch alone, then 1,000 books every 0.1 s for 9 s, then a last small batch."""
    steady = [BatchRow(f"s{i}", t0 + 1.0 + i / 10, None, None, 1000, seen_at=t0 + 1.2 + i / 10) for i in range(90)]
    return [
        BatchRow("first", t0, None, None, 1000, seen_at=t0 + 0.9),
        *steady,
        BatchRow("last", t0 + 10.0, None, None, 200, seen_at=t0 + 10.2),
    ]


def test_drain_rate_counts_every_batch_from_the_first_start_to_the_end() -> None:
    batches = _drain_batches()
    assert drain_rate(batches, end=110.2) == pytest.approx(91_200 / 10.2)
    assert drain_rate([], end=1.0) == 0.0
    assert drain_rate(batches, end=100.0) == 0.0


def test_middle_rate_leaves_out_the_lead_in_and_the_tail() -> None:
    assert middle_rate(_drain_batches()) == pytest.approx(10_000.0)
    assert middle_rate([BatchRow("one", 1.0, None, None, 10)]) is None
    assert middle_rate([]) is None


def test_ratios_keep_the_capped_in_window_figures_apart_from_the_capacity() -> None:
    r = ratios(
        stored_in_window=14_958.0,
        offered=15_000.0,
        capacity=20_000.0,
        capacity_middle=25_000.0,
        naive=400.0,
        bare_copy=60_000.0,
    )
    assert r["in window vs bare COPY (200-row chunks) (capped by the offered load)"] == pytest.approx(0.2493)
    assert r["cap of in window vs bare COPY: offered / bare COPY"] == pytest.approx(0.25)
    assert r["capacity vs bare COPY (200-row chunks)"] == pytest.approx(1 / 3)
    assert r["capacity (middle 80 %) vs bare COPY (200-row chunks)"] == pytest.approx(25 / 60)
    assert r["capacity vs naive"] == 50.0 and r["in window vs naive (capped by the offered load)"] == 14_958 / 400
    none = ratios(stored_in_window=1.0, offered=1.0, capacity=None, capacity_middle=None, naive=0.0, bare_copy=0.0)
    assert set(none.values()) == {None}


def test_summarise_capacity_times_the_drain_and_its_cpu() -> None:
    t0 = 100.0
    samples = [
        Sample(
            t0 - 2.0 + t / 4,
            offered=-1,
            received=0,
            published=0,
            queued_tasks=0,
            pending_tasks=max(0, 50 - t),
            cpu={"feed-0": 5.0, "workers (node + pool)": 10.0 + 0.45 * t, MACHINE: 20.0 + 0.5 * t},
        )
        for t in range(60)
    ]
    drain = Drain(fill_s=20.0, t_worker_start=t0 - 2.5, t_empty=t0 + 10.5, samples=samples)
    report = summarise_capacity(drain, _drain_batches(t0))
    s = report["summary"]
    assert s["backlog frames stored"] == 91_200 and s["backlog batches"] == 92
    assert s["worker node start -> first commit s"] == pytest.approx(2.5)
    # The last batch was seen at 110.2, before the queue was seen empty at 110.5: the drain ends there.
    assert s["drain s (first commit -> last commit)"] == pytest.approx(10.2)
    assert s[CAPACITY] == pytest.approx(91_200 / 10.2)
    assert s[CAPACITY_MIDDLE] == pytest.approx(10_000.0)
    assert s["queue empty by the end"] == "yes"
    assert s["CHECKPOINT before the drain"] == "-"  # not recorded
    assert (
        summarise_capacity(Drain(20.0, t0, t0 + 10.5, samples, checkpoint=True), [])["summary"][
            "CHECKPOINT before the drain"
        ]
        == "yes"
    )
    cpu = report["cpu_percent_of_one_core"]
    assert cpu["feed-0"] == 0.0  # stopped: nothing used
    assert cpu["workers (node + pool)"] == pytest.approx(180.0)  # 0.45 s every 0.25 s
    assert cpu[OTHERS] == pytest.approx(20.0)
    per_frame = report["cpu_us_per_frame"]
    # from the sample at t0 (t = 8) to the one at 110.25 (t = 49): 41 samples of 0.45 s over every backlog frame
    assert per_frame["workers (node + pool)"] == pytest.approx(1e6 * 41 * 0.45 / 91_200)
    assert OTHERS not in per_frame
    assert report["series"]["queue_tasks"][0] == (0.5, 50.0)


def test_summarise_capacity_without_batches_reports_nothing_stored() -> None:
    drain = Drain(fill_s=5.0, t_worker_start=0.0, t_empty=None, samples=[])
    s = summarise_capacity(drain, [])["summary"]
    assert s["backlog frames stored"] == 0 and s[CAPACITY] == 0.0 and s[CAPACITY_MIDDLE] is None
    assert s["queue empty by the end"] == "no (timed out)"


def _run() -> dict[str, object]:
    sc = Scenario(symbols=100, workers=1, warmup_s=2.0, duration_s=4.0)
    t0 = 1000.0
    samples = [
        Sample(
            t0 + t,
            offered=1000 * t,
            received=990 * t,
            published=990 * t,
            queued_tasks=0,
            pending_tasks=0,
            cpu={"feed-0": 0.1 * t, "workers (node + pool)": 0.5 * t, MACHINE: 1.0 * t},
        )
        for t in range(8)
    ]
    # one batch of 99 books every 0.1 s from t0 to t0 + 8, committed 0.3 s after its oldest frame
    batches = [
        BatchRow(f"b{i}", t0 + i / 10 + 0.3, t0 + i / 10, t0 + i / 10 + 0.09, 99, seen_at=t0 + i / 10 + 0.5)
        for i in range(80)
    ]
    sizes = {
        "snapshots": 7920,
        "bytes_per_snapshot_all_tables": 600.0,
        "bytes_per_snapshot_book_snapshots": 580.0,
        "bytes_per_snapshot_heap_only": 450.0,
        "tables": {"book_snapshots": {"total": 1, "heap": 1, "indexes": 0}},
    }
    return summarise(sc, samples, batches, sizes, t_start=t0, t_stop=t0 + 6.0, drained_at=t0 + 7.5)


def test_summarise_reports_rates_fraction_latency_drain_and_cpu() -> None:
    report = _run()
    s = report["summary"]
    assert isinstance(s, dict)
    assert s["offered frames/s (simulator)"] == pytest.approx(1000.0)
    assert s["received frames/s (feed)"] == pytest.approx(990.0)
    assert s["stored frames/s (committed in window)"] == pytest.approx(990.0)
    assert s["stored / offered in window"] == pytest.approx(0.99)
    assert s["drain s after stop"] == pytest.approx(1.5)
    assert s["latency p50 s (tx start)"] == pytest.approx(0.3)
    assert s["latency max s (seen committed)"] == pytest.approx(0.5)
    assert s["bytes/snapshot (every table, index, TOAST)"] == 600.0
    cpu = report["cpu_percent_of_one_core"]
    assert isinstance(cpu, dict)
    assert cpu["feed-0"] == pytest.approx(10.0)
    assert cpu["workers (node + pool)"] == pytest.approx(50.0)
    assert cpu[OTHERS] == pytest.approx(40.0)  # the machine was busy 100 %, 60 of it ours
    per_frame = report["cpu_us_per_frame"]
    assert isinstance(per_frame, dict)
    assert per_frame["feed-0"] == pytest.approx(1e6 * 0.1 / 990)  # per frame received
    assert per_frame["workers (node + pool)"] == pytest.approx(1e6 * 0.5 / 990)  # per frame stored
    assert OTHERS not in per_frame
    # 0.6 of a core for 990 frames/s: 606 µs per frame, 6.06 cores per 10,000 frames/s
    assert report["cores per 10,000 frames/s (pipeline, from CPU per frame)"] == pytest.approx(6.0 / 0.99)
    assert s["frames received in window, not committed by the end"] == 0


def test_format_summary_prints_every_key_and_nested_mappings() -> None:
    text = format_summary({"stored frames/s": 14_950.4, "p99 s": 0.51234, "cpu": {"feed-0": 12.5}, "x": None})
    assert "stored frames/s  14,950" in text
    assert "0.512" in text
    assert "cpu:" in text and "feed-0" in text
    assert text.splitlines()[-1].rstrip().endswith("-")


def test_the_parser_takes_lists_of_workers_and_shards() -> None:
    args = build_parser().parse_args(["--workers", "1,2,4", "--shards", "1,2", "--duration", "90"])
    runs = scenarios(args)
    assert [(r.workers, r.shards) for r in runs] == [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (4, 2)]
    assert {r.duration_s for r in runs} == {90.0}
    assert runs[0].nominal_offered == 15_000.0


def test_batch_frames_reaches_the_scenario_and_its_label() -> None:
    (run,) = scenarios(build_parser().parse_args(["--batch-frames", "1000"]))
    assert run.batch_frames == 1000
    assert run.label.endswith("batches of 1000")
    (default,) = scenarios(build_parser().parse_args([]))
    assert default.batch_frames is None


def test_quick_is_a_short_small_run() -> None:
    runs = scenarios(build_parser().parse_args(["--quick"]))
    assert [(r.symbols, r.warmup_s, r.duration_s, r.backlog_s) for r in runs] == [(150, 8.0, 10.0, 5.0)]


def test_backlog_seconds_sets_the_capacity_phase() -> None:
    (default,) = scenarios(build_parser().parse_args([]))
    assert default.backlog_s == 60.0
    (skipped,) = scenarios(build_parser().parse_args(["--backlog-seconds", "0"]))
    assert skipped.backlog_s == 0.0


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "out" / "plot.png"
    plot(path, [_run(), _run()])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_children_get_only_the_scenario_settings(tmp_path: Path) -> None:
    sc = Scenario(symbols=10, batch_frames=1000)
    base = {"BOOKFEED_SYMBOLS": "BTCUSDT", "BOOKFEED_SHARD": "0/2", "PATH": "/bin"}
    env = _env(base, db_url="postgresql://db", redis_url="redis://r/13", prefix="p:", workdir=tmp_path, sc=sc, port=9)
    assert env["BOOKFEED_SYMBOLS"] == "all" and "BOOKFEED_SHARD" not in env and env["PATH"] == "/bin"
    assert env["BOOKFEED_BATCH_MAX_FRAMES"] == "1000"
    assert env["BOOKFEED_URL"] == "ws://127.0.0.1:9" and env["BOOKFEED_REST_URL"] == "http://127.0.0.1:9"
    assert env["BOOKFEED_BROKER_KEY_PREFIX"] == "p:" and env["BOOKFEED_SPEED"] == "100ms"
    assert "BOOKFEED_BATCH_MAX_FRAMES" not in _env(
        base, db_url="d", redis_url="r", prefix="p:", workdir=tmp_path, sc=Scenario(), port=9
    )


class _Harness:
    """Records starts and stops in `log`, shared with the fake CHECKPOINT; no child ever exits."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def start(self, name: str, argv: object, **kwargs: object) -> None:
        self.log.append(f"start {name}")

    def stop(self, name: str, **kwargs: object) -> None:
        self.log.append(f"stop {name}")

    def exited(self) -> None:
        return None


@pytest.mark.parametrize("permitted", [True, False])
def test_the_capacity_drain_starts_right_after_a_checkpoint(permitted: bool) -> None:
    log: list[str] = []

    def checkpoint() -> bool:
        log.append("CHECKPOINT")
        return permitted

    idle = Sample(0.0, offered=-1, received=0, published=0, queued_tasks=0, pending_tasks=0, cpu={})
    drain = _capacity_phase(
        Scenario(symbols=10, backlog_s=0.0),
        _Harness(log),  # type: ignore[arg-type]
        tag="t",
        port=9,
        sample=lambda: idle,
        poll=lambda: None,
        out=lambda line: None,
        checkpoint=checkpoint,
    )
    assert log[-4:] == ["stop feed-0", "stop simulator", "CHECKPOINT", "start worker"]
    assert drain.checkpoint is permitted and drain.t_empty is not None
