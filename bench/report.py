"""Pure reporting for the whole-market bench: rates from cumulative counters and from committed batches (a backlog's
drain), weighted percentiles, per-second series, the summary table and the ratios. No I/O here except `write_json`
and `plot` (matplotlib, Agg)."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "BatchRow",
    "bucket_sum",
    "drain_rate",
    "format_copy_limit",
    "format_ratio_range",
    "format_summary",
    "latency_series",
    "middle_rate",
    "parse_list",
    "plot",
    "rate_between",
    "rates",
    "ratio",
    "ratio_range",
    "ratios",
    "spread",
    "weighted_percentiles",
    "write_json",
]


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One row of ingest_batches as the bench reads it: unix seconds. `seen_at` is when the bench first saw the
    row committed (None: only in the final read); `stored_at` is the transaction's start (PostgreSQL's now())."""

    batch_id: str
    stored_at: float
    min_received_at: float | None
    max_received_at: float | None
    n_books: int
    seen_at: float | None = None


def parse_list(text: str) -> tuple[int, ...]:
    """`1,2,4` -> (1, 2, 4): positive integers, in the order given, without repeats."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        value = int(part)
        if value <= 0:
            raise ValueError(f"expected positive integers, got {part!r}")
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError("expected at least one positive integer")
    return tuple(out)


def rates(samples: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(t, per-second rate) between consecutive (t, cumulative count) samples, stamped at the interval's end.
    A counter that goes back (a process restarted) gives no rate for that interval."""
    out = []
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t1 > t0 and c1 >= c0:
            out.append((t1, (c1 - c0) / (t1 - t0)))
    return out


