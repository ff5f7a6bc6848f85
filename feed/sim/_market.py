"""Synthetic order books: one random-walk book per symbol, rendered as Binance partial-depth payloads.

Pure: no I/O, no clocks. Speed matters (30k frames/s): levels are kept pre-rendered as bytes and each step
re-renders only the one to three levels it touches; payloads are cached per depth until the next step.
"""

from __future__ import annotations

from feed.sim._symbols import E8, SymbolSpec, derive_rng

_QTY_POOL_SIZE = 512
_MAX_SPREAD_TICKS = 6


def _render_amount(value_e8: int) -> bytes:
    return b"%d.%08d" % divmod(value_e8, E8)


def render_payload(last_update_id: int, bids: list[bytes], asks: list[bytes]) -> bytes:
    """Join rendered levels into ``{"lastUpdateId":..,"bids":[..],"asks":[..]}`` (Binance's compact layout)."""
    return b'{"lastUpdateId":%d,"bids":[%b],"asks":[%b]}' % (last_update_id, b",".join(bids), b",".join(asks))


class SymbolBook:
    """One symbol's synthetic book; book ``n`` (after ``n`` calls to ``advance``) depends only on (seed, symbol, n).

    Bid prices (in ticks) are descending, ask prices ascending, best bid < best ask, between 1 and 20 levels
    per side; ``last_update_id`` grows by irregular steps of 1 to 50.
    """

    __slots__ = ("_ask_lv", "_ask_px", "_bid_lv", "_bid_px", "_cache", "_qty", "_rng", "last_update_id", "n", "spec")

    def __init__(self, spec: SymbolSpec, *, seed: int) -> None:
        self.spec = spec
        self._rng = derive_rng(seed, "book", spec.symbol)
        self._qty = self._qty_pool()
        self.n = 0
        self.last_update_id = 1_000_000_000 + int(self._rng.random() * 9_000_000_000)
        mid = spec.start_mid_e8 // spec.tick_e8
        self._bid_px: list[int] = [mid]
        self._ask_px: list[int] = [mid + 1 + int(self._rng.random() ** 3 * 3)]
        self._bid_lv = [self.render_level(mid, self._pick_qty())]
        self._ask_lv = [self.render_level(self._ask_px[0], self._pick_qty())]
        self._cache: dict[int, bytes] = {}
        self._refill(self._bid_px, self._bid_lv, -1)
        self._refill(self._ask_px, self._ask_lv, 1)

    def _qty_pool(self) -> list[bytes]:
        """Log-normal notionals around 2000 quote units, rounded to the step (never zero)."""
        spec, rng = self.spec, self._rng
        price = spec.start_mid_e8 / E8
        pool = []
        for _ in range(_QTY_POOL_SIZE):
            notional = 2000.0 * rng.lognormvariate(0.0, 1.6)
            units = max(1, round(notional / price / (spec.step_e8 / E8)))
            pool.append(_render_amount(units * spec.step_e8))
        return pool

    def _pick_qty(self) -> bytes:
        return self._qty[int(self._rng.random() * _QTY_POOL_SIZE)]

    def render_level(self, price_ticks: int, qty: bytes) -> bytes:
        """Render one level as ``["<price>","<qty>"]`` with 8 decimals."""
        return b'["%b","%b"]' % (_render_amount(price_ticks * self.spec.tick_e8), qty)

    def _gap(self) -> int:
        return 1 + int(self._rng.random() ** 3 * 4)

    def _refill(self, px: list[int], lv: list[bytes], direction: int) -> None:
        """Append deeper levels up to the target depth; bids stop at one tick above zero."""
        while len(px) < self.spec.levels:
            price = px[-1] + direction * self._gap()
            if price < 1:
                return
            px.append(price)
            lv.append(self.render_level(price, self._pick_qty()))

    def advance(self) -> None:
        """Apply one to three random changes (qty update, cancel, insert, trade, improve) and bump the id."""
        rng = self._rng
        for _ in range(1 + int(rng.random() ** 2 * 3)):
            if rng.random() < 0.5:
                self._change(self._bid_px, self._bid_lv, -1, rng.random())
            else:
                self._change(self._ask_px, self._ask_lv, 1, rng.random())
        self.last_update_id += 1 + int(rng.random() ** 3 * 50)
        self.n += 1
        self._cache.clear()

    def _change(self, px: list[int], lv: list[bytes], direction: int, u: float) -> None:
        rng = self._rng
        spread = self._ask_px[0] - self._bid_px[0]
        if spread > _MAX_SPREAD_TICKS or u >= 0.9:
            if spread > 1:  # improve: a new best level inside the spread moves the mid towards the other side
                price = px[0] - direction * (1 + int(rng.random() * (spread - 1)))
                px.insert(0, price)
                lv.insert(0, self.render_level(price, self._pick_qty()))
        elif u < 0.55:
            i = int(rng.random() ** 2 * len(px))
            lv[i] = self.render_level(px[i], self._pick_qty())
        elif u < 0.7 and len(px) > 1:  # cancel a level anywhere
            i = int(rng.random() * len(px))
            del px[i], lv[i]
        elif u < 0.8:  # insert inside a gap of more than one tick
            i = int(rng.random() * len(px))
            if i + 1 < len(px) and abs(px[i] - px[i + 1]) > 1:
                price = px[i] + direction
                px.insert(i + 1, price)
                lv.insert(i + 1, self.render_level(price, self._pick_qty()))
        elif len(px) > 1:  # trade: the best level is consumed and the book moves away
            del px[0], lv[0]
        del px[self.spec.levels :], lv[self.spec.levels :]
        self._refill(px, lv, direction)

    @property
    def best_bid_ticks(self) -> int:
        """Best bid price in ticks."""
        return self._bid_px[0]

    @property
    def best_ask_ticks(self) -> int:
        """Best ask price in ticks."""
        return self._ask_px[0]

    def top_levels(self, depth: int) -> tuple[list[bytes], list[bytes]]:
        """Return the rendered top ``depth`` bid and ask levels (copies, safe to modify)."""
        return self._bid_lv[:depth], self._ask_lv[:depth]

    def payload(self, depth: int) -> bytes:
        """Return the current book as a partial-depth payload with at most ``depth`` levels per side."""
        cached = self._cache.get(depth)
        if cached is None:
            cached = render_payload(self.last_update_id, self._bid_lv[:depth], self._ask_lv[:depth])
            self._cache[depth] = cached
        return cached


def book_at(spec: SymbolSpec, *, seed: int, n: int) -> SymbolBook:
    """Return the ``n``-th book of ``spec.symbol`` for ``seed`` (steps a fresh book ``n`` times)."""
    book = SymbolBook(spec, seed=seed)
    for _ in range(n):
        book.advance()
    return book
