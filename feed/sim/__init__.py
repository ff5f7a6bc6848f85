"""Binance-compatible exchange simulator, recorder and replayer (partial-depth streams) for tests and load.

In-process use: ``with SimulatorThread(SimConfig()) as sim: url = sim.url(["btcusdt@depth20@100ms"])``.
Command line: ``feed.sim.commands.register(subparsers)`` adds ``simulate``, ``record`` and ``replay``.
"""

from feed.sim._config import ReplayConfig, ServerConfig, SimConfig, SimConfigError
from feed.sim._control import ControlError, Controls
from feed.sim._faults import MALFORMED_VARIANTS, FaultConfig, FaultKind, choose_fault
from feed.sim._market import SymbolBook, book_at
from feed.sim._record import (
    RecordedFrame,
    Recording,
    RecordingError,
    RecordingWriter,
    read_recording,
    record,
)
from feed.sim._run import (
    Bundle,
    ReplayThread,
    ServerThread,
    SimulatorThread,
    build_replayer,
    build_simulator,
    serve_until_signal,
    ws_url,
)
from feed.sim._streams import DepthStream, parse_stream, parse_ws_path
from feed.sim._symbols import DEFAULT_SYMBOLS, SymbolSpec, exchange_info, make_spec, random_symbol_names

__all__ = [
    "DEFAULT_SYMBOLS",
    "MALFORMED_VARIANTS",
    "Bundle",
    "ControlError",
    "Controls",
    "DepthStream",
    "FaultConfig",
    "FaultKind",
    "RecordedFrame",
    "Recording",
    "RecordingError",
    "RecordingWriter",
    "ReplayConfig",
    "ReplayThread",
    "ServerConfig",
    "ServerThread",
    "SimConfig",
    "SimConfigError",
    "SimulatorThread",
    "SymbolBook",
    "SymbolSpec",
    "book_at",
    "build_replayer",
    "build_simulator",
    "choose_fault",
    "exchange_info",
    "make_spec",
    "parse_stream",
    "parse_ws_path",
    "random_symbol_names",
    "read_recording",
    "record",
    "serve_until_signal",
    "ws_url",
]
