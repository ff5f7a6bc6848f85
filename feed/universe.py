"""The streams a feed process subscribes: an explicit symbol list, or every TRADING symbol the exchange lists in
`GET /api/v3/exchangeInfo` (filtered by quote asset and exclusions), either one cut to this process's shard.

Parsing, filtering and sharding are pure functions; only `fetch_exchange_info` does I/O (HTTP, standard library).
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from models.errors import PipelineError
from models.settings import Settings
from models.vocabulary import Speed, normalise_symbol, stream_name

__all__ = [
    "EXCHANGE_INFO_PATH",
    "SymbolInfo",
    "SymbolSource",
    "UniverseChange",
    "UniverseError",
    "diff_streams",
    "fetch_exchange_info",
    "in_shard",
    "parse_exchange_info",
    "select_symbols",
    "shard_of",
]

logger = logging.getLogger(__name__)

EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
TRADING = "TRADING"
_TIMEOUT_S = 30.0  # per socket operation (connect, each read)
_MAX_BYTES = 64 * 1024 * 1024  # Binance's whole document is a few MB; anything far larger is not exchangeInfo


class UniverseError(PipelineError):
    """The symbol list could not be read: the REST call failed, its answer is not exchangeInfo, or no symbol is
    left after the filters. The message is one readable line and names no secret."""


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """One entry of exchangeInfo's `symbols`: the fields the universe needs."""

    symbol: str  # upper case, e.g. BTCUSDT
    status: str  # TRADING, BREAK, HALT, ...
    quote_asset: str  # upper case, e.g. USDT


