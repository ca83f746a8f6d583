"""The device client: one device's connection to a Switchboard node.

The same names and semantics as the Go SDK (device/device.go): a Client
made from a Config, handle() for commands, event(), on_desired(),
report(), run() until close().
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import os
import random
import re
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Coroutine, Mapping, TypeVar, Union

from . import _ws, protocol
from ._backoff import Backoff, rebalance_delay, retry_after
from ._dedup import Dedup
from ._tls import client_context
from .errors import DialError, NotConnected, PinMismatch, Replaced, Unauthorized

__all__ = ["Client", "Command", "Config", "Handler"]

T = TypeVar("T")


@dataclass(frozen=True)
class Command:
    """One command from the node. args is its decoded JSON (None when
    absent); deadline, when the node sent one (RFC 3339), is when its
    sender stops waiting."""

    id: str
    name: str
    args: Any = None
    deadline: datetime | None = None

    def expired(self) -> bool:
        """Whether the command's deadline has passed (never, without one)."""
        return self.deadline is not None and self.deadline.timestamp() <= time.time()


Handler = Callable[[Command], Union[Any, Awaitable[Any]]]
"""Answers one command: returns the result (JSON-encodable; None leaves it
out), or raises, which becomes a reply with ok false and the exception's
text as its error. An async handler runs as a task on the client's loop;
a plain function runs in a worker thread (asyncio.to_thread), so it may
block."""

DesiredHandler = Callable[[dict[str, Any], int], Union[None, Awaitable[None]]]


