"""The live page at `/` of the API in a real Chromium (Debian's, driven by Playwright): simulator -> feed -> Redis ->
worker -> PostgreSQL -> API -> browser. The page loads, its charts receive live points, its depth chart draws the
current book, the 30 s average, the feed's gaps and the queue's health arrive, and a screenshot is saved with the
test output.

Skips, saying why, where Playwright or Chromium is missing (`.ci/run` installs Debian's `chromium` where apt works).
Set LIVE_PAGE_SCREENSHOT=docs/live-page.png to copy the screenshot there too (the README shows that file)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulator import SimConfig, SimulatorThread
from stack.harness import Harness, Ready, bookfeed_command, free_port, log_line, port_open, wait_until
from tests.e2e._start import stop_together, wait_ready
from tests.services import Services
from workers.commands import beat_command, worker_command
from workers.schema import upgrade_to_head

pytestmark = pytest.mark.e2e

SYMBOLS = ("BTCUSDT", "ETHUSDT")
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT_MAX_BYTES = 400_000
TOKEN = "live page t/ken+="  # characters a URL must escape


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    module = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (the dev extra installs it: pip install playwright)"
    )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (Debian's), or set CHROMIUM_PATH")
    return module.sync_playwright


@dataclass(frozen=True)
class Stack:
    api: str  # base URL of an API without a token
    api_with_token: str  # the same API with BOOKFEED_API_TOKEN=TOKEN


@pytest.fixture(scope="module")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Simulator, feed, worker, beat and two APIs (one with a token) on a fresh database."""
    tmp = tmp_path_factory.mktemp("live_page")
    db_url = services.create_database(prefix="bookfeed_live_page")
    upgrade_to_head(db_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
    env.update(
        DATABASE_URL=db_url,
        REDIS_URL=f"{services.redis_base}/13",
        BOOKFEED_BROKER_KEY_PREFIX=f"bookfeed-live-page-{uuid.uuid4().hex[:8]}:",
        BOOKFEED_LOG_FORMAT="text",
        BOOKFEED_AVERAGES_GRACE_S="1",  # a 30 s window counts as closed 1 s after its end
        BOOKFEED_METRICS_PORT="0",  # no /metrics: other runs may hold the default ports
        BOOKFEED_WORKER_METRICS_PORT="0",
    )
    harness = Harness(logs=tmp / "logs", env=env)
    port, token_port = free_port(), free_port()
    with SimulatorThread(SimConfig(symbols=SYMBOLS, seed=7, rate=20.0)) as sim:
        try:
            # Beat computes the averages 6 s past each 30 s boundary (workers.schedules): the feed first, so that
            # books fill a window; beat alone next, so that it starts soon; then the others, together.
            feed = bookfeed_command("feed", "--url", sim.url([f"{s.lower()}@depth20" for s in SYMBOLS]))
            harness.start("feed", feed, ready=log_line("): live"))  # "connection 1 (2 streams): live"
            harness.start("beat", beat_command(tmp / "schedule"), ready=log_line("watching averages"))
            worker = worker_command(concurrency=1, name=f"live-page-{uuid.uuid4().hex[:6]}", quiet=True)
            token_env = {"BOOKFEED_API_TOKEN": TOKEN}
            starts: list[tuple[str, list[str], dict[str, str], Ready]] = [
                ("worker", worker, {}, log_line("ready.")),
                ("api", _api_command(port), {}, port_open(port)),
                ("api-token", _api_command(token_port), token_env, port_open(token_port)),
            ]
            started = []
            for name, argv, extra_env, ready in starts:
                started.append((harness.start(name, argv, extra_env=extra_env), ready, time.monotonic()))
            wait_ready(started)
            yield Stack(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{token_port}")
        finally:
            stop_together(harness, first=("feed",))
            services.drop_database(db_url)


def _api_command(port: int) -> list[str]:
    return bookfeed_command("api", "--host", "127.0.0.1", "--port", str(port))


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def _card(page: Any, symbol: str, attr: str) -> int:
    return int(page.get_attribute(f'section.card[data-symbol="{symbol}"]', f"data-{attr}") or 0)


def _wait_cards(page: Any, attr: str, at_least: dict[str, int], *, timeout: float, what: str) -> None:
    wait_until(
        lambda: all(_card(page, s, attr) >= n for s, n in at_least.items()), timeout=timeout, what=what, interval=0.5
    )


def _wait_live_ok(page: Any) -> None:
    """The live pill says "ok": the websocket is open and every card had a live point within the page's 5 s. Waited
    for, not read once: one pause of over 5 s between two pushes (a worker busy with a commit or beat's task on a
    loaded machine) turns it "warn" until the next point, which a single reading took for a failure."""
    wait_until(
        lambda: page.get_attribute("#ws-state", "data-state") == "ok", timeout=20, what="the live pill ok", interval=0.5
    )


def _wait_stored(api: str) -> None:
    def stored() -> bool:
        listed = {s["symbol"] for s in _get_json(api + "/v1/symbols")["items"]}
        return listed >= set(SYMBOLS)

    wait_until(stored, timeout=60, what="both symbols listed by GET /v1/symbols", interval=0.5)


def _browse(sync_playwright: Any, url: str, errors: list[str], check: Callable[[Any], None]) -> None:
    """Open `url` in Chromium and run `check(page)`; console errors and uncaught exceptions go to `errors`."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(url, wait_until="load")
            check(page)
        finally:
            browser.close()


def test_live_page_charts_receive_live_points_in_chromium(
    sync_playwright: Any, stack: Stack, tmp_path: Path, record_property: Any
) -> None:
    _wait_stored(stack.api)
    errors: list[str] = []
    shot = tmp_path / "live-page.png"

    def check(page: Any) -> None:
        assert page.title() == "bookfeed · live"
        page.wait_for_selector('section.card[data-symbol="ETHUSDT"] .chart-price canvas', timeout=30_000)

        # Live points arrive over WS /v1/live, and keep arriving.
        _wait_cards(page, "live-points", dict.fromkeys(SYMBOLS, 5), timeout=60, what="5 live points per symbol")
        first = {s: _card(page, s, "live-points") for s in SYMBOLS}
        _wait_cards(page, "live-points", {s: n + 10 for s, n in first.items()}, timeout=60, what="10 more each")
        _wait_cards(page, "chart-points", dict.fromkeys(SYMBOLS, 10), timeout=30, what="points on the charts")
        # The depth chart holds the current book: depth20 is 20 levels a side.
        _wait_cards(page, "depth-levels", dict.fromkeys(SYMBOLS, 40), timeout=30, what="a depth20 book drawn")
        # The feed's start is a gap of each stream (`feed started`); the page marks it.
        _wait_cards(page, "gaps", dict.fromkeys(SYMBOLS, 1), timeout=30, what="the feed's start marked as a gap")
        # Beat closes a 30 s window at most ~31 s after the first book; the page reads averages every 10 s.
        _wait_cards(page, "avg30", dict.fromkeys(SYMBOLS, 1), timeout=90, what="a 30 s average on each chart")
        _wait_live_ok(page)
        assert page.get_attribute("#feed-state", "data-state") == "ok"
        # The queue, from GET /v1/health (found in /openapi.json): tasks waiting, the oldest batch's age, the one feed.
        queue = page.inner_text("#queue-state")
        assert re.fullmatch(r"queue: \d+ task\(s\), oldest \d+ s, 1 feed\(s\)", queue), queue
        assert page.get_attribute("#queue-state", "data-state") in ("ok", "warn"), queue
        for s in SYMBOLS:
            price = page.inner_text(f'section.card[data-symbol="{s}"] .price')
            assert float(price) > 0, price

        page.wait_for_timeout(600)  # one more redraw of every chart before the picture
        page.screenshot(path=str(shot), full_page=True)

    _browse(sync_playwright, f"{stack.api}/?symbols={','.join(SYMBOLS)}", errors, check)
    assert errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size < SCREENSHOT_MAX_BYTES
    record_property("screenshot", str(shot))
    copy_to = os.environ.get("LIVE_PAGE_SCREENSHOT")
    if copy_to:
        shutil.copyfile(shot, copy_to)


def test_live_page_of_an_api_with_a_token_works_when_opened_with_it(sync_playwright: Any, stack: Stack) -> None:
    """With BOOKFEED_API_TOKEN the page, its files, the /v1 reads and the websocket all need the token: opened as
    `/?access_token=...`, the page carries it everywhere and its charts still receive live points."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(stack.api_with_token + "/", timeout=10)
    refused.value.close()
    assert refused.value.code == 401
    _wait_stored(stack.api)
    errors: list[str] = []

    def check(page: Any) -> None:
        _wait_cards(page, "live-points", {"BTCUSDT": 5}, timeout=60, what="5 live points through the token")
        _wait_cards(page, "depth-levels", {"BTCUSDT": 40}, timeout=30, what="the book read with the token")
        _wait_live_ok(page)

    query = urllib.parse.urlencode({"access_token": TOKEN, "symbols": "BTCUSDT"})
    _browse(sync_playwright, f"{stack.api_with_token}/?{query}", errors, check)
    assert errors == []