@dataclass(frozen=True, slots=True)
class UniverseChange:
    """Streams subscribed anew and streams dropped between two readings of the universe (each sorted)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


def shard_of(symbol: str, n: int) -> int:
    """The shard (0 .. n-1) of `symbol` among `n`: blake2b of the upper-case name modulo n, the same in every process
    and Python version (never `hash()`), and independent of the other symbols, so a new listing moves nothing else."""
    if n < 1:
        raise ValueError(f"the number of shards must be >= 1, got {n}")
    digest = hashlib.blake2b(symbol.upper().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def in_shard(symbols: Iterable[str], shard: tuple[int, int]) -> tuple[str, ...]:
    """The symbols of shard `(i, n)`, in their given order; `(0, 1)` keeps them all."""
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    return tuple(s for s in symbols if n == 1 or shard_of(s, n) == i)


def parse_exchange_info(doc: Any) -> list[SymbolInfo]:
    """The `symbols` of an exchangeInfo document (already decoded JSON). Entries whose name is not a valid symbol
    are skipped. Raises UniverseError when the document has no `symbols` list."""
    entries = doc.get("symbols") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise UniverseError("exchangeInfo has no 'symbols' list")
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            symbol = normalise_symbol(str(entry.get("symbol", "")))
        except ValueError:
            continue  # not a name the feed could subscribe
        status, quote = entry.get("status"), entry.get("quoteAsset")
        out.append(SymbolInfo(symbol, str(status or ""), str(quote or "").upper()))
    return out


def select_symbols(
    infos: Iterable[SymbolInfo], *, quotes: Iterable[str] = (), exclude: Iterable[str] = ()
) -> tuple[str, ...]:
    """The TRADING symbols whose quote asset is in `quotes` (empty: any) and that are not in `exclude`, sorted and
    without duplicates."""
    keep, drop = {q.upper() for q in quotes}, {s.upper() for s in exclude}
    return tuple(
        sorted(
            {
                i.symbol
                for i in infos
                if i.status == TRADING and (not keep or i.quote_asset in keep) and i.symbol not in drop
            }
        )
    )


def diff_streams(old: Iterable[str], new: Iterable[str]) -> UniverseChange:
    """What changed from `old` to `new`."""
    before, after = set(old), set(new)
    return UniverseChange(added=tuple(sorted(after - before)), removed=tuple(sorted(before - after)))


def _shown(url: str) -> str:
    """The URL without user, password or query, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def fetch_exchange_info(rest_url: str, *, timeout_s: float = _TIMEOUT_S) -> Any:
    """`GET {rest_url}/api/v3/exchangeInfo`, decoded. Raises UniverseError (one line, no credentials) when the
    server cannot be reached, answers with an error status, or the body is not JSON."""
    url = rest_url.rstrip("/") + EXCHANGE_INFO_PATH
    shown = _shown(url)
    if urlsplit(url).scheme not in ("http", "https"):  # urllib would open file:// and ftp:// too
        raise UniverseError(f"GET {shown}: not an http(s) URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "bookfeed"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response and its socket
        hint = " (rate limited: Binance bans IPs that keep asking)" if exc.code in (418, 429) else ""
        raise UniverseError(f"GET {shown}: HTTP {exc.code} {exc.reason}{hint}") from None
    except urllib.error.URLError as exc:
        raise UniverseError(f"GET {shown}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise UniverseError(f"GET {shown}: {exc or type(exc).__name__}") from None
    if len(body) > _MAX_BYTES:
        raise UniverseError(f"GET {shown}: the answer is larger than {_MAX_BYTES // (1024 * 1024)} MiB")
    try:
        return json.loads(body)
    except ValueError:
        raise UniverseError(f"GET {shown}: the answer is not JSON ({body[:60]!r})") from None


class SymbolSource:
    """The streams one feed process subscribes (stream names of `depth`/`speed`, sorted).

    An explicit list is fixed (`refresh_s` None); with `BOOKFEED_SYMBOLS=all` each `streams()` reads exchangeInfo
    again, and the caller calls it every `refresh_s` seconds. `changes()` says what the last reading changed."""

    def __init__(
        self,
        *,
        symbols: tuple[str, ...] | None,
        depth: int,
        speed: Speed,
        shard: tuple[int, int] = (0, 1),
        rest_url: str = "",
        quotes: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        refresh_s: float = 3600.0,
        fetch: Callable[[str], Any] = fetch_exchange_info,
    ) -> None:
        """`symbols` None means every TRADING symbol at `rest_url` (then `quotes` and `exclude` filter it)."""
        self._symbols, self._depth, self._speed, self._shard = symbols, depth, speed, shard
        self._rest_url, self._quotes, self._exclude = rest_url, quotes, exclude
        self._refresh_s, self._fetch = refresh_s, fetch
        self._previous: tuple[str, ...] = ()
        self._last: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, *, fetch: Callable[[str], Any] = fetch_exchange_info) -> SymbolSource:
        """The source `settings` describe; `fetch` reads exchangeInfo from a REST URL (tests replace it)."""
        return cls(
            symbols=None if settings.all_symbols else settings.symbols,
            depth=settings.depth,
            speed=settings.speed,
            shard=settings.shard_of_n,
            rest_url=settings.rest_url,
            quotes=settings.quote,
            exclude=settings.exclude,
            refresh_s=settings.symbols_refresh_s,
            fetch=fetch,
        )

    @property
    def refresh_s(self) -> float | None:
        """Seconds between two readings of exchangeInfo; None for an explicit list (it never changes)."""
        return None if self._symbols is not None else self._refresh_s

    def symbols(self) -> tuple[str, ...]:
        """This shard's symbols, sorted. With `all`: read from exchangeInfo now (UniverseError when that fails, or
        when the filters leave no symbol at all)."""
        if self._symbols is not None:
            return tuple(sorted(in_shard(self._symbols, self._shard)))
        infos = parse_exchange_info(self._fetch(self._rest_url))
        selected = select_symbols(infos, quotes=self._quotes, exclude=self._exclude)
        if not selected:
            trading = sum(1 for i in infos if i.status == TRADING)
            quotes = ",".join(self._quotes) or "any"
            raise UniverseError(
                f"exchangeInfo lists {len(infos)} symbols, {trading} TRADING; none left with quote {quotes} "
                f"and {len(self._exclude)} excluded"
            )
        return in_shard(selected, self._shard)

    def streams(self) -> tuple[str, ...]:
        """The stream names of `symbols()`, sorted; remembered for `changes()`."""
        streams = tuple(sorted(stream_name(s, self._depth, self._speed) for s in self.symbols()))
        self._previous, self._last = self._last, streams
        return streams

    def changes(self) -> UniverseChange:
        """What the latest `streams()` added and removed compared with the one before (all added the first time)."""
        return diff_streams(self._previous, self._last)
