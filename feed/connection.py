"""The one home of a single websocket connection of the feed: its reader thread, subscribing by message (or the
streams of a full URL), the silence watchdog, capped backoff, and its state and last error as seen from outside.
Frames go to the shared StreamTracker; what happens when the connection is lost or wants replacing is its pool's."""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import websocket

from feed.control import ControlError, Pacer, chunks, describe, parse_reply, request
from feed.frames import EXCERPT_CHARS, Frame, FrameReader, Reconnect, open_socket
from feed.ids import control_event
from feed.tracker import StreamTracker
from models.errors import RetriesExhaustedError
from models.settings import ReconnectPolicy

__all__ = ["RECONNECT_KINDS", "Connection", "ConnectionStatus", "Host", "State", "reconnect_kind"]

logger = logging.getLogger(__name__)

_STABLE_S = 10.0  # a connection that lasted less (or less than the silence timeout) counts as a failed attempt
_REPLY_TIMEOUT_S = 10.0  # a control request unanswered this long fails the connection
_VERIFY_TRIES = 3  # LIST_SUBSCRIPTIONS checks (each resubscribing what is missing) before giving up
_DATA_PREFIX = '{"stream":"'  # how every combined-stream data message starts (replies and events do not)


# The kinds of bookfeed_reconnects_total{reason}: a bounded label set (the reasons themselves hold numbers and text).
RECONNECT_KINDS = ("connect_failed", "silent", "server_closed", "control_error", "socket_error", "other")


