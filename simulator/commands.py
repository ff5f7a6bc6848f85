"""Subcommands ``simulate``, ``record`` and ``replay`` for the ``bookfeed`` console script.

``stack/cli.py`` calls ``register_commands(subparsers)``; each command's ``func`` takes the parsed namespace and
returns its exit code:

- 0: done (``simulate``/``replay`` stopped by SIGINT or SIGTERM; ``record`` reached its end);
- 2: bad usage or configuration: a flag argparse refuses, a setting out of range or an unreadable recording
  (one line on stderr, ``bookfeed <command>: error: ...``);
- 1: runtime failure: the port cannot be bound, the source cannot be reached or recorded (one line on stderr).

Fault flags are the kebab case of the ``FaultConfig`` fields (``--malformed-fraction`` sets ``malformed_fraction``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import websocket

from models.argtypes import fraction, non_negative, number, port, positive, positive_int
from models.errors import ConfigError
from models.vocabulary import DEFAULT_SYMBOLS, normalise_symbol
from simulator.faults import FAULT_SETTINGS, FaultConfig
from simulator.protocol import ws_url
from simulator.recording import ReplayConfig, record
from simulator.runtime import Bundle, SimConfig, build_replayer, build_simulator, serve_until_signal
from simulator.session import ServerConfig

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# setting -> (argparse type, metavar, help); the flag is the setting's name in kebab case.
_FAULT_FLAGS: dict[str, tuple[Callable[[str], Any], str, str]] = {
    "malformed_fraction": (fraction, "F", "fraction of frames sent malformed"),
    "crossed_fraction": (fraction, "F", "fraction of books sent crossed"),
    "one_sided_fraction": (fraction, "F", "fraction of books sent with one side empty"),
    "delay_ms": (non_negative, "MS", "delay every data frame by MS milliseconds"),
    "drop_every_s": (non_negative, "S", "abort all connections every S seconds (0: never)"),
    "stall_every_s": (non_negative, "S", "stall all streams every S seconds (0: never)"),
    "stall_for_s": (positive, "S", "stall length (default 5 s)"),
}


_non_negative_int = number(int, lambda v: v >= 0, "must be an integer >= 0")


class _Failure(Exception):
    """A runtime failure, as one readable line (exit 1)."""


def _symbols(text: str) -> tuple[str, ...]:
    try:
        names = tuple(dict.fromkeys(normalise_symbol(s) for s in text.split(",") if s.strip()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated symbols like btcusdt,ethusdt, got {text!r}")
    return names


def _websocket_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"not a websocket URL (ws:// or wss://): {text!r}")
    return text


def _off_if_zero(value: float) -> float | None:
    return value or None


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port, default=9443, help="port (default 9443; 0 picks a free one)")
    parser.add_argument("--ping-interval", type=non_negative, default=20.0, help="seconds between pings (0: off)")
    parser.add_argument("--pong-timeout", type=non_negative, default=60.0, help="close without pong (0: never)")
    parser.add_argument("--max-lifetime", type=non_negative, default=86400.0, help="connection lifetime, s (0: ∞)")
    parser.add_argument("--shutdown-notice", type=non_negative, default=0.0, help="serverShutdown lead time, s")
    parser.add_argument(
        "--max-connections-per-5m",
        type=_non_negative_int,
        default=300,
        metavar="N",
        help="new websocket connections per client IP per 5 minutes, more answered 429 (default 300; 0: no limit)",
    )


def _server_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        ping_interval_s=_off_if_zero(args.ping_interval),
        pong_timeout_s=_off_if_zero(args.pong_timeout),
        max_lifetime_s=_off_if_zero(args.max_lifetime),
        shutdown_notice_s=args.shutdown_notice,
        max_connections_per_5m=args.max_connections_per_5m or None,
    )


def _format_listening(kind: str, host: str, port: int, symbols: tuple[str, ...]) -> str:
    """The start-up line, e.g. ``simulator listening on ws://127.0.0.1:9443 (symbols: BTCUSDT,ETHUSDT)``."""
    shown = ",".join(symbols[:10]) + (f",... ({len(symbols)} in all)" if len(symbols) > 10 else "")
    return f"{kind} listening on {ws_url(host, port).removesuffix('/stream')} (symbols: {shown})"