@dataclass
class Config:
    """Where and as whom to connect, and how to wait between sessions.
    Durations are in seconds."""

    url: str  # wss://host:8443/v1/connect
    id: str
    secret: str
    ca_file: str | None = None  # PEM: trust this CA or certificate instead of the system's roots
    ssl_context: ssl.SSLContext | None = None  # wins over ca_file
    # pin, when set, is the node certificate's SHA-256 fingerprint ("AB:CD:…",
    # colons optional, any case): any other certificate is refused during the
    # TLS handshake, before the credentials are sent. Alone (no CA), it is the
    # whole check, for a self-signed node.
    pin: str | None = None

    min_backoff: float = 0.5  # first reconnect delay cap
    max_backoff: float = 30.0  # largest reconnect delay cap
    # replaced_delay is the longest wait after a newer session of this device
    # replaced ours (4008); the wait is uniform in [half of it, all of it], so
    # that two copies of one device do not trade places in step.
    replaced_delay: float = 60.0
    read_timeout: float = 60.0  # a node silent this long (no frame, no ping) is given up
    dedup: int = 1024  # recent command ids remembered, to answer a redelivery without re-running it
    lasting_session: float = 10.0  # a session this long (or that got frames) resets the backoff
    open_timeout: float = 10.0  # TCP, TLS and the upgrade
    # shutdown_grace bounds how long close() lets running handlers finish, so
    # that their replies go out on the open session, before closing it.
    shutdown_grace: float = 1.0

    logger: logging.Logger | None = None  # default: logging.getLogger("switchboard_device")
    # on_connect and on_disconnect, when set, are told of each session (the
    # latter with why it ended, None for a clean shutdown); on_dial_error of
    # each attempt to connect that failed, before the wait that follows.
    on_connect: Callable[[], None] | None = None
    on_disconnect: Callable[[BaseException | None], None] | None = None
    on_dial_error: Callable[[DialError], None] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """A Config from the conformance suite's variables: SWITCHBOARD_URL,
        _DEVICE_ID, _DEVICE_SECRET, _CA, _PIN, _MIN_BACKOFF_MS,
        _MAX_BACKOFF_MS, _REPLACED_DELAY_MS, _READ_TIMEOUT_MS. Raises
        KeyError for a missing URL, id or secret, ValueError for a bad number."""
        env = os.environ if environ is None else environ

        def seconds(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            ms = float(raw)
            if ms <= 0:
                raise ValueError(f"{name}={raw}: want a positive number of milliseconds")
            return ms / 1000

        values: dict[str, Any] = {
            "url": env["SWITCHBOARD_URL"],
            "id": env["SWITCHBOARD_DEVICE_ID"],
            "secret": env["SWITCHBOARD_DEVICE_SECRET"],
            "ca_file": env.get("SWITCHBOARD_CA") or None,
            "pin": env.get("SWITCHBOARD_PIN") or None,
            "min_backoff": seconds("SWITCHBOARD_MIN_BACKOFF_MS", cls.min_backoff),
            "max_backoff": seconds("SWITCHBOARD_MAX_BACKOFF_MS", cls.max_backoff),
            "replaced_delay": seconds("SWITCHBOARD_REPLACED_DELAY_MS", cls.replaced_delay),
            "read_timeout": seconds("SWITCHBOARD_READ_TIMEOUT_MS", cls.read_timeout),
        }
        values.update(overrides)
        return cls(**values)


MAX_OUTBOX = 1024
"""Replies and reports kept while there is no session; past it the oldest goes."""

MAX_PENDING_EVENTS = 64
"""Events queued on a session before event() waits for the writer."""

_CLOSE_TIMEOUT = 1.0  # for the closing handshake, so that shutdown stays quick


@dataclass
class _Outcome:
    """How a session (or an attempt at one) ended."""

    err: BaseException | None = None
    code: int = 0  # close code received; 1006 for a dropped socket
    reason: str = ""
    frames: int = 0  # frames received
    timed_out: bool = False  # the read watchdog gave it up
    opened: float | None = None  # when the session was up (monotonic); None if it never was


@dataclass
class _Frame:
    text: str
    durable: bool  # replies and reports outlive their session; events and pongs do not
    event: bool = False  # counted in _pending_events


class Client:
    """One device's connection. Register handlers before run()."""

    def __init__(self, config: Config) -> None:
        if not config.url.startswith(("wss://", "ws://")):
            raise ValueError(f"url {config.url!r}: want wss://host:port/v1/connect")
        if not config.id or ":" in config.id:
            raise ValueError(f"device id {config.id!r}: want 1-128 letters, digits and ._- (no ':')")
        Backoff(config.min_backoff, config.max_backoff)  # validates the bounds
        for name in ("replaced_delay", "read_timeout"):
            if getattr(config, name) <= 0:
                raise ValueError(f"{name} must be positive")
        self._cfg = config
        self._ssl = client_context(config.ca_file, config.ssl_context, config.pin) if config.url.startswith("wss:") else None
        self._log = config.logger or logging.getLogger("switchboard_device")
        self._handlers: dict[str, Handler] = {}
        self._dedup = Dedup(config.dedup)
        self._on_desired: DesiredHandler | None = None
        self._desired_version = 0  # the last version given to on_desired

        # Frames to write, in order: replies and reports (durable, kept
        # across sessions) and the current session's events and pongs.
        self._outbox: deque[_Frame] = deque()
        self._pending_events = 0
        self._connected = False
        self._session_no = 0
        self._running: set[asyncio.Task[None]] = set()  # command handlers; they outlive sessions

        # Bound to the loop by run().
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None  # the writer has frames to write
        self._event_room: asyncio.Event | None = None  # an event may be queued
        self._stop: asyncio.Event | None = None
        self._up: asyncio.Event | None = None  # set while a session is open
        self._close_requested = False
        self._cancelled = False  # run() was cancelled during a session
        self._graced = False  # handlers were given shutdown_grace already
        self._started = False

    # ---- registration -------------------------------------------------

    def handle(self, name: str, fn: Handler) -> None:
        """Register the handler for commands called name."""
        if not protocol.valid_name(name):
            raise ValueError(f"command name {name!r}: want 1-128 letters, digits and _.:/- starting with a letter or digit")
        self._handlers[name] = fn

    def on_desired(self, fn: DesiredHandler) -> None:
        """Register the function called with the device's desired state:
        the whole document and its version, on connect and on each change.
        It runs on the read loop (a slow one delays commands), with versions
        in increasing order; a version not newer than the last is not passed
        again, so it may treat each call as "apply this". It may be async."""
        self._on_desired = fn

    # ---- sending ------------------------------------------------------

    async def event(self, name: str, data: Any = None) -> None:
        """Send a telemetry or alert event on the current session. Events
        are at most once: raises NotConnected without a session, and one
        queued as the session ends is lost. Waits while MAX_PENDING_EVENTS
        are queued. Call it on the client's loop."""
        if not protocol.valid_name(name):
            raise ValueError(f"event name {name!r}: want 1-128 letters, digits and _.:/- starting with a letter or digit")
        frame: dict[str, Any] = {"type": protocol.TYPE_EVENT, "name": name}
        if data is not None:
            frame["data"] = data
        text = protocol.encode(frame)
        if len(text.encode()) > protocol.MAX_FRAME:
            raise ValueError(f"event {name} is over {protocol.MAX_FRAME} bytes")
        session = self._session_no
        while True:
            if not self._connected or self._session_no != session or self._event_room is None:
                raise NotConnected("not connected")
            if self._pending_events < MAX_PENDING_EVENTS:
                break
            self._event_room.clear()
            await self._event_room.wait()
        self._pending_events += 1
        self._push(_Frame(text, durable=False, event=True))

    def report(self, patch: Mapping[str, Any]) -> None:
        """Queue a JSON merge patch (RFC 7396) of the device's reported
        state: {"celsius": 20.5, "old_key": None}. Like a reply it is kept
        until a session writes it, whichever session that is. Safe to call
        from any thread (a sync handler's, say). Raises ValueError for a
        patch that is not a JSON object or is over 32 KiB."""
        if not isinstance(patch, Mapping):
            raise ValueError("a report is a JSON object")
        reported = protocol.encode(dict(patch))
        if len(reported.encode()) > protocol.MAX_STATE:
            raise ValueError(f"a report is at most {protocol.MAX_STATE} bytes")
        text = '{"type":"report","reported":' + reported + "}"
        self._threadsafe(self._queue_durable, text)

    # ---- running ------------------------------------------------------

    async def run(self) -> None:
        """Keep the device connected until close() (returns) or its
        credentials are refused (raises Unauthorized).

        Between sessions it waits with exponential backoff and full jitter
        (uniform in [0, min(max_backoff, min_backoff·2^attempt)]); after a
        1012 the delay the node gave, after a 4008 replaced_delay
        (jittered), after a 4029 a backoff whose cap is at least
        2·min_backoff, and after a 429 or 503 at least its Retry-After. Cancelling the task running it stops
        it like close()."""
        if self._started:
            raise RuntimeError("Client.run called twice")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._event_room = asyncio.Event()
        self._stop = asyncio.Event()
        self._up = asyncio.Event()
        if self._close_requested:
            self._stop.set()
        if self._outbox:
            self._wake.set()
        retry = Backoff(self._cfg.min_backoff, self._cfg.max_backoff)
        try:
            while not self._stop.is_set():
                outcome = await self._session()
                if self._stop.is_set():
                    break
                if isinstance(outcome.err, Unauthorized):
                    what = _describe(outcome) if outcome.code else str(outcome.err)
                    self._log.error("device %s: %s: stopping", self._cfg.id, what)
                    raise outcome.err
                if outcome.opened is not None and (
                    outcome.frames > 0 or time.monotonic() - outcome.opened >= self._cfg.lasting_session
                ):
                    retry.reset()  # the session worked: the next failure starts small again
                delay = self._next_delay(outcome, retry)
                self._log.info("device %s: %s; reconnecting in %.2fs", self._cfg.id, _describe(outcome), delay)
                if await self._sleep(delay):
                    break
        finally:
            await self._finish_handlers()
        if self._cancelled:
            raise asyncio.CancelledError()

    def close(self) -> None:
        """Stop run(): the session is closed with 1000 once running handlers
        had shutdown_grace to finish. Safe to call from any thread, or from
        a signal handler (loop.add_signal_handler)."""
        self._close_requested = True
        if self._stop is not None:
            self._threadsafe(self._stop.set)

    @property
    def connected(self) -> bool:
        """Whether the device has a session now."""
        return self._connected

    async def wait_connected(self) -> None:
        """Wait until the device has a session (at once if it has one): a
        handler whose session ended under it can wait for the next before
        sending an event. Call it on the client's loop, once run() started."""
        if self._up is None:
            raise RuntimeError("Client.run has not started")
        await self._up.wait()

    # ---- internals ----------------------------------------------------

    def _next_delay(self, outcome: _Outcome, retry: Backoff) -> float:
        cfg = self._cfg
        if isinstance(outcome.err, Replaced):
            return random.uniform(cfg.replaced_delay / 2, cfg.replaced_delay)
        if outcome.code == protocol.CLOSE_REBALANCE:
            return rebalance_delay(outcome.reason)
        if outcome.code == protocol.CLOSE_RATE_LIMITED:
            # Sent too fast: back off as after a failure, with the attempt
            # count grown (a cap of at least 2·min_backoff), still jittered
            # so that the devices of a busy node do not return in step.
            retry.attempts = max(retry.attempts, 1)
            return retry.next()
        if isinstance(outcome.err, DialError) and outcome.err.retry_after > 0:
            # A node that turned us away (full, draining, throttling) said
            # when to come back: not before, and later still if it keeps
            # refusing.
            return max(outcome.err.retry_after, retry.next())
        return retry.next()

    async def _sleep(self, delay: float) -> bool:
        """Wait delay seconds; True, early, when the client is stopped."""
        assert self._stop is not None
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
            return True
        except asyncio.TimeoutError:
            return False

    async def _until_stopped(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """Run coro unless the client is stopped first (None)."""
        assert self._stop is not None
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._cancel_run()
        stopper.cancel()
        if self._stop.is_set():
            task.cancel()
            # Let it clean up; a connection that came meanwhile is dropped.
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is None:
                transport = getattr(task.result(), "transport", None)
                if transport is not None:
                    transport.abort()
            return None
        return task.result()

    def _cancel_run(self) -> None:
        """run() was cancelled: stop as close() would (closing the session
        with 1000), then go on cancelling (run re-raises)."""
        assert self._stop is not None
        self._cancelled = True
        self._stop.set()

    async def _session(self) -> _Outcome:
        """One connection: connect, serve until it ends, say how it ended."""
        outcome = _Outcome()
        cfg = self._cfg
        credentials = base64.b64encode(f"{cfg.id}:{cfg.secret}".encode()).decode()
        try:
            conn = await self._until_stopped(
                _ws.open_connection(
                    cfg.url,
                    {"Authorization": "Basic " + credentials},
                    self._ssl,
                    cfg.open_timeout,
                    _CLOSE_TIMEOUT,
                    f"switchboard-device-python/{_version()} websockets/{_ws.VERSION}",
                )
            )
        except Exception as exc:  # noqa: BLE001 - every failure to connect is retried
            outcome.err = self._dial_error(exc)
            return outcome
        if conn is None:
            return outcome

        outcome.opened = time.monotonic()
        self._session_no += 1
        self._connected = True
        assert self._up is not None
        self._up.set()
        self._log.info("device %s: connected to %s", cfg.id, cfg.url)
        if conn.subprotocol != protocol.SUBPROTOCOL:
            self._log.warning("device %s: the node did not accept subprotocol %s", cfg.id, protocol.SUBPROTOCOL)
        _call(self._log, cfg.on_connect)
        assert self._wake is not None and self._stop is not None
        self._wake.set()  # replies and reports kept from earlier sessions go first
        writer = asyncio.ensure_future(self._write_loop(conn))
        reader = asyncio.ensure_future(self._read_loop(conn, outcome))
        watchdog = asyncio.ensure_future(self._watchdog(conn, outcome))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            try:
                await asyncio.wait({reader, writer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                self._cancel_run()
            if self._stop.is_set():
                reader.cancel()
                await self._goodbye(conn)
            elif not reader.done():
                conn.transport.abort()  # the writer failed: end the session
                await asyncio.wait({reader})
        finally:
            for task in (reader, writer, watchdog, stopper):
                task.cancel()
            await asyncio.gather(reader, writer, watchdog, stopper, return_exceptions=True)
            if not _ws.is_closed(conn):
                conn.transport.abort()
            self._end_session()
        if self._stop.is_set():
            self._log.info("device %s: disconnected (closed with 1000)", cfg.id)
            _call(self._log, cfg.on_disconnect, None)
        else:
            _call(self._log, cfg.on_disconnect, outcome.err)
        return outcome

    def _dial_error(self, exc: BaseException) -> DialError | Unauthorized:
        status, header = _ws.refusal(exc)
        wait = retry_after(header) if status in (429, 503) else 0.0
        err = DialError(self._cfg.url, exc, status, wait)
        _call(self._log, self._cfg.on_dial_error, err)
        if status == 401:
            return Unauthorized(f"credentials refused (HTTP 401) by {self._cfg.url}")
        if isinstance(exc, PinMismatch) or isinstance(exc.__cause__, PinMismatch):
            self._log.error("device %s: refusing the node: %s", self._cfg.id, exc)
        return err

    async def _goodbye(self, conn: _ws.Connection) -> None:
        """On close(): let running handlers finish (up to shutdown_grace) and
        their replies go out, then close with 1000 so the node removes the
        device's presence at once."""
        deadline = time.monotonic() + self._cfg.shutdown_grace
        self._graced = True  # run() does not wait for the handlers a second time
        if self._running:
            await asyncio.wait(set(self._running), timeout=self._cfg.shutdown_grace)
        while any(f.durable for f in self._outbox) and not _ws.is_closed(conn) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the writer is flushing; bounded by the grace
        try:
            await asyncio.wait_for(conn.close(protocol.CLOSE_NORMAL), 2 * _CLOSE_TIMEOUT)
        except (asyncio.TimeoutError, OSError, _ws.ConnectionClosed):
            pass

    def _end_session(self) -> None:
        """Forget the session's events (at most once) and wake their senders."""
        self._connected = False
        if self._up is not None:
            self._up.clear()
        self._outbox = deque(f for f in self._outbox if f.durable)
        self._pending_events = 0
        if self._event_room is not None:
            self._event_room.set()

    async def _write_loop(self, conn: _ws.Connection) -> None:
        """Own the session's writes, in the order they were queued."""
        assert self._wake is not None
        while True:
            while self._outbox:
                frame = self._outbox[0]
                try:
                    await conn.send(frame.text)
                except _ws.ConnectionClosed:
                    return  # the frame stays queued; durable ones go on the next session
                if self._outbox and self._outbox[0] is frame:
                    self._outbox.popleft()
                if frame.event:
                    self._pending_events = max(self._pending_events - 1, 0)
                    if self._event_room is not None:
                        self._event_room.set()
            self._wake.clear()
            await self._wake.wait()

    async def _read_loop(self, conn: _ws.Connection, outcome: _Outcome) -> None:
        try:
            while True:
                frame = await conn.recv()
                outcome.frames += 1
                if isinstance(frame, bytes):
                    self._log.warning("device %s: ignoring a binary frame from the node", self._cfg.id)
                    continue
                await self._dispatch(frame)
        except _ws.ConnectionClosed as exc:
            outcome.code, outcome.reason = _ws.close_of(exc)
            outcome.err = exc
            if outcome.code == protocol.CLOSE_REPLACED:
                outcome.err = Replaced("replaced by a newer session of the same device")
            elif outcome.code == protocol.CLOSE_BAD_MESSAGE and outcome.reason.strip() in protocol.FATAL_1008_REASONS:
                outcome.err = Unauthorized(outcome.reason.strip())

    async def _watchdog(self, conn: _ws.Connection, outcome: _Outcome) -> None:
        """Give the session up when nothing at all (no frame, no ping) came
        for read_timeout: the node, or the path to it, is gone."""
        timeout = self._cfg.read_timeout
        while True:
            idle = time.monotonic() - conn.last_seen
            if idle >= timeout:
                outcome.timed_out = True
                self._log.warning("device %s: nothing from the node for %.1fs: giving the session up", self._cfg.id, idle)
                conn.transport.abort()
                return
            await asyncio.sleep(timeout - idle)

    async def _dispatch(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            self._log.warning("device %s: ignoring a frame that is not JSON", self._cfg.id)
            return
        if not isinstance(msg, dict):
            self._log.warning("device %s: ignoring a frame that is not a JSON object", self._cfg.id)
            return
        kind = msg.get("type")
        if kind == protocol.TYPE_COMMAND:
            self._on_command(msg)
        elif kind == protocol.TYPE_STATE:
            await self._on_state(msg)
        elif kind == protocol.TYPE_PING:
            self._push(_Frame('{"type":"pong"}', durable=False))
        elif kind == protocol.TYPE_ERROR:
            self._log.warning("device %s: the node refused a frame: %s", self._cfg.id, text[:500])
        # pong, and types of a newer protocol: nothing to do

    def _on_command(self, msg: dict[str, Any]) -> None:
        id, name = msg.get("id"), msg.get("name")
        if not isinstance(id, str) or not id or not isinstance(name, str):
            self._log.warning("device %s: ignoring a command without an id or name", self._cfg.id)
            return
        cmd = Command(id=id, name=name, args=msg.get("args"), deadline=_parse_time(msg.get("deadline")))
        reply, fresh = self._dedup.begin(id)
        if not fresh:
            if reply is not None:
                self._log.info("device %s: command %s %s again: answering with its reply", self._cfg.id, name, id)
                self._queue_durable(reply)  # a redelivery: answer again, do not re-run
            else:
                self._log.info("device %s: command %s %s again: still running", self._cfg.id, name, id)
            return
        self._log.info("device %s: command %s %s", self._cfg.id, name, id)
        task = asyncio.ensure_future(self._run_command(cmd))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_command(self, cmd: Command) -> None:
        reply: dict[str, Any] = {"type": protocol.TYPE_REPLY, "id": cmd.id}
        handler = self._handlers.get(cmd.name)
        try:
            if handler is None:
                raise _UnknownCommand(f"unknown command {cmd.name}")
            if inspect.iscoroutinefunction(handler):
                result = await handler(cmd)
            else:
                result = await asyncio.to_thread(handler, cmd)
                if inspect.isawaitable(result):
                    result = await result
        except asyncio.CancelledError:
            # Stopped under the handler: let a redelivery run it again
            # rather than replay a cancellation.
            self._dedup.forget(cmd.id)
            raise
        except Exception as exc:  # noqa: BLE001 - a handler's failure is its reply
            reply["ok"] = False
            reply["error"] = str(exc) or type(exc).__name__
        else:
            reply["ok"] = True
            if result is not None:
                reply["result"] = result
        try:
            text = protocol.encode(reply)
        except (TypeError, ValueError) as exc:
            text = protocol.encode({"type": protocol.TYPE_REPLY, "id": cmd.id, "ok": False, "error": f"result is not JSON: {exc}"})
        if len(text.encode()) > protocol.MAX_FRAME:
            text = protocol.encode({"type": protocol.TYPE_REPLY, "id": cmd.id, "ok": False, "error": f"reply over {protocol.MAX_FRAME} bytes"})
        self._log.debug("device %s: command %s %s answered ok=%s", self._cfg.id, cmd.name, cmd.id, reply["ok"])
        self._dedup.finish(cmd.id, text)
        self._queue_durable(text)

    async def _on_state(self, msg: dict[str, Any]) -> None:
        desired, version = msg.get("desired"), msg.get("version")
        if not isinstance(desired, dict) or not isinstance(version, int) or isinstance(version, bool):
            self._log.warning("device %s: ignoring a state frame without a desired object and a version", self._cfg.id)
            return
        if self._on_desired is None or version <= self._desired_version:
            return  # not newer than the last applied (a new session repeats it)
        self._desired_version = version
        try:
            result = self._on_desired(desired, version)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - the device's bug must not end the session
            self._log.exception("device %s: on_desired failed for version %d", self._cfg.id, version)

    async def _finish_handlers(self) -> None:
        """Give running handlers the grace (unless the last session's
        goodbye did), then cancel those left."""
        if self._running and not self._graced:
            await asyncio.wait(set(self._running), timeout=self._cfg.shutdown_grace)
        left = list(self._running)
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)

    def _queue_durable(self, text: str) -> None:
        """Queue a reply or report for whichever session writes next: the
        node takes the answer to a command it delivered on any session of
        the device, so a reply finished after its session ended is kept."""
        if sum(1 for f in self._outbox if f.durable) >= MAX_OUTBOX:
            for f in self._outbox:
                if f.durable:
                    self._outbox.remove(f)
                    break
            self._log.warning("device %s: outbox full: dropping the oldest reply or report", self._cfg.id)
        self._push(_Frame(text, durable=True))

    def _push(self, frame: _Frame) -> None:
        self._outbox.append(frame)
        if self._wake is not None:
            self._wake.set()

    def _threadsafe(self, fn: Callable[..., None], *args: Any) -> None:
        """Call fn on the client's loop: at once from its thread (or before
        run), else scheduled."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread or loop.is_closed():
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)


class _UnknownCommand(Exception):
    pass


def _describe(outcome: _Outcome) -> str:
    if isinstance(outcome.err, DialError):
        return f"cannot connect: {outcome.err}"
    if outcome.timed_out:
        return "disconnected (read timeout)"
    reason = f" {outcome.reason!r}" if outcome.reason else ""
    return f"disconnected (close code {outcome.code}{reason})"


def _call(log: logging.Logger, fn: Callable[..., None] | None, *args: Any) -> None:
    """Call a user's hook; its failure is logged, not raised into the SDK."""
    if fn is None:
        return
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        log.exception("switchboard_device: a hook failed")


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_time(value: object) -> datetime | None:
    """An RFC 3339 time (the command's deadline), or None."""
    if not isinstance(value, str):
        return None
    text = _FRACTION.sub(r"\1", value.strip()).replace("z", "Z")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _version() -> str:
    from . import __version__

    return __version__
