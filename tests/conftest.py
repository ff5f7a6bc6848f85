"""Run-wide fixtures. Integration and e2e tests get a fresh migrated database and a private Redis database."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from tests.services import (
    Services,
    start_services,
    start_worker,
    stop_process,
)

TEST_REDIS_DB = int(os.environ.get("BOOKFEED_TEST_REDIS_DB", "15"))
# Every run's queues live under their own key prefix, so runs sharing a Redis never see each other's tasks.
BROKER_PREFIX = f"bookfeed-test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Commands under test configure the root logger; put it back so no test leaks handlers into the next."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    s = start_services(tmp_path_factory.mktemp("services"))
    yield s
    s.close()


@pytest.fixture(scope="session")
def database_url(services: Services) -> Iterator[str]:
    from workers.schema import upgrade_to_head

    url = services.create_database()
    upgrade_to_head(url)
    yield url
    services.drop_database(url)


@pytest.fixture(scope="session")
def redis_url(services: Services) -> Iterator[str]:
    url = f"{services.redis_base}/{TEST_REDIS_DB}"
    yield url
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(BROKER_PREFIX + "*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def broker_prefix() -> str:
    return BROKER_PREFIX


@pytest.fixture(scope="module")
def own_db(services: Services) -> Iterator[Engine]:
    """A database of the module's own, migrated to head, dropped after the module: for tests that drop partitions
    or delete what every other test would see."""
    from sqlalchemy.pool import NullPool

    from workers.schema import upgrade_to_head

    url = services.create_database()
    upgrade_to_head(url)
    eng = create_engine(url, poolclass=NullPool)
    yield eng
    eng.dispose()
    services.drop_database(url)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url, pool_size=2)
    yield eng
    eng.dispose()


DATA_TABLES = (
    "book_snapshots",
    "rejected_frames",
    "ingest_batches",
    "price_average_windows",
    "averages_progress",
    "feed_gap_intervals",
)


def empty_data_tables(engine: Engine) -> None:
    """Empty every data table (the schema stays): what a test or module that reads the whole database starts from,
    whatever the tests before it stored."""
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(DATA_TABLES)}"))


@pytest.fixture
def clean_db(engine: Engine) -> Engine:
    """Empty every data table before the test (the schema stays)."""
    empty_data_tables(engine)
    return engine


def service_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "BOOKFEED_LOG_FORMAT": "text",
            "BOOKFEED_BROKER_KEY_PREFIX": BROKER_PREFIX,
            # No /metrics unless a test asks for it: the default ports may be taken by another process.
            "BOOKFEED_METRICS_PORT": "0",
            "BOOKFEED_WORKER_METRICS_PORT": "0",
            **extra,
        }
    )
    return env


@pytest.fixture(scope="session")
def worker(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real Celery worker (prefork, 2 processes) shared by the run; yields its log file."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = start_worker(service_env(database_url, redis_url), log)
    yield log
    stop_process(proc)
