"""Assembly and running: build a simulator or replayer, serve it until a signal, or in a background thread."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from feed.sim._config import ReplayConfig, SimConfig
from feed.sim._control import Controls, HttpApi
from feed.sim._faults import FaultConfig, FaultKind
from feed.sim._record import read_recording
from feed.sim._replay import ReplayFeeder, recorded_symbols, replay_items
from feed.sim._runtime import FaultState, Stats
from feed.sim._server import StreamServer
from feed.sim._simfeed import Market, SimFeeder
from feed.sim._symbols import make_specs, random_symbol_names

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Bundle:
    """A server ready to start, its controls and the symbols it knows (upper-case)."""

    server: StreamServer
    controls: Controls
    symbols: tuple[str, ...]


def build_simulator(config: SimConfig) -> Bundle:
    """Assemble the simulator described by ``config`` (nothing is bound until ``server.start()``)."""
    if config.random_symbols:
        names = random_symbol_names(config.random_symbols, seed=config.seed)
    else:
        names = list(config.symbols)
    specs = make_specs(names, seed=config.seed, allow_thin=config.random_symbols > 0)
    faults, stats = FaultState(config.faults, seed=config.seed), Stats()
    feeder = SimFeeder(Market(specs, seed=config.seed), faults=faults, stats=stats, rate=config.rate)
    server = StreamServer(config.server, feeder, faults=faults, stats=stats)
    controls = Controls(server, book_faults=True)
    server.http_routes = HttpApi(controls, specs)
    return Bundle(server, controls, tuple(spec.symbol for spec in specs))


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
    """Serve in this thread until SIGINT or SIGTERM, then close cleanly; ``on_ready(port)`` once bound."""

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


def ws_url(host: str, port: int, streams: Sequence[str] = (), *, combined: bool = True) -> str:
    """URL of a Binance-style endpoint: ``/stream?streams=a/b`` (combined) or ``/ws/a/b`` (raw)."""
    base = f"ws://{host}:{port}"
    if combined:
        return f"{base}/stream?streams={'/'.join(streams)}" if streams else f"{base}/stream"
    return f"{base}/ws/{'/'.join(streams)}" if streams else f"{base}/ws"


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
        """The symbols served (upper-case)."""
        return self._bundle.symbols

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

    def drop_all(self) -> int:
        """Abort every connection now (no close frame); returns how many."""
        return self._call(self._bundle.server.drop_all)

    def drop_every(self, seconds: float) -> None:
        """Abort every connection every ``seconds`` (0 stops)."""
        self._call(lambda: self._bundle.controls.drop(seconds))

    def stall(self, seconds: float, stream: str | None = None) -> None:
        """Keep ``stream`` (all streams if None) silent for ``seconds``."""
        self._call(lambda: self._bundle.controls.stall(stream, seconds))

    def set_fraction(self, kind: FaultKind | str, fraction: float) -> None:
        """Render ``fraction`` of frames ``malformed``, ``crossed`` or ``one_sided``."""
        self._call(lambda: self._bundle.controls.set_fraction(FaultKind(kind), fraction))

    def set_delay(self, ms: float) -> None:
        """Delay every data frame by ``ms`` milliseconds (0 switches off)."""
        self._call(lambda: self._bundle.controls.set_delay(ms))

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
