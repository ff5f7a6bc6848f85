"""The simulator and the replayer assembled and run: simulated frames per session, builders, serving until a
signal, or serving from a background thread (the in-process API that tests and benches use).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

from models.errors import ConfigError
from models.vocabulary import DEFAULT_SYMBOLS
from simulator.broadcast import Broadcaster
from simulator.control import Controls, HttpApi
from simulator.faults import FaultConfig, FaultState, faulty_payload
from simulator.market import (
    NOT_TRADING,
    Market,
    SymbolBook,
    default_not_trading,
    make_specs,
    pick_not_trading,
    random_symbol_names,
)
from simulator.protocol import parse_stream, ws_url
from simulator.recording import ReplayConfig, ReplayFeeder, read_recording, recorded_symbols, replay_items
from simulator.server import StreamServer
from simulator.session import ServerConfig, Session, Stats

logger = logging.getLogger(__name__)

T = TypeVar("T")
_BATCH = 64


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Simulator settings: market (symbols, seed, rate), connection rules and start-up faults.

    ``random_symbols`` > 0 replaces ``symbols`` with that many generated names. ``not_trading`` of them are
    listed in exchangeInfo with status ``BREAK`` and never streamed (``None``: about 1 % of ``random_symbols``, at
    least one from 20 on, none among fixed symbols). ``rate`` (frames/s per connection, spread round-robin over
    its streams) replaces the 1000 ms / 100 ms stream cadences.
    """

    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    random_symbols: int = 0
    seed: int = 0
    rate: float | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    not_trading: int | None = None

    def __post_init__(self) -> None:
        if self.random_symbols < 0:
            raise ConfigError(f"random_symbols must be >= 0, got {self.random_symbols}")
        if not self.symbols and self.random_symbols == 0:
            raise ConfigError("at least one symbol is needed")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate must be positive, got {self.rate}")
        if self.not_trading is not None and self.not_trading < 0:
            raise ConfigError(f"not_trading must be >= 0, got {self.not_trading}")


@dataclass(slots=True)
class _Sub:
    name: str
    book: SymbolBook
    depth: int
    interval_s: float
    prefix: bytes


class SimFeeder:
    """Feeds sessions from a ``Market``: at each stream's cadence (1000/100 ms) through one shared ``Broadcaster``,
    or at a fixed rate per connection; applies the book faults (malformed, crossed, one-sided) and stalls.

    Only ``TRADING`` symbols are streamed; streams of other symbols are acknowledged and stay silent."""

    def __init__(self, market: Market, *, faults: FaultState, stats: Stats, rate: float | None) -> None:
        self.market = market
        self._faults = faults
        self._stats = stats
        self._rate = rate
        self._tradable = frozenset(symbol for symbol, spec in market.specs.items() if spec.trading)
        self._broadcaster = Broadcaster(market, faults=faults, stats=stats, tradable=self._tradable)

    async def run(self, session: Session) -> None:
        """Send frames for the session's servable streams until the connection closes."""
        if self._rate is None:
            await self._broadcaster.run(session)
        else:
            await self._run_rate(session, self._rate)

    def _subs(self, names: Iterable[str], old: dict[str, _Sub]) -> dict[str, _Sub]:
        """Servable subscriptions; unknown names are acknowledged elsewhere and stay silent here."""
        subs: dict[str, _Sub] = {}
        for name in names:
            if name in old:
                subs[name] = old[name]
            elif (stream := parse_stream(name, self._tradable)) is not None:
                prefix = b'{"stream":"%b","data":' % name.encode()
                book = self.market.book(stream.symbol)
                subs[name] = _Sub(name, book, stream.levels, stream.interval_ms / 1000.0, prefix)
        return subs

    def _frame(self, sub: _Sub, combined: bool) -> bytes:
        book, faults = sub.book, self._faults
        payload = None
        if faults.book_faults_on and (kind := faults.choose()) is not None:
            payload, what = faulty_payload(kind, book, sub.depth, faults.rng)
            self._stats.faults[kind.value] += 1
            logger.warning(
                "injected %s fault on %s: %s (lastUpdateId=%d)", kind.value, sub.name, what, book.last_update_id
            )
        if payload is None:
            payload = book.payload(sub.depth)
        self._stats.frames[sub.name] += 1
        return sub.prefix + payload + b"}" if combined else payload

    async def _run_rate(self, session: Session, rate: float) -> None:
        loop = asyncio.get_running_loop()
        subs: dict[str, _Sub] = {}
        order: list[_Sub] = []
        start, sent, turn = loop.time(), 0, 0
        while session.writer.is_open:
            if session.changed.is_set():
                session.changed.clear()
                subs = self._subs(session.streams, subs)
                order = list(subs.values())
                start, sent, turn = loop.time(), 0, 0
            if not order:
                await session.changed.wait()
                continue
            now = loop.time()
            owed = int((now - start) * rate) - sent
            if owed <= 0:
                await session.wait_changed((sent + 1) / rate - (now - start))
                continue
            if owed > rate + _BATCH:  # over a second behind (slow client): forget the backlog
                sent += owed - _BATCH
                owed = _BATCH
            count = min(owed, _BATCH)
            frames = []
            for i in range(count):
                sub = order[(turn + i) % len(order)]
                if self._faults.stalls and self._faults.is_stalled(sub.name, now):
                    continue
                sub.book.advance()
                frames.append(self._frame(sub, session.combined))
            turn = (turn + count) % len(order)
            sent += count
            session.emit(frames)
            await session.writer.drain()
            if count == _BATCH:
                await asyncio.sleep(0)  # let reads, pings and other connections run


