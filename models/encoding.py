"""The compact, exact text encoding of a book's levels that book_snapshots stores, and its reference decoder.
Pure: no I/O. The SQL decoder (bookfeed_levels, in the compact_book_levels migration) must agree with `decode_column`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import repeat

__all__ = ["EncodedLevels", "decimal_text", "decode_column", "encode_levels", "encode_uniform"]


# The format. Binance writes every value of a book with the same number of decimals (8), so a book is stored as
# scaled integers: one `scale` per book, and per column (bid prices, bid quantities, ask prices, ask quantities)
# the comma-separated integers "k,v1,v2,..." with value_i = v_i * 10^(k - scale), written with `scale` decimals.
# k takes out the trailing zeros all values of the column share (a tick of 0.01 at 8 decimals: k = 6). Prices are
# delta-coded: v1 is the best price and v_i (i > 1) the distance of level i from it, positive in the book's order
# (below the best bid, above the best ask), so a tick-sized book needs one to three digits a level. A book whose
# values do not all have one scale keeps its values as sent (comma-joined) with scale None; an empty side is "".


@dataclass(frozen=True, slots=True)
class EncodedLevels:
    """The four encoded columns of one book and their shared scale (None: the columns hold the values as sent)."""

    scale: int | None
    bid_prices: str
    bid_quantities: str
    ask_prices: str
    ask_quantities: str


# What the raw form may hold: plain decimals, one comma between two (models.book admits nothing else).
_PLAIN = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:,[0-9]+(?:\.[0-9]+)?)*")


@cache
def _uniform(scale: int) -> re.Pattern[str]:
    """Comma-joined plain decimals, each with exactly `scale` decimals (no point at all when 0)."""
    whole = "(?:0|[1-9][0-9]*)"  # no leading zero: the integer read back is written the same way
    one = rf"{whole}\.[0-9]{{{scale}}}" if scale else whole
    return re.compile(rf"{one}(?:,{one})*")


def _scale_of(value: str) -> int:
    point = value.find(".")
    return 0 if point < 0 else len(value) - point - 1


def _trailing_zeros(n: int) -> int:
    if n == 0:
        return 0
    digits = str(n)
    return len(digits) - len(digits.rstrip("0"))


def _scaled_down(ints: list[int], k: int) -> str:
    """`ints` divided by 10^k (each a multiple of it), comma-joined."""
    text = ",".join(map(str, ints))
    if not k:
        return text
    if 0 in ints:  # "0" has no trailing zero to drop: divide one by one
        unit = 10**k
        return ",".join(str(x // unit) for x in ints)
    # Every element ends with k zeros and a comma only ends an element: drop the zeros in one pass.
    return (text + ",").replace("0" * k + ",", ",")[:-1]


def _prices(ints: list[int], *, descending: bool) -> str:
    if not ints:
        return ""
    best = ints[0]
    k = _trailing_zeros(math.gcd(*ints))
    steps = list(map(operator.sub, repeat(best), ints) if descending else map(operator.sub, ints, repeat(best)))
    steps[0] = best
    return f"{k},{_scaled_down(steps, k)}"


def _quantities(ints: list[int]) -> str:
    if not ints:
        return ""
    k = _trailing_zeros(math.gcd(*ints))
    return f"{k},{_scaled_down(ints, k)}"


def _scaled_digits(values: Sequence[str]) -> tuple[int, str] | None:
    """(k, the comma-joined integers v_i / 10^k) of a column of uniform-scale values, where v_i is value i without
    its point and k the trailing zeros of gcd(v_i), worked out on the text (no int() per value, which is what costs
    for quantities; prices need the integers anyway, for their distances). None when a value is zero: a zero has no
    trailing zero to share (gcd ignores it), the integer path does."""
    digits = [v.replace(".", "").lstrip("0") for v in values]
    if "" in digits:
        return None
    text = ",".join(digits) + ","
    # The trailing zeros of the gcd are the fewest any value has; each element ends at its comma.
    n, k, zeros = len(digits), 0, _ZEROS_THEN_COMMA
    while k + 1 < len(zeros) and text.count(zeros[k + 1]) == n:
        k += 1
    if k + 1 == len(zeros):  # beyond what parsed values hold: let the integers tell
        return None
    if k:
        text = text.replace(_ZEROS_THEN_COMMA[k], ",")
    return k, text[:-1]


# "0" * i + "," for every i a value of at most 20 + 20 digits (models.book's widest) can need.
_ZEROS_THEN_COMMA = tuple("0" * i + "," for i in range(42))


def _ints(values: Sequence[str]) -> list[int]:
    return list(map(int, ",".join(values).replace(".", "").split(","))) if values else []


def _uniform_quantities(values: Sequence[str]) -> str:
    if not values:
        return ""
    scaled = _scaled_digits(values)
    if scaled is None:
        return _quantities(_ints(values))
    return f"{scaled[0]},{scaled[1]}"


def encode_levels(
    bid_prices: Sequence[str], bid_quantities: Sequence[str], ask_prices: Sequence[str], ask_quantities: Sequence[str]
) -> EncodedLevels:
    """Encode one book's levels (plain non-negative decimal strings, as models.book.parse_frame admits them).

    Raises ValueError for any other value. Exact for any such strings: what `decode_column` (and the SQL decoder)
    returns is each value as sent, its trailing zeros included. A book with no level at all, with values of
    different scales, or with a leading zero (``007``) keeps them as sent."""
    values = [*bid_prices, *bid_quantities, *ask_prices, *ask_quantities]
    joined = ",".join(values)
    if joined.count(",") != max(len(values) - 1, 0):  # a value holding a comma would read as two
        raise ValueError("a price or quantity is not a plain decimal string")
    scale = _scale_of(values[0]) if values else 0
    if not values or not _uniform(scale).fullmatch(joined):
        if values and not _PLAIN.fullmatch(joined):
            raise ValueError("a price or quantity is not a plain decimal string")
        return EncodedLevels(None, *(",".join(c) for c in (bid_prices, bid_quantities, ask_prices, ask_quantities)))
    return encode_uniform(bid_prices, bid_quantities, ask_prices, ask_quantities, scale=scale)


def encode_uniform(
    bid_prices: Sequence[str],
    bid_quantities: Sequence[str],
    ask_prices: Sequence[str],
    ask_quantities: Sequence[str],
    *,
    scale: int,
) -> EncodedLevels:
    """`encode_levels` of a book known to have at least one value, every value a plain decimal with exactly `scale`
    decimals (no point when 0) and no leading zero: what models.book.parse_frame found and records in
    `BookSnapshot.numbers().scale`. Not checked again here (encode_levels' regex over every value): given any other
    values, the result is wrong, not an error."""
    return EncodedLevels(
        scale,
        _prices(_ints(bid_prices), descending=True),
        _uniform_quantities(bid_quantities),
        _prices(_ints(ask_prices), descending=False),
        _uniform_quantities(ask_quantities),
    )


def decode_column(encoded: str, *, scale: int | None, price_direction: int) -> list[str]:
    """The values of one encoded column as decimal strings: `price_direction` is -1 for bid prices, +1 for ask
    prices, 0 for quantities. The reference of the SQL decoder (bookfeed_levels)."""
    if not encoded:
        return []
    if scale is None:
        return encoded.split(",")
    k, first, *rest = map(int, encoded.split(","))
    ints = [first, *(first + price_direction * v for v in rest)] if price_direction else [first, *rest]
    return [decimal_text(v * 10**k, scale) for v in ints]


def decimal_text(mantissa: int, scale: int) -> str:
    """`mantissa` * 10^-scale written with `scale` decimals, as format(Decimal, "f") writes it (a negative one, a
    crossed book's spread, with its sign)."""
    if mantissa < 0:
        return "-" + decimal_text(-mantissa, scale)
    if not scale:
        return str(mantissa)
    digits = str(mantissa).rjust(scale + 1, "0")
    return f"{digits[:-scale]}.{digits[-scale:]}"
