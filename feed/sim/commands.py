"""Subcommands ``simulate``, ``record`` and ``replay`` for the ``bookfeed`` console script.

``feed/cli.py`` calls ``register(subparsers)``; each handler takes the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import websocket

from feed.argtypes import fraction, non_negative, port, positive, positive_int
from feed.sim._config import ReplayConfig, ServerConfig, SimConfig, SimConfigError
from feed.sim._faults import FaultConfig
from feed.sim._record import RecordingError, record
from feed.sim._run import Bundle, build_replayer, build_simulator, serve_until_signal, ws_url
from feed.sim._symbols import DEFAULT_SYMBOLS


def _symbols(text: str) -> tuple[str, ...]:
    names = tuple(s.strip().upper() for s in text.split(",") if s.strip())
    if not names or not all(s.isalnum() for s in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated symbols like btcusdt,ethusdt, got {text!r}")
    return names


def _off_if_zero(value: float) -> float | None:
    return value or None


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port, default=9443, help="port (default 9443; 0 picks a free one)")
    parser.add_argument("--ping-interval", type=non_negative, default=20.0, help="seconds between pings (0: off)")
    parser.add_argument("--pong-timeout", type=non_negative, default=60.0, help="close without pong (0: never)")
    parser.add_argument("--max-lifetime", type=non_negative, default=86400.0, help="connection lifetime, s (0: ∞)")
    parser.add_argument("--shutdown-notice", type=non_negative, default=0.0, help="serverShutdown lead time, s")


def _server_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        ping_interval_s=_off_if_zero(args.ping_interval),
        pong_timeout_s=_off_if_zero(args.pong_timeout),
        max_lifetime_s=_off_if_zero(args.max_lifetime),
        shutdown_notice_s=args.shutdown_notice,
    )


def format_listening(kind: str, host: str, port: int, symbols: tuple[str, ...]) -> str:
    """The start-up line, e.g. ``simulator listening on ws://127.0.0.1:9443 (symbols: BTCUSDT,ETHUSDT)``."""
    shown = ",".join(symbols[:10]) + (f",... ({len(symbols)} in all)" if len(symbols) > 10 else "")
    return f"{kind} listening on {ws_url(host, port).removesuffix('/stream')} (symbols: {shown})"


def _serve(kind: str, bundle: Bundle, args: argparse.Namespace) -> int:
    def ready(port: int) -> None:
        print(format_listening(kind, args.host, port, bundle.symbols), flush=True)

    try:
        serve_until_signal(bundle, on_ready=ready)
    except OSError as exc:
        print(f"bookfeed {args.command}: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _simulate(args: argparse.Namespace) -> int:
    faults = FaultConfig(
        malformed_fraction=args.malformed_fraction,
        crossed_fraction=args.crossed_fraction,
        one_sided_fraction=args.one_sided_fraction,
        delay_ms=args.delay_ms,
        drop_every_s=args.drop_every,
        stall_every_s=args.stall_every,
        stall_for_s=args.stall_for,
    )
    try:
        config = SimConfig(
            symbols=args.symbols,
            random_symbols=args.random_symbols or 0,
            seed=args.seed,
            rate=args.rate,
            server=_server_config(args),
            faults=faults,
        )
    except SimConfigError as exc:
        print(f"bookfeed simulate: {exc}", file=sys.stderr)
        return 2
    return _serve("simulator", build_simulator(config), args)


def _replay(args: argparse.Namespace) -> int:
    try:
        config = ReplayConfig(Path(args.file), speed=args.speed, fast=args.fast, server=_server_config(args))
        bundle = build_replayer(config)
    except (SimConfigError, RecordingError) as exc:
        print(f"bookfeed replay: {exc}", file=sys.stderr)
        return 1
    return _serve("replayer", bundle, args)


def _record(args: argparse.Namespace) -> int:
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        count = record(args.url, Path(args.out), duration_s=args.duration, max_frames=args.max_frames, stop=stop)
    except (OSError, websocket.WebSocketException) as exc:
        print(f"bookfeed record: cannot record {args.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"recorded {count} frames to {args.out}", flush=True)
    return 0


def register(subparsers: Any) -> None:
    """Add ``simulate``, ``record`` and ``replay`` to an argparse subparsers object (``add_subparsers()``)."""
    sim = subparsers.add_parser("simulate", help="serve a synthetic Binance partial-depth market")
    _add_server_flags(sim)
    names = sim.add_mutually_exclusive_group()
    names.add_argument("--symbols", type=_symbols, default=DEFAULT_SYMBOLS, help="e.g. btcusdt,ethusdt")
    names.add_argument("--random-symbols", type=positive_int, metavar="N", help="N generated symbols instead")
    sim.add_argument("--rate", type=positive, help="frames/s per connection over its streams (default: cadence)")
    sim.add_argument("--seed", type=int, default=0, help="market seed (same seed, same books)")
    sim.add_argument("--drop-every", type=positive, metavar="S", help="abort all connections every S seconds")
    sim.add_argument("--stall-every", type=positive, metavar="S", help="stall all streams every S seconds")
    sim.add_argument("--stall-for", type=positive, default=5.0, metavar="S", help="stall length (default 5 s)")
    sim.add_argument("--malformed-fraction", type=fraction, default=0.0, metavar="F", help="malformed frames")
    sim.add_argument("--crossed-fraction", type=fraction, default=0.0, metavar="F", help="crossed books")
    sim.add_argument("--one-sided-fraction", type=fraction, default=0.0, metavar="F", help="one-sided books")
    sim.add_argument("--delay-ms", type=non_negative, default=0.0, metavar="M", help="delay every frame by M ms")
    sim.set_defaults(func=_simulate, command="simulate")

    rec = subparsers.add_parser("record", help="record raw frames from a websocket URL into a .jsonl.gz file")
    rec.add_argument("--url", required=True, help="e.g. ws://127.0.0.1:9443/stream?streams=btcusdt@depth20")
    rec.add_argument("--out", required=True, help="output file (gzip JSON lines)")
    rec.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds")
    rec.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames")
    rec.set_defaults(func=_record, command="record")

    rep = subparsers.add_parser("replay", help="serve a recording as a Binance-compatible server")
    rep.add_argument("file", help="recording written by `bookfeed record`")
    _add_server_flags(rep)
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=positive, default=1.0, metavar="X", help="X times the original pace")
    pace.add_argument("--fast", action="store_true", help="as fast as the client reads")
    rep.set_defaults(func=_replay, command="replay")