def _serve(kind: str, bundle: Bundle, args: argparse.Namespace) -> None:
    def ready(port: int) -> None:
        print(_format_listening(kind, args.host, port, bundle.symbols), flush=True)

    try:
        serve_until_signal(bundle, on_ready=ready)
    except OSError as exc:
        raise _Failure(f"cannot listen on {args.host}:{args.port}: {exc}") from exc


def _simulate(args: argparse.Namespace) -> None:
    config = SimConfig(
        symbols=args.symbols,
        random_symbols=args.random_symbols or 0,
        seed=args.seed,
        rate=args.rate,
        not_trading=args.not_trading,
        server=_server_config(args),
        faults=FaultConfig(**{name: getattr(args, name) for name in FAULT_SETTINGS}),
    )
    _serve("simulator", build_simulator(config), args)


def _replay(args: argparse.Namespace) -> None:
    config = ReplayConfig(Path(args.file), speed=args.speed, fast=args.fast, server=_server_config(args))
    _serve("replayer", build_replayer(config), args)


def _record(args: argparse.Namespace) -> None:
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        count = record(args.url, Path(args.out), duration_s=args.duration, max_frames=args.max_frames, stop=stop)
    except (OSError, websocket.WebSocketException) as exc:
        raise _Failure(f"cannot record {args.url}: {exc}") from exc
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"recorded {count} frames to {args.out}", flush=True)


def _run(args: argparse.Namespace) -> int:
    """Run the command's handler and map its outcome to the exit codes above."""
    try:
        args.handler(args)
    except ConfigError as exc:
        print(f"bookfeed {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _Failure as exc:
        print(f"bookfeed {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def register_commands(subparsers: Any) -> None:
    """Add ``simulate``, ``record`` and ``replay`` to an argparse subparsers object (``add_subparsers()``)."""
    sim = subparsers.add_parser("simulate", allow_abbrev=False, help="serve a synthetic Binance partial-depth market")
    _add_server_flags(sim)
    names = sim.add_mutually_exclusive_group()
    names.add_argument("--symbols", type=_symbols, default=DEFAULT_SYMBOLS, help="e.g. btcusdt,ethusdt")
    names.add_argument("--random-symbols", type=positive_int, metavar="N", help="N generated symbols instead")
    sim.add_argument("--rate", type=positive, help="frames/s per connection over its streams (default: cadence)")
    sim.add_argument("--seed", type=int, default=0, help="market seed (same seed, same books)")
    sim.add_argument(
        "--not-trading",
        type=_non_negative_int,
        metavar="N",
        help="N symbols listed with status BREAK, never streamed (default: 1%% of --random-symbols from 20 on, else 0)",
    )
    defaults = FaultConfig()
    for name in FAULT_SETTINGS:
        kind, metavar, text = _FAULT_FLAGS[name]
        flag = "--" + name.replace("_", "-")
        sim.add_argument(flag, dest=name, type=kind, default=getattr(defaults, name), metavar=metavar, help=text)
    sim.set_defaults(func=_run, handler=_simulate, command="simulate")

    rec = subparsers.add_parser(
        "record", allow_abbrev=False, help="record raw frames from a websocket URL into a .jsonl.gz file"
    )
    rec.add_argument("--url", required=True, type=_websocket_url, help="e.g. ws://127.0.0.1:9443/stream?streams=..")
    rec.add_argument("--out", required=True, help="output file (gzip JSON lines)")
    rec.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds")
    rec.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames")
    rec.set_defaults(func=_run, handler=_record, command="record")

    rep = subparsers.add_parser("replay", allow_abbrev=False, help="serve a recording as a Binance-compatible server")
    rep.add_argument("file", help="recording written by `bookfeed record`")
    _add_server_flags(rep)
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=positive, default=1.0, metavar="X", help="X times the original pace")
    pace.add_argument("--fast", action="store_true", help="as fast as the client reads")
    rep.set_defaults(func=_run, handler=_replay, command="replay")
