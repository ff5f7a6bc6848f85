"""The check the end-to-end tests share: every stored book's metrics recomputed exactly from its stored levels.
(Averages and ledger accounting are checked with workers.audit.)"""

from __future__ import annotations

from decimal import Decimal, localcontext

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
