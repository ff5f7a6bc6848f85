"""Assertions shared by the end-to-end tests: exact metrics, averages, ledger accounting."""

from __future__ import annotations

from decimal import Decimal, localcontext
from pathlib import Path

from sqlalchemy import Engine, text


def assert_metrics_exact(engine: Engine) -> int:
    """Recompute every stored book's metrics from its levels with 80-digit decimals; returns books checked."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT o.bid_prices::text[], o.bid_quantities::text[], o.ask_prices::text[], "
                "o.ask_quantities::text[], "
                "m.best_bid, m.best_ask, m.spread, m.bid_vwap, m.ask_vwap, m.price, m.crossed "
                "FROM order_books o JOIN book_metrics m USING (exchange, symbol, received_at, last_update_id, depth)"
            )
        ).all()
    with localcontext() as ctx:
        ctx.prec = 80
        for bp, bq, ap, aq, best_bid, best_ask, spread, bid_vwap, ask_vwap, price, crossed in rows:
            assert best_bid == (Decimal(bp[0]) if bp else None)
            assert best_ask == (Decimal(ap[0]) if ap else None)
            if bp and ap:
                assert spread == Decimal(ap[0]) - Decimal(bp[0])
                assert crossed == (Decimal(bp[0]) >= Decimal(ap[0]))
                bv = sum(Decimal(p) * Decimal(q) for p, q in zip(bp, bq, strict=True)) / sum(map(Decimal, bq))
                av = sum(Decimal(p) * Decimal(q) for p, q in zip(ap, aq, strict=True)) / sum(map(Decimal, aq))
                for got, exact in ((bid_vwap, bv), (ask_vwap, av), (price, (bv + av) / 2)):
                    assert abs(Decimal(got) - exact) <= exact * Decimal("1e-12"), (got, exact)
            else:
                assert spread is None and price is None
    return len(rows)


def averages_mismatches(engine: Engine, *, closed_before_s: float) -> list[tuple[object, ...]]:
    """Windows (30 s and 60 s) ending by `closed_before_s` whose stored row is missing, extra or wrong."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    """
            WITH expected AS (
              SELECT exchange, symbol, w AS window_seconds,
                     date_bin(make_interval(secs => w), received_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS ws,
                     avg(price) AS avg_price, count(*) AS samples
              FROM book_snapshots CROSS JOIN (VALUES (30), (60)) v(w)
              WHERE price IS NOT NULL AND NOT crossed
              GROUP BY 1, 2, 3, 4)
            SELECT e.symbol, e.window_seconds, e.ws, e.samples, e.avg_price, a.symbol, a.window_seconds,
                   a.window_start, a.samples, a.avg_price
            FROM (SELECT * FROM expected
                  WHERE ws + make_interval(secs => window_seconds) <= to_timestamp(:t)) e
            FULL JOIN (SELECT * FROM price_averages WHERE window_end <= to_timestamp(:t)) a
              ON (a.exchange, a.symbol, a.window_seconds, a.window_start)
               = (e.exchange, e.symbol, e.window_seconds, e.ws)
            WHERE e.ws IS NULL OR a.window_start IS NULL OR a.samples <> e.samples
               OR abs(a.avg_price - e.avg_price) > 1e-9 * abs(e.avg_price)
            """
                ),
                {"t": closed_before_s},
            )
        ]


def read_ledger(path: Path) -> list[tuple[int, str, int | None]]:
    out = []
    for line in path.read_text().splitlines():
        ns, stream, luid = line.split("\t")
        out.append((int(ns), stream, int(luid) if luid else None))
    return out


def unaccounted_frames(engine: Engine, ledger: list[tuple[int, str, int | None]]) -> list[tuple[int, str, int | None]]:
    """Ledger entries (frames the feed forwarded) that are neither a stored book nor a rejected frame."""
    with engine.connect() as conn:
        books = {
            (s, luid, us)
            for s, luid, us in conn.execute(
                text(
                    "SELECT lower(symbol), last_update_id, (extract(epoch FROM received_at) * 1000000)::bigint "
                    "FROM book_snapshots"
                )
            )
        }
        rejected = {
            us
            for (us,) in conn.execute(
                text("SELECT (extract(epoch FROM received_at) * 1000000)::bigint FROM rejected_frames")
            )
        }
    missing = []
    for ns, stream, luid in ledger:
        us = ns // 1000
        if (stream.split("@")[0], luid, us) in books or us in rejected:
            continue
        missing.append((ns, stream, luid))
    return missing


def duplicated_books(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) - count(DISTINCT (exchange, symbol, depth, last_update_id)) FROM book_snapshots")
            ).scalar_one()
        )