def rate_between(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Average rate of a cumulative counter over [start, end], from the samples nearest inside those bounds."""
    inside = [(t, c) for t, c in samples if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return 0.0
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    return (c1 - c0) / (t1 - t0)


def bucket_sum(
    points: Iterable[tuple[float, float]], *, origin: float, width: float = 1.0
) -> list[tuple[float, float]]:
    """Sum of values per `width`-second bucket since `origin`: [(bucket start relative to origin, sum)], every
    bucket from the first to the last present (empty ones as 0)."""
    sums: dict[int, float] = {}
    for t, v in points:
        k = math.floor((t - origin) / width)
        sums[k] = sums.get(k, 0.0) + v
    if not sums:
        return []
    return [(k * width, sums.get(k, 0.0)) for k in range(min(sums), max(sums) + 1)]


def weighted_percentiles(values: Sequence[tuple[float, int]], quantiles: Sequence[float]) -> list[float | None]:
    """Percentiles of values each counted `weight` times (the lowest value whose cumulative weight reaches q of
    the total). None for every quantile when there is no weight."""
    pairs = sorted((v, w) for v, w in values if w > 0)
    total = sum(w for _, w in pairs)
    if total == 0:
        return [None for _ in quantiles]
    out: list[float | None] = []
    for q in quantiles:
        need = q * total
        acc = 0
        chosen = pairs[-1][0]
        for v, w in pairs:
            acc += w
            if acc >= need:
                chosen = v
                break
        out.append(chosen)
    return out


def latency_series(
    batches: Sequence[BatchRow], *, origin: float, use_seen: bool = False, width: float = 1.0
) -> list[tuple[float, float, float]]:
    """Per `width`-second bucket of commit time since `origin`: (bucket start, p50, max) of the receive->committed
    latency of each batch's oldest frame, weighted by its books. `use_seen`: the time the bench saw the commit."""
    buckets: dict[int, list[tuple[float, int]]] = {}
    for b in batches:
        at = b.seen_at if use_seen else b.stored_at
        if at is None or b.min_received_at is None or b.n_books == 0:
            continue
        buckets.setdefault(math.floor((at - origin) / width), []).append((at - b.min_received_at, b.n_books))
    out = []
    for k in sorted(buckets):
        p50 = weighted_percentiles(buckets[k], [0.5])[0]
        out.append((k * width, p50 if p50 is not None else 0.0, max(v for v, _ in buckets[k])))
    return out


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def spread(values: Sequence[float]) -> dict[str, float]:
    """The median, min and max of a measurement's rounds (zeros when there are none)."""
    if not values:
        return {"median": 0.0, "min": 0.0, "max": 0.0}
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def ratio_range(numerator: float | None, low: float, high: float) -> tuple[float, float] | None:
    """numerator / high .. numerator / low: a ratio over the range of a denominator measured in rounds (lowest
    first). None without a numerator or with a range that does not stay above 0."""
    if numerator is None or low <= 0 or high < low:
        return None
    return numerator / high, numerator / low


def format_copy_limit(chunk: int | str, result: Mapping[str, Any]) -> str:
    """One line for a bare COPY result of `bench.copy_limit.copy_limit`: the median with the rounds' range."""
    rounds = result.get("rounds_rows_per_s", [])
    how = "each after a CHECKPOINT" if result.get("checkpoints") else "CHECKPOINT not permitted, none ran"
    return (
        f"  {chunk:>5} rows per COPY: {result['rows_per_s']:,.0f} rows/s, median of {len(rounds)} round(s) "
        f"(range {result.get('rows_per_s_min', 0.0):,.0f}-{result.get('rows_per_s_max', 0.0):,.0f}; {how})"
    )


def format_ratio_range(label: str, bounds: tuple[float, float] | None, *, indent: str = "    ") -> str:
    """`label  low .. high` for a ratio_range (`-` when there is none)."""
    text = "-" if bounds is None else f"{_fmt(bounds[0])} .. {_fmt(bounds[1])}"
    return f"{indent}{label}  {text}"


def drain_rate(batches: Sequence[BatchRow], *, end: float) -> float:
    """Frames/s of `batches` from the first one's transaction start to `end` (when the queue was seen empty): the
    whole drain, the pool's first batches and the last ones finishing alone included. 0.0 without batches or time."""
    if not batches:
        return 0.0
    start = min(b.stored_at for b in batches)
    return sum(b.n_books for b in batches) / (end - start) if end > start else 0.0


def middle_rate(batches: Sequence[BatchRow], *, share: float = 0.8) -> float | None:
    """Frames/s over the middle `share` of a drain's books, by transaction start: from the start of the batch that
    takes the books started past (1 - share) / 2 of the total to the start of the one that takes them to (1 + share)
    / 2, counting the books of the batches started in between (the last one's are its own span's). None when that
    span has no length."""
    order = sorted(batches, key=lambda b: b.stored_at)
    total = sum(b.n_books for b in order)
    low, high = total * (1.0 - share) / 2.0, total * (1.0 + share) / 2.0
    acc = 0
    t_low: float | None = None
    t_high: float | None = None
    for b in order:
        acc += b.n_books
        if t_low is None and acc > low:
            t_low = b.stored_at
        if acc >= high:
            t_high = b.stored_at
            break
    if total == 0 or t_low is None or t_high is None or t_high <= t_low:
        return None
    return sum(b.n_books for b in order if t_low <= b.stored_at < t_high) / (t_high - t_low)


def ratios(
    *,
    stored_in_window: float,
    offered: float,
    capacity: float | None,
    capacity_middle: float | None,
    naive: float,
    bare_copy: float,
) -> dict[str, float | None]:
    """The run's figures over the naive design's rows/s and the bare COPY limit's (200-row chunks). The in-window
    ratios can never pass the offered load's (stored <= offered), which is given too; the capacity ratios use the
    backlog's drain, which the offered load does not bound. None where a figure is missing."""
    return {
        "in window vs naive (capped by the offered load)": ratio(stored_in_window, naive),
        "in window vs bare COPY (200-row chunks) (capped by the offered load)": ratio(stored_in_window, bare_copy),
        "cap of in window vs bare COPY: offered / bare COPY": ratio(offered, bare_copy),
        "capacity vs naive": None if capacity is None else ratio(capacity, naive),
        "capacity vs bare COPY (200-row chunks)": None if capacity is None else ratio(capacity, bare_copy),
        "capacity (middle 80 %) vs bare COPY (200-row chunks)": (
            None if capacity_middle is None else ratio(capacity_middle, bare_copy)
        ),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_summary(summary: Mapping[str, Any], *, indent: str = "  ") -> str:
    """One `key  value` line per entry; nested mappings indented under their key."""
    lines: list[str] = []
    width = max((len(k) for k in summary), default=0)
    for key, value in summary.items():
        if isinstance(value, Mapping):
            lines.append(f"{indent}{key}:")
            lines.append(format_summary(value, indent=indent + "  "))
        else:
            lines.append(f"{indent}{key:<{width}}  {_fmt(value)}")
    return "\n".join(lines)


def write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def plot(path: Path, runs: Sequence[Mapping[str, Any]]) -> None:
    """One column per run: offered/received/stored frames/s, queue depth, latency (p50 and max per second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(runs), figsize=(6 * len(runs), 10), squeeze=False, sharex="col")
    for col, run in enumerate(runs):
        series = run["series"]
        ax = axes[0][col]
        for name in ("offered", "received", "stored"):
            pts = series[name]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1)
        ax.axvspan(*run["measure_window_s"], color="grey", alpha=0.1, label="measured")
        ax.set_title(run["label"], fontsize=9)
        ax.set_ylabel("frames/s")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        pts = series["queue_frames"]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label="frames received, not stored", linewidth=1)
        ax.set_ylabel("queue (frames)")
        ax.legend(fontsize=8)
        ax = axes[2][col]
        pts = series["latency"]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label="p50", linewidth=1)
        ax.plot([p[0] for p in pts], [p[2] for p in pts], label="max", linewidth=1)
        ax.set_ylabel("receive -> committed (s)")
        ax.set_xlabel("seconds since start")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
