"""Binance-compatible exchange simulator, recorder and replayer (partial-depth streams) for tests, demos and load.

Not part of the production feed. In-process use::

    with SimulatorThread(SimConfig(symbols=("BTCUSDT",))) as sim:
        url = sim.url(["btcusdt@depth20@100ms"])
        sim.set_faults(crossed_fraction=0.1)

Command line: ``register_commands(subparsers)`` adds ``bookfeed simulate|record|replay``.

Modules, in import order: ``market`` (symbols, books), ``faults`` (fault settings, faulty payloads), ``protocol``
(Binance stream names, URL paths, JSON methods, frames), ``limits`` (Binance's connection limits, violations),
``session`` (one connection, connection rules, counters), ``server`` (websocket server), ``broadcast`` (one timer
wheel: each stream's frame built once, sent to every subscriber), ``control`` (fault controls, HTTP routes),
``recording`` (record, replay), ``runtime`` (assembly, threads), ``commands`` (CLI), ``probe`` (a counting
client); ``loadcheck`` (``python -m simulator.loadcheck``: frames/s and CPU at scale) stands apart. Import from
this package only: its ``__all__`` is the public API.
"""

from simulator.commands import register_commands
from simulator.control import ControlError, Controls
from simulator.faults import FAULT_SETTINGS, MALFORMED_VARIANTS, FaultConfig, FaultKind, choose_fault, faulty_payload
from simulator.market import (
    Market,
    SymbolBook,
    SymbolSpec,
    book_at,
    exchange_info,
    make_spec,
    random_symbol_names,
    update_ids,
)
from simulator.probe import count_frames
from simulator.protocol import DepthStream, Outcome, WsPath, handle_request, parse_stream, parse_ws_path, ws_url
from simulator.recording import (
    RecordedFrame,
    Recording,
    RecordingError,
    RecordingWriter,
    ReplayConfig,
    ReplayItem,
    read_recording,
    record,
    replay_items,
)
from simulator.runtime import (
    Bundle,
    ReplayThread,
    ServerThread,
    SimConfig,
    SimulatorThread,
    build_replayer,
    build_simulator,
    serve_until_signal,
)
from simulator.session import ServerConfig

__all__ = [
    "FAULT_SETTINGS",
    "MALFORMED_VARIANTS",
    "Bundle",
    "ControlError",
    "Controls",
    "DepthStream",
    "FaultConfig",
    "FaultKind",
    "Market",
    "Outcome",
    "RecordedFrame",
    "Recording",
    "RecordingError",
    "RecordingWriter",
    "ReplayConfig",
    "ReplayItem",
    "ReplayThread",
    "ServerConfig",
    "ServerThread",
    "SimConfig",
    "SimulatorThread",
    "SymbolBook",
    "SymbolSpec",
    "WsPath",
    "book_at",
    "build_replayer",
    "build_simulator",
    "choose_fault",
    "count_frames",
    "exchange_info",
    "faulty_payload",
    "handle_request",
    "make_spec",
    "parse_stream",
    "parse_ws_path",
    "random_symbol_names",
    "read_recording",
    "record",
    "register_commands",
    "replay_items",
    "serve_until_signal",
    "update_ids",
    "ws_url",
]
