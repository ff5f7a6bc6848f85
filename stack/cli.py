"""The `bookfeed` command (console script `bookfeed = stack.cli:main`): parse flags, load settings, configure logging,
call one library function, and map PipelineError subclasses to exit codes. Only `main` prints.

`feed` runs the production feed (feed.service), `migrate` the migrations (workers.schema), `simulate`/`record`/`replay`
the simulator (simulator), `up` the local all-in-one stack (stack.up), `status` the health check (stack.status)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.argtypes import fraction, positive, positive_int
from models.errors import ConfigError, PipelineError, RetriesExhaustedError
from models.logconfig import configure_logging
from models.settings import Settings, load_settings
from models.vocabulary import DEPTHS, SPEEDS
from simulator import register_commands

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)

EXIT_ERROR, EXIT_CONFIG, EXIT_GAVE_UP = 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one readable line, exit 2
        self.exit(EXIT_CONFIG, f"bookfeed: error: {message}\n")


def _feed_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        help="combined-stream URL (ws[s]://host:port/stream?streams=...) or bare endpoint "
        "to which the streams of --symbols are added (default: live Binance)",
    )
    p.add_argument(
        "--symbols",
        help="comma-separated symbols, e.g. btcusdt,ethusdt, or 'all': every TRADING symbol of the exchange "
        "(env BOOKFEED_SYMBOLS)",
    )
    p.add_argument(
        "--rest-url",
        help=f"with --symbols all: where GET /api/v3/exchangeInfo is read (default {_default('rest_url')})",
    )
    p.add_argument("--quote", help="with --symbols all: keep only these quote assets, e.g. USDT,FDUSD")
    p.add_argument("--exclude", help="with --symbols all: never subscribe these symbols, e.g. USDCUSDT")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="take shard I of N of the symbols (stable hash of each symbol); N feeds with the same symbol "
        "settings split them with no overlap",
    )
    p.add_argument("--depth", type=int, choices=DEPTHS, help=f"levels per side (default {_default('depth')})")
    p.add_argument("--speed", choices=SPEEDS, help=f"update speed (default {_default('speed')})")
    p.add_argument(
        "--batch-max-frames",
        type=positive_int,
        help=f"frames per task at most (default {_default('batch_max_frames')})",
    )
    p.add_argument(
        "--batch-max-wait-ms",
        type=positive_int,
        help=f"ms a frame waits for its batch (default {_default('batch_max_wait_ms')})",
    )


def _default(field: str) -> Any:
    return Settings.model_fields[field].default


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bookfeed", description="Record Binance order books into PostgreSQL.")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", help="run everything on this machine (embedded PostgreSQL/Redis if no URL is set)")
    _feed_flags(up)
    up.add_argument("--workers", type=positive_int, default=2, help="worker processes (default 2)")
    up.add_argument("--duration", type=positive, help="stop after S seconds (default: until Ctrl-C)")
    up.add_argument("--flower-port", type=positive_int, default=5555)
    up.add_argument("--interval", type=positive, default=2.0, help="seconds between live lines")
    up.add_argument("--simulate", action="store_true", help="feed from the built-in simulator instead of --url")
    up.add_argument(
        "--malformed-fraction",
        type=fraction,
        default=0.0,
        metavar="F",
        help="with --simulate: fraction of frames the simulator sends malformed, to see rejected_messages at work "
        "(default 0; make demo uses 0.002)",
    )
    up.add_argument(
        "--random-symbols",
        type=positive_int,
        metavar="N",
        help="with --simulate --symbols all: how many symbols the simulator makes up and lists in its exchangeInfo "
        "(default 200)",
    )
    up.set_defaults(func=_cmd_up)

    fd = sub.add_parser("feed", help="run the websocket feed (needs REDIS_URL)")
    _feed_flags(fd)
    fd.add_argument("--duration", type=positive, help="stop after S seconds")
    fd.set_defaults(func=_cmd_feed)

    mg = sub.add_parser("migrate", help="apply the database migrations (needs DATABASE_URL)")
    mg.set_defaults(func=_cmd_migrate)

    st = sub.add_parser(
        "status",
        help="check the pipeline (needs DATABASE_URL and REDIS_URL): exit 0 healthy, 1 degraded, 2 down",
    )
    st.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    st.set_defaults(func=_cmd_status)

    ap = sub.add_parser("api", help="serve the HTTP/websocket API (needs DATABASE_URL; REDIS_URL for WS /v1/live)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=positive_int, default=8000, help="port to listen on (default 8000)")
    ap.set_defaults(func=_cmd_api)

    _data_out_commands(sub)

    register_commands(sub)
    return parser


# Flags that set the Settings field of the same name.
_FLAG_SETTINGS = (
    *("url", "symbols", "rest_url", "quote", "exclude", "shard", "depth", "speed"),
    *("batch_max_frames", "batch_max_wait_ms", "log_level"),
)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in _FLAG_SETTINGS:
        v = getattr(args, name, None)
        if v is not None:
            overrides[name] = v
    return load_settings(**overrides)


def _cmd_up(args: argparse.Namespace) -> int:
    from stack.up import UpOptions, run_up

    if args.malformed_fraction and not args.simulate:
        raise ConfigError("--malformed-fraction needs --simulate (it sets the built-in simulator's faults)")
    s = _settings(args)  # every URL and symbol setting is validated here, before anything starts
    if args.random_symbols is not None and not (args.simulate and s.all_symbols):
        raise ConfigError("--random-symbols needs --simulate and --symbols all (the simulator's generated symbols)")
    configure_logging("WARNING", "text")
    opts = UpOptions(
        workers=args.workers,
        duration_s=args.duration,
        flower_port=args.flower_port,
        interval_s=args.interval,
        simulate=args.simulate,
        malformed_fraction=args.malformed_fraction,
        **({"random_symbols": args.random_symbols} if args.random_symbols else {}),
    )
    return run_up(s, opts)


def _cmd_feed(args: argparse.Namespace) -> int:
    from feed.service import run_feed

    s = _settings(args)
    configure_logging(s.log_level, s.log_format)
    run_feed(s, duration_s=args.duration)
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from workers.schema import ensure_login, upgrade_to_head

    s = _settings(args)
    configure_logging(s.log_level, s.log_format)
    url = s.require_database_url()
    upgrade_to_head(url)
    print("database migrated to head")
    for user, password, group in (
        (s.worker_db_user, s.worker_db_password, "bookfeed_writer"),
        (s.reader_db_user, s.reader_db_password, "bookfeed_reader"),
    ):
        if user:
            if not password.get_secret_value():
                raise ConfigError(f"a password is needed for the login {user!r} (BOOKFEED_*_DB_PASSWORD)")
            ensure_login(url, name=user, password=password.get_secret_value(), group=group)
            print(f"login {user} is a member of {group}")
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    from api.main import run_api

    s = _settings(args)
    configure_logging(s.log_level, s.log_format)
    s.require_database_url()
    run_api(s, host=args.host, port=args.port)
    return 0


def _utc_time(text: str) -> Any:
    from stack.dataout import utc_time  # pyarrow and SQLAlchemy load only for the commands that use them

    return utc_time(text)


def _data_out_commands(sub: Any) -> None:
    ex = sub.add_parser("export", help="write books to Parquet or CSV, hot and archived alike (needs DATABASE_URL)")
    ex.add_argument("--symbols", dest="export_symbols", required=True, help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    ex.add_argument("--start", type=_utc_time, required=True, help="RFC 3339 time or date (UTC), included")
    ex.add_argument("--end", type=_utc_time, required=True, help="RFC 3339 time or date (UTC), excluded")
    ex.add_argument("--format", choices=("parquet", "csv"), required=True)
    ex.add_argument("--layout", choices=("native", "tardis"), default="native", help="tardis: book_snapshot_20 columns")
    ex.add_argument("--out", type=Path, required=True, help="output file (CSV ending in .gz is gzipped)")
    ex.set_defaults(func=_cmd_export)

    ar = sub.add_parser(
        "archive",
        help="archive closed days to BOOKFEED_ARCHIVE_URL, then drop days older than BOOKFEED_RETENTION_DAYS "
        "(needs DATABASE_URL of the tables' owner for retention)",
    )
    ar.add_argument("--every", type=positive, metavar="S", help="run again every S seconds (default: once)")
    ar.set_defaults(func=_cmd_archive)


def _cmd_export(args: argparse.Namespace) -> int:
    from stack.dataout import ExportOptions, run_export

    s = _settings(args)
    configure_logging(s.log_level, s.log_format)
    symbols = tuple(x.strip() for x in args.export_symbols.split(",") if x.strip())
    if not symbols:
        raise ConfigError("--symbols needs at least one symbol")
    opts = ExportOptions(symbols, args.start, args.end, args.format, args.layout, args.out)
    for line in run_export(s, opts):
        print(line)
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    from stack.dataout import run_archive

    s = _settings(args)
    configure_logging(s.log_level, s.log_format)
    run_archive(s, every_s=args.every, emit=print)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    import redis
    from sqlalchemy import create_engine

    from stack.status import check_status, format_status

    s = _settings(args)
    configure_logging("ERROR" if args.log_level is None else s.log_level, s.log_format)
    engine = create_engine(s.require_database_url(), pool_size=1, connect_args={"connect_timeout": 5})
    broker = redis.Redis.from_url(s.require_redis_url(), socket_timeout=5, socket_connect_timeout=5)
    try:
        status = check_status(s, engine=engine, broker=broker)
    finally:
        broker.close()
        engine.dispose()
    print(json.dumps(status.as_dict()) if args.json else format_status(status))
    return status.code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"bookfeed: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RetriesExhaustedError as exc:
        print(f"bookfeed: gave up: {exc}", file=sys.stderr)
        return EXIT_GAVE_UP
    except PipelineError as exc:
        print(f"bookfeed: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