def reconnect_kind(reason: str) -> str:
    """The kind of a session's end reason (as `_session` returns it), one of RECONNECT_KINDS."""
    if reason.startswith("no complete message"):
        return "silent"
    if reason == "server closed the connection":
        return "server_closed"
    if reason.startswith(("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "subscriptions still differ")):
        return "control_error"
    if ": " in reason and reason.split(":", 1)[0].replace("_", "").isalnum():
        return "socket_error"  # "<ExceptionName>: <description>"
    return "other"


class State(enum.StrEnum):
    CONNECTING = "connecting"
    SUBSCRIBING = "subscribing"
    LIVE = "live"
    BACKOFF = "backoff"
    ROTATING = "rotating"  # a replacement is being opened; this one still delivers
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """What the stats snapshot shows of one connection (`since`: unix time of its last state change)."""

    id: str
    state: str
    streams: int
    last_error: str | None
    since: float
    frames: int


class Host(Protocol):
    """What a connection asks of its pool."""

    tracker: StreamTracker

    def admit(self, conn: Connection, closing: threading.Event) -> bool:
        """Wait for a connect slot (the connection rate); False when `closing` was set first."""
        ...

    def lost(self, conn: Connection, reason: str) -> None:
        """The connection's socket ended (not by `close`): record gaps for what no other connection covers."""
        ...


class Connection:
    """One websocket connection, read by its own thread until `close()`, reconnecting with capped backoff.

    With `subscribe` it connects to `url` (a bare `/stream` endpoint) and SUBSCRIBEs its streams in chunks, at most
    control.MESSAGES_PER_S messages a second, each reply awaited by id; then checks them with LIST_SUBSCRIPTIONS
    (resubscribing what is missing), after every (re)connect. Without it the URL names the streams. `add`/`remove`
    change the streams while live. `rotate_wanted` is set (and the connection goes on) at `serverShutdown` or once
    it is older than `policy.max_connection_age_s`; its pool opens the replacement and closes this one.
    A connection that ends within 10 s (or the silence timeout) counts as a failed attempt for the backoff;
    `exhausted` is set after `policy.max_reconnect_attempts` failed connects in a row (0: never).
    """

    def __init__(
        self,
        conn_id: int,
        *,
        url: str,
        streams: Iterable[str],
        subscribe: bool,
        host: Host,
        policy: ReconnectPolicy,
        max_frame_bytes: int,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.id = str(conn_id)
        self.url = url
        self.subscribe = subscribe
        self._host = host
        self._tracker = host.tracker
        self.policy = policy
        self._max_frame_bytes = max_frame_bytes
        self._clock_ns = clock_ns
        self._silence_ns = int(policy.silence_timeout_s * 1e9)
        self._max_age_ns = int(policy.max_connection_age_s * 1e9)
        self._stable_ns = int(min(_STABLE_S, policy.silence_timeout_s) * 1e9)
        self._wanted: frozenset[str] = frozenset(streams)
        self.confirmed: frozenset[str] = frozenset()  # subscribed on the socket now (the server said so)
        self._dirty = False  # _wanted changed while live
        self._closing = threading.Event()
        self.state = State.CONNECTING
        self.since = time.time()
        self.last_error: str | None = None
        self.frames = 0  # data messages received, duplicates included
        self.live_frames = 0  # ...since it last went live
        self.reconnects = 0
        # reconnects and failed connects by kind (reconnect_kind): bookfeed_reconnects_total{reason}
        self.reconnect_kinds: Counter[str] = Counter()
        self.retiring = False  # its pool is replacing it: it never reconnects
        self.rotate_wanted: str | None = None  # why it should be replaced
        self.exhausted: RetriesExhaustedError | None = None
        self._pacer = Pacer()
        self._next_id = 0
        self._awaiting: int | None = None
        self._reply: Any = None
        self._ws: websocket.WebSocket | None = None
        self._reader: FrameReader | None = None
        self._thread = threading.Thread(target=self._run, name=f"conn-{conn_id}", daemon=True)

    @property
    def streams(self) -> frozenset[str]:
        """The streams this connection is meant to carry."""
        return self._wanted

    def label(self) -> str:
        return f"connection {self.id} ({len(self._wanted)} streams)"

    def status(self) -> ConnectionStatus:
        return ConnectionStatus(self.id, str(self.state), len(self._wanted), self.last_error, self.since, self.frames)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Ask the reader to close the socket and end (within about a second); see `join`."""
        self._closing.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def retire(self) -> None:
        """Its replacement is on the way: shown as rotating, and it will not reconnect."""
        self.retiring = True
        if self.state in (State.LIVE, State.SUBSCRIBING):
            self._set_state(State.ROTATING)

    def add(self, streams: Iterable[str]) -> None:
        """Carry these streams too (SUBSCRIBEd by the reader)."""
        self._wanted = self._wanted | frozenset(streams)
        self._dirty = True

    def remove(self, streams: Iterable[str]) -> None:
        """Stop carrying these streams (UNSUBSCRIBEd by the reader)."""
        self._wanted = self._wanted - frozenset(streams)
        self._dirty = True

    def _set_state(self, state: State, error: str | None = None) -> None:
        if self.retiring and state in (State.LIVE, State.SUBSCRIBING):
            state = State.ROTATING
        if error is not None:
            self.last_error = error
        if state != self.state:
            self.state, self.since = state, time.time()

    # --- the reader thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0  # failed attempts in a row: refused connects and connections that ended before they were stable
        try:
            while not self._closing.is_set():
                self._set_state(State.CONNECTING)
                if not self._host.admit(self, self._closing):
                    return
                try:
                    ws, reader = open_socket(
                        self.url,
                        max_bytes=self._max_frame_bytes,
                        silence_ns=self._silence_ns,
                        clock_ns=self._clock_ns,
                        stop=self._closing,
                        on_refused=self._refused,
                    )
                except Exception as exc:  # refused, DNS, TLS, handshake: all are "try again later"
                    failures += 1
                    self.reconnect_kinds["connect_failed"] += 1
                    if self._give_up(failures, exc):
                        return
                    self._back_off(failures, f"connect failed: {describe(exc)}")
                    continue
                opened = self._clock_ns()
                reason = self._session(ws, reader)
                if self._closing.is_set():
                    return
                self.reconnects += 1
                self.reconnect_kinds[reconnect_kind(reason)] += 1
                self._host.lost(self, f"reconnected: {reason}")
                if self.retiring:
                    return
                lasted_ns = self._clock_ns() - opened
                if lasted_ns < self._stable_ns:
                    failures += 1
                    self._back_off(failures, f"{reason} (after {lasted_ns / 1e9:.1f}s)")
                else:
                    failures = 0
                    logger.warning("%s: reconnecting: %s", self.label(), reason)
        finally:
            self._set_state(State.CLOSED)

    def _give_up(self, failures: int, exc: Exception) -> bool:
        limit = self.policy.max_reconnect_attempts
        if not limit or failures < limit:
            return False
        self.exhausted = RetriesExhaustedError(f"{self.label()}: could not connect: {describe(exc)}", attempts=failures)
        self._set_state(State.CLOSED, f"connect failed: {describe(exc)}; gave up after {failures} attempts")
        return True

    def _back_off(self, failures: int, what: str) -> None:
        delay = self.policy.backoff_s(failures) * random.uniform(0.5, 1.0)
        self._set_state(State.BACKOFF, f"{what}; retry in {delay:.0f} s")
        logger.warning("%s: %s; retry %d in %.1fs", self.label(), what, failures, delay)
        self._closing.wait(delay)

    def _session(self, ws: websocket.WebSocket, reader: FrameReader) -> str:
        """Subscribe, then read one connection until it ends or the connection is closed; returns why it ended."""
        self._ws, self._reader = ws, reader
        self._awaiting, self._reply = None, None
        self.rotate_wanted = None  # a wish of the connection before: this one starts afresh
        opened = self._clock_ns()
        reason = "stopped"
        try:
            if self.subscribe:
                self._set_state(State.SUBSCRIBING)
                self._dirty = False
                self._sync()
                self._verify()
            else:
                self.confirmed = self._wanted
            self.live_frames = 0
            self._set_state(State.LIVE)
            logger.info("%s: live", self.label())
            while True:
                if self._dirty and self.subscribe:
                    self._dirty = False
                    self._sync()
                self._read_some()
                if self._max_age_ns and self._clock_ns() - opened > self._max_age_ns and not self.rotate_wanted:
                    self.rotate_wanted = "connection age limit reached"
        except Reconnect as exc:
            reason = str(exc)
        except ControlError as exc:
            reason = str(exc)
            self.last_error = reason
        except (websocket.WebSocketException, OSError) as exc:
            reason = f"{type(exc).__name__}: {describe(exc)}"
        finally:
            self.confirmed = frozenset()
            self._ws = self._reader = None
            reader.close()
        if reader.oversized:  # dropped in the middle of discarding a message over the cap
            excerpt = reader.head.decode("utf-8", errors="replace")[:EXCERPT_CHARS]
            self._tracker.reject(self._clock_ns(), f"{reader.message_bytes}+ bytes, unfinished: {reason}", excerpt)
        return reason

    def _sync(self) -> None:
        """SUBSCRIBE what is wanted and not confirmed, UNSUBSCRIBE what is confirmed and no longer wanted."""
        wanted = self._wanted
        for chunk in chunks(sorted(wanted - self.confirmed)):
            self._request("SUBSCRIBE", chunk)
            self.confirmed = self.confirmed | frozenset(chunk)
        for chunk in chunks(sorted(self.confirmed - wanted)):
            self._request("UNSUBSCRIBE", chunk)
            self.confirmed = self.confirmed - frozenset(chunk)

    def _verify(self) -> None:
        """LIST_SUBSCRIPTIONS must list exactly the wanted streams; what is missing is subscribed again."""
        for _ in range(_VERIFY_TRIES):
            listed = self._request("LIST_SUBSCRIPTIONS")
            if not isinstance(listed, list):
                raise ControlError(f"LIST_SUBSCRIPTIONS answered {str(listed)[:100]!r}, not a list")
            self.confirmed = frozenset(s for s in listed if isinstance(s, str))
            missing, extra = self._wanted - self.confirmed, self.confirmed - self._wanted
            if not missing and not extra:
                return
            logger.warning(
                "%s: %d streams missing and %d extra after subscribing (e.g. %s); correcting",
                self.label(),
                len(missing),
                len(extra),
                sorted(missing or extra)[0],
            )
            self._sync()
        raise ControlError(f"subscriptions still differ after {_VERIFY_TRIES} LIST_SUBSCRIPTIONS checks")

    def _request(self, method: str, params: list[str] | None = None) -> Any:
        """Send one request within the pace and read (handling data) until its reply; returns its result.
        Raises ControlError on an error reply or none in time."""
        ws = self._ws
        assert ws is not None
        while (delay := self._pacer.delay()) > 0:
            self._read_for(delay)
        self._next_id += 1
        self._awaiting, self._reply = self._next_id, None
        ws.send(request(self._next_id, method, params or ()))
        self._pacer.sent()
        deadline = time.monotonic() + _REPLY_TIMEOUT_S
        while self._reply is None:
            if time.monotonic() > deadline:
                raise ControlError(f"{method} got no reply within {_REPLY_TIMEOUT_S:.0f}s")
            self._read_some()
        reply, self._awaiting, self._reply = self._reply, None, None
        if reply.error is not None:
            raise ControlError(f"{method} refused: {reply.error}")
        return reply.result

    def _read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read_some()

    def _read_some(self) -> None:
        """Read what has arrived (or time out within a second) and pass it on: data messages to the tracker, in runs
        (one call per run, not per message), the rest one by one in between."""
        reader = self._reader
        assert reader is not None
        messages = reader.read()
        if not messages:
            return
        data: list[Frame] = []
        for message in messages:
            if message[1].startswith(_DATA_PREFIX):
                data.append(message)
                continue
            if data:
                self._deliver(data)
                data = []
            self._control(*message)
        if data:
            self._deliver(data)

    def _deliver(self, data: list[Frame]) -> None:
        self.frames += len(data)
        self.live_frames += len(data)
        self._tracker.handle_many(data)

    def _refused(self, received_ns: int, reason: str, excerpt: bytes) -> None:
        """A message over the size cap, read and discarded by the reader."""
        self._tracker.reject(received_ns, reason, excerpt.decode("utf-8", errors="replace")[:EXCERPT_CHARS])

    def _control(self, received_ns: int, raw: str) -> None:
        reply = parse_reply(raw)
        if reply is not None:
            if reply.id == self._awaiting:
                self._reply = reply
            return
        event = control_event(raw)
        if event == "reply":  # an answer to no request of ours (an id we did not send)
            return
        if event == "serverShutdown":
            logger.info("%s: the server announced its shutdown", self.label())
            self.rotate_wanted = "server announced shutdown"
            return
        self._tracker.handle(received_ns, raw)  # not ours to judge: forwarded, the worker rejects it with a reason