@dataclass(frozen=True, slots=True)
class Bundle:
    """A server ready to start, its controls, the symbols it lists (upper-case) and those of them not trading."""

    server: StreamServer
    controls: Controls
    symbols: tuple[str, ...]
    not_trading: frozenset[str] = frozenset()


def build_simulator(config: SimConfig) -> Bundle:
    """Assemble the simulator described by ``config`` (nothing is bound until ``server.start()``)."""
    if config.random_symbols:
        names = random_symbol_names(config.random_symbols, seed=config.seed)
    else:
        names = list(config.symbols)
    specs = make_specs(names, seed=config.seed, allow_thin=config.random_symbols > 0)
    count = default_not_trading(config.random_symbols) if config.not_trading is None else config.not_trading
    halted = pick_not_trading([spec.symbol for spec in specs], count, seed=config.seed)
    specs = [dataclasses.replace(spec, status=NOT_TRADING) if spec.symbol in halted else spec for spec in specs]
    faults, stats = FaultState(config.faults, seed=config.seed), Stats()
    feeder = SimFeeder(Market(specs, seed=config.seed), faults=faults, stats=stats, rate=config.rate)
    server = StreamServer(config.server, feeder, faults=faults, stats=stats)
    controls = Controls(server, book_faults=True)
    server.http_routes = HttpApi(controls, specs)
    if halted:
        logger.info("%d of %d symbols listed as %s, never streamed", len(halted), len(specs), NOT_TRADING)
    return Bundle(server, controls, tuple(spec.symbol for spec in specs), halted)


def build_replayer(config: ReplayConfig) -> Bundle:
    """Assemble a replayer for the recording at ``config.path`` (raises ``RecordingError`` if unreadable)."""
    items = replay_items(read_recording(config.path))
    specs = make_specs(recorded_symbols(items), seed=0)
    faults, stats = FaultState(FaultConfig(), seed=0), Stats()
    feeder = ReplayFeeder(items, speed=config.speed, fast=config.fast, faults=faults, stats=stats)
    server = StreamServer(config.server, feeder, faults=faults, stats=stats)
    controls = Controls(server, book_faults=False)
    server.http_routes = HttpApi(controls, specs)
    return Bundle(server, controls, tuple(spec.symbol for spec in specs))


def serve_until_signal(bundle: Bundle, *, on_ready: Callable[[int], None]) -> None:
    """Serve in this thread until SIGINT or SIGTERM, then close cleanly; ``on_ready(port)`` once bound.

    Raises ``OSError`` when the port cannot be bound.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await bundle.server.start()
        on_ready(bundle.server.port)
        await stop.wait()
        await bundle.server.stop()

    asyncio.run(main())


class ServerThread:
    """Runs a server on its own event loop in a daemon thread; use as a context manager."""

    def __init__(self, bundle: Bundle) -> None:
        self._bundle = bundle
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="bookfeed-sim", daemon=True)
        self.port = 0

    @property
    def host(self) -> str:
        """The host the server listens on."""
        return self._bundle.server.config.host

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols listed (upper-case), trading or not."""
        return self._bundle.symbols

    @property
    def not_trading(self) -> frozenset[str]:
        """The listed symbols whose status is not TRADING (never streamed)."""
        return self._bundle.not_trading

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self._bundle.server.start()
            self.port = self._bundle.server.port
        except BaseException as exc:  # handed to the starting thread, which re-raises it
            self._error = exc
            return
        finally:
            self._ready.set()
        await self._stop.wait()
        await self._bundle.server.stop()

    def start(self) -> None:
        """Start the thread and wait until the server listens (re-raises a start-up error)."""
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            self._thread.join(timeout=5)
            raise self._error

    def stop(self) -> None:
        """Close every connection and the server, then join the thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def url(self, streams: Sequence[str] = (), *, combined: bool = True) -> str:
        """Websocket URL for ``streams``: ``/stream?streams=..`` when ``combined``, else ``/ws/..``."""
        return ws_url(self.host, self.port, streams, combined=combined)

    def http_url(self, path: str = "") -> str:
        """HTTP URL on the same port, e.g. ``http_url("/control/stats")``."""
        return f"http://{self.host}:{self.port}{path}"

    def _call(self, action: Callable[[], T]) -> T:
        async def run() -> T:
            return action()

        if self._loop is None:
            raise RuntimeError("server thread not started")
        try:
            return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)
        except FutureTimeoutError as exc:
            raise TimeoutError("simulator did not answer within 10 s") from exc

    def set_faults(self, **settings: float | None) -> dict[str, float | None]:
        """Change fault settings by name, e.g. ``set_faults(crossed_fraction=0.1, drop_every_s=0)`` (0: off);
        returns every setting afterwards. Raises ``ConfigError`` for an unknown name or a value out of range."""
        return self._call(lambda: self._bundle.controls.set_faults(settings))

    def drop_all(self) -> int:
        """Abort every connection now (no close frame); returns how many."""
        return int(self._call(self._bundle.controls.drop_all)["dropped"])

    def stall(self, seconds: float, stream: str | None = None) -> None:
        """Keep ``stream`` (all streams if None) silent for ``seconds``."""
        self._call(lambda: self._bundle.controls.stall(stream, seconds))

    def reset_faults(self) -> None:
        """Switch every fault off."""
        self._call(self._bundle.controls.reset)

    def stats(self) -> dict[str, Any]:
        """Counters, as ``GET /control/stats`` returns them."""
        return self._call(self._bundle.controls.stats)


class SimulatorThread(ServerThread):
    """In-process simulator: ``with SimulatorThread(SimConfig()) as sim: sim.url(["btcusdt@depth20"])``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        super().__init__(build_simulator(config or SimConfig()))


class ReplayThread(ServerThread):
    """In-process replayer of a recording file."""

    def __init__(self, config: ReplayConfig) -> None:
        super().__init__(build_replayer(config))
