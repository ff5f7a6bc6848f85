"""models.settings: defaults, environment parsing, URL normalisation and one-line ConfigErrors.

Every test runs in an empty temporary directory with no BOOKFEED_* / DATABASE_URL / REDIS_URL in the environment,
so neither a developer's shell nor a local .env can leak in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.errors import ConfigError, PipelineError
from models.settings import ReconnectPolicy, Settings, load_settings, normalise_database_url
from models.vocabulary import DEFAULT_SYMBOLS, LIVE_URL

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("BOOKFEED_") or name.upper() in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The message of the ConfigError that load_settings raises under `env`; it must be one line."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no pydantic traceback chained
    return message


def test_defaults() -> None:
    s = load_settings()
    assert s.symbols == DEFAULT_SYMBOLS == ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    assert s.depth == 20
    assert s.url == LIVE_URL == "wss://stream.binance.com:9443"
    assert s.database_url is None and s.redis_url is None
    assert s.batch_max_frames >= 1 and s.batch_max_wait_ms >= 1


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.depth = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "symbols"),
    [
        ("BTCUSDT, ethusdt", ("BTCUSDT", "ETHUSDT")),
        (" btcusdt ,, ETHUSDT ,", ("BTCUSDT", "ETHUSDT")),
        ("btcusdt,BTCUSDT,ethusdt", ("BTCUSDT", "ETHUSDT")),
        ("1000satsusdt", ("1000SATSUSDT",)),
    ],
)
def test_symbols_from_env_are_normalised(monkeypatch: pytest.MonkeyPatch, raw: str, symbols: tuple[str, ...]) -> None:
    monkeypatch.setenv("BOOKFEED_SYMBOLS", raw)
    assert load_settings().symbols == symbols


def test_symbols_override_as_a_list() -> None:
    assert load_settings(symbols=["BTCUSDT", " ethusdt"]).symbols == ("BTCUSDT", "ETHUSDT")


@pytest.mark.parametrize("raw", ["", " ", " , ,"])
def test_empty_symbols(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    assert (
        config_error(monkeypatch, BOOKFEED_SYMBOLS=raw)
        == "invalid BOOKFEED_SYMBOLS: Value error, at least one symbol is required"
    )


@pytest.mark.parametrize("raw", ["btc-usdt", "b", "btc usdt", "x" * 21, "btcusdt,ét"])
def test_bad_symbol(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    assert config_error(monkeypatch, BOOKFEED_SYMBOLS=raw).startswith("invalid BOOKFEED_SYMBOLS: ")


@pytest.mark.parametrize("depth", ["5", "10", "20"])
def test_depth_from_env(monkeypatch: pytest.MonkeyPatch, depth: str) -> None:
    monkeypatch.setenv("BOOKFEED_DEPTH", depth)
    assert load_settings().depth == int(depth)


@pytest.mark.parametrize("depth", ["7", "0", "100", "twenty"])
def test_bad_depth(monkeypatch: pytest.MonkeyPatch, depth: str) -> None:
    assert config_error(monkeypatch, BOOKFEED_DEPTH=depth).startswith("invalid BOOKFEED_DEPTH: ")


@pytest.mark.parametrize("url", ["ws://127.0.0.1:9000", "wss://stream.binance.com:9443/stream?streams=btcusdt@depth20"])
def test_feed_url_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("BOOKFEED_URL", url)
    assert load_settings().url == url


@pytest.mark.parametrize("url", ["https://stream.binance.com", "stream.binance.com:9443", ""])
def test_bad_feed_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    assert (
        config_error(monkeypatch, BOOKFEED_URL=url)
        == "invalid BOOKFEED_URL: Value error, the feed URL must start with ws:// or wss://"
    )


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("postgres://u:p@db:5432/bookfeed", "postgresql+psycopg2://u:p@db:5432/bookfeed"),
        ("postgresql://u:p@db/bookfeed", "postgresql+psycopg2://u:p@db/bookfeed"),
        ("postgresql+psycopg2://u:p@db/bookfeed", "postgresql+psycopg2://u:p@db/bookfeed"),
    ],
)
def test_database_url_normalised(monkeypatch: pytest.MonkeyPatch, url: str, normalised: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    s = load_settings()
    assert s.database_url == normalised
    assert s.require_database_url() == normalised
    assert normalise_database_url(url) == normalised


@pytest.mark.parametrize("url", ["mysql://u:hunter2@db/bookfeed", "postgresql+asyncpg://u:hunter2@db/x", "db:5432"])
def test_bad_database_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    message = config_error(monkeypatch, DATABASE_URL=url)
    assert message.startswith("invalid DATABASE_URL: ")
    assert "hunter2" not in message  # a DSN's password never reaches a log line


def test_empty_database_url_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    s = load_settings()
    assert s.database_url is None
    with pytest.raises(ConfigError, match="DATABASE_URL is not set"):
        s.require_database_url()


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://h:6380/1", "unix:///tmp/redis.sock"])
def test_redis_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    assert load_settings().require_redis_url() == url


def test_bad_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_error(monkeypatch, REDIS_URL="http://localhost:6379").startswith("invalid REDIS_URL: ")


def test_missing_redis_url() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL is not set"):
        load_settings().require_redis_url()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOOKFEED_BATCH_MAX_FRAMES", "0"),
        ("BOOKFEED_BATCH_MAX_FRAMES", "-1"),
        ("BOOKFEED_BATCH_MAX_FRAMES", "10001"),
        ("BOOKFEED_BATCH_MAX_FRAMES", "many"),
        ("BOOKFEED_BATCH_MAX_WAIT_MS", "0"),
        ("BOOKFEED_BATCH_MAX_WAIT_MS", "1.5"),
        ("BOOKFEED_BUFFER_MAX_FRAMES", "10"),
    ],
)
def test_bad_batch_sizes(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    assert config_error(monkeypatch, **{name: value}).startswith(f"invalid {name}: ")


def test_batch_sizes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOKFEED_BATCH_MAX_FRAMES", "1")
    monkeypatch.setenv("BOOKFEED_BATCH_MAX_WAIT_MS", "60000")
    s = load_settings()
    assert (s.batch_max_frames, s.batch_max_wait_ms) == (1, 60_000)


def test_bad_override_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^invalid BOOKFEED_BATCH_MAX_FRAMES: ") as info:
        load_settings(batch_max_frames=0)
    assert isinstance(info.value, PipelineError)


def test_dotenv_in_working_directory_is_read(clean_env: Path) -> None:
    (clean_env / ".env").write_text("BOOKFEED_SYMBOLS=solusdt\nDATABASE_URL=postgres://u@h/d\n")
    s = load_settings()
    assert s.symbols == ("SOLUSDT",)
    assert s.database_url == "postgresql+psycopg2://u@h/d"


def test_environment_wins_over_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("BOOKFEED_SYMBOLS=solusdt\n")
    monkeypatch.setenv("BOOKFEED_SYMBOLS", "xrpusdt")
    assert load_settings().symbols == ("XRPUSDT",)


def test_settings_can_be_built_directly() -> None:
    s = Settings(symbols="ADAUSDT", depth=5)
    assert (s.symbols, s.depth) == (("ADAUSDT",), 5)


def test_reconnect_policy_is_one_frozen_object_of_the_reconnect_settings() -> None:
    s = Settings(silence_timeout_s=3, stall_timeout_s=2, max_connection_age_s=60, max_reconnect_attempts=4)
    policy = s.reconnect_policy
    assert (policy.silence_timeout_s, policy.stall_timeout_s, policy.max_connection_age_s) == (3, 2, 60)
    assert policy.max_reconnect_attempts == 4
    with pytest.raises(AttributeError):
        policy.stall_timeout_s = 1  # type: ignore[misc]
    defaults = ReconnectPolicy.default()
    assert defaults == load_settings().reconnect_policy  # the environment is empty here
    assert defaults.silence_timeout_s == Settings.model_fields["silence_timeout_s"].default


def test_reconnect_backoff_doubles_up_to_its_cap() -> None:
    policy = ReconnectPolicy.default()
    delays = [policy.backoff_s(n) for n in range(1, 12)]
    assert delays[:3] == [policy.backoff_base_s, 2 * policy.backoff_base_s, 4 * policy.backoff_base_s]
    assert max(delays) == delays[-1] == policy.backoff_cap_s
    assert policy.backoff_s(10_000) == policy.backoff_cap_s


# --- every symbol, shards (issue 9) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["all", "ALL", " All "])
def test_symbols_all(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("BOOKFEED_SYMBOLS", raw)
    s = load_settings()
    assert s.all_symbols and s.symbols == ("ALL",)
    assert not load_settings(symbols="btcusdt").all_symbols


def test_all_cannot_be_mixed_with_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_error(monkeypatch, BOOKFEED_SYMBOLS="all,btcusdt").startswith("invalid BOOKFEED_SYMBOLS: ")


def test_all_needs_a_url_without_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(
        monkeypatch, BOOKFEED_URL="ws://127.0.0.1:9/stream?streams=btcusdt@depth20", BOOKFEED_SYMBOLS="all"
    )
    assert message.startswith("invalid BOOKFEED_SYMBOLS: ") and "without ?streams=" in message
    assert load_settings(url="ws://127.0.0.1:9/stream", symbols="all").all_symbols  # the bare endpoint is fine


def test_quote_and_exclude_are_normalised_with_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOKFEED_SYMBOLS", "all")
    monkeypatch.setenv("BOOKFEED_QUOTE", "usdt, FDUSD,usdt")
    monkeypatch.setenv("BOOKFEED_EXCLUDE", "btcusdt")
    s = load_settings()
    assert (s.quote, s.exclude) == (("USDT", "FDUSD"), ("BTCUSDT",))
    monkeypatch.delenv("BOOKFEED_QUOTE")
    assert load_settings().quote == ()  # unset: every quote asset


@pytest.mark.parametrize("name", ["BOOKFEED_QUOTE", "BOOKFEED_EXCLUDE"])
def test_quote_and_exclude_need_all(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    message = config_error(monkeypatch, BOOKFEED_SYMBOLS="btcusdt", **{name: "usdt"})
    assert message.startswith(f"invalid {name}: ") and "BOOKFEED_SYMBOLS=all" in message


def test_bad_quote(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_error(monkeypatch, BOOKFEED_SYMBOLS="all", BOOKFEED_QUOTE="us-dt").startswith(
        "invalid BOOKFEED_QUOTE"
    )


@pytest.mark.parametrize(
    ("raw", "parsed", "pair"), [("0/2", "0/2", (0, 2)), (" 01 / 3 ", "1/3", (1, 3)), ("", None, (0, 1))]
)
def test_shard(monkeypatch: pytest.MonkeyPatch, raw: str, parsed: str | None, pair: tuple[int, int]) -> None:
    monkeypatch.setenv("BOOKFEED_SHARD", raw)
    s = load_settings()
    assert (s.shard, s.shard_of_n) == (parsed, pair)


@pytest.mark.parametrize("raw", ["2/2", "1", "a/b", "-1/2", "0/0", "1/2/3"])
def test_bad_shard(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    message = config_error(monkeypatch, BOOKFEED_SHARD=raw)
    assert message.startswith("invalid BOOKFEED_SHARD: ") and "i/n" in message


@pytest.mark.parametrize("url", ["ftp://api.binance.com", "api.binance.com", "http://", "http://host:port"])
def test_bad_rest_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    assert config_error(monkeypatch, BOOKFEED_REST_URL=url).startswith("invalid BOOKFEED_REST_URL: ")


def test_rest_url_loses_its_trailing_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOKFEED_REST_URL", "http://127.0.0.1:9443/")
    assert load_settings().rest_url == "http://127.0.0.1:9443"


@pytest.mark.parametrize("url", ["ws://", "ws://host:port/stream", "wss:///stream"])
def test_feed_url_needs_a_host(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    assert "needs a host" in config_error(monkeypatch, BOOKFEED_URL=url)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOOKFEED_STREAMS_PER_CONNECTION", "1025"),
        ("BOOKFEED_STREAMS_PER_CONNECTION", "0"),
        ("BOOKFEED_CONNECTS_PER_5M", "301"),
        ("BOOKFEED_SYMBOLS_REFRESH_S", "1"),
    ],
)
def test_connection_limits_are_bounded(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    assert config_error(monkeypatch, **{name: value}).startswith(f"invalid {name}: ")
