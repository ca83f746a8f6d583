"""The client against a real websockets server on loopback (fakenode):
commands and de-duplication, state, events, close codes and the waits
they ask for, refusals, the read watchdog, shutdown, TLS and pinning."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
import unittest
from datetime import datetime, timezone
from typing import Any, Callable

from fakenode import WAIT, Certificate, FakeNode, Session, have_openssl

from switchboard_device import Client, Command, Config, DialError, NotConnected, PinMismatch, Unauthorized, fingerprint

ID1 = "6f1c1a52-0d3e-4a51-9a43-6b3c2f1d0001"
ID2 = "6f1c1a52-0d3e-4a51-9a43-6b3c2f1d0002"


class NodeTest(unittest.IsolatedAsyncioTestCase):
    node_ping_interval: float | None = None

    async def asyncSetUp(self) -> None:
        self.node = await FakeNode(ping_interval=self.node_ping_interval).start()
        self.tasks: list[tuple[Client, asyncio.Task[None]]] = []

    async def asyncTearDown(self) -> None:
        for client, task in self.tasks:
            client.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)
        await self.node.stop()

    def client(self, url: str | None = None, **overrides: Any) -> Client:
        cfg: dict[str, Any] = {"url": url or self.node.url, "id": "dev-1", "secret": "s3cret", "min_backoff": 0.01, "max_backoff": 0.05}
        cfg.update(overrides)
        return Client(Config(**cfg))

    def run_client(self, client: Client) -> asyncio.Task[None]:
        task = asyncio.ensure_future(client.run())
        self.tasks.append((client, task))
        return task


class CommandTest(NodeTest):
    async def test_connects_with_basic_auth_and_subprotocol(self) -> None:
        self.run_client(self.client())
        s = await self.node.session()
        self.assertEqual(s.auth, "Basic " + base64.b64encode(b"dev-1:s3cret").decode())
        self.assertEqual(s.ws.subprotocol, "switchboard.v1")

    async def test_replies(self) -> None:
        c = self.client()
        c.handle("echo", lambda cmd: {"echo": cmd.args})

        async def slow_echo(cmd: Command) -> Any:
            await asyncio.sleep(0)
            return {"async": cmd.args}

        def boom(cmd: Command) -> None:
            raise RuntimeError("boom")

        c.handle("aecho", slow_echo)
        c.handle("boom", boom)
        c.handle("nothing", lambda cmd: None)
        c.handle("not_json", lambda cmd: {"x": object()})
        self.run_client(c)
        s = await self.node.session()
        cases: list[tuple[str, Any, dict[str, Any]]] = [
            ("echo", {"a": [1, "é"]}, {"ok": True, "result": {"echo": {"a": [1, "é"]}}}),
            ("aecho", 5, {"ok": True, "result": {"async": 5}}),
            ("boom", None, {"ok": False, "error": "boom"}),
            ("nothing", None, {"ok": True}),
            ("nope", None, {"ok": False, "error": "unknown command nope"}),
        ]
        for i, (name, args, want) in enumerate(cases):
            id = f"6f1c1a52-0d3e-4a51-9a43-6b3c2f1d10{i:02d}"
            await s.command(id, name, args)
            self.assertEqual(await s.next("reply"), {"type": "reply", "id": id, **want}, name)
        await s.command(ID1, "not_json")
        reply = await s.next("reply")
        self.assertFalse(reply["ok"])
        self.assertIn("result is not JSON", reply["error"])

    async def test_unknown_frames_and_fields_are_ignored(self) -> None:
        seen: list[Command] = []
        c = self.client()

        def echo(cmd: Command) -> Any:
            seen.append(cmd)
            return cmd.args

        c.handle("echo", echo)
        self.run_client(c)
        s = await self.node.session()
        await s.ws.send("not json")
        await s.ws.send("[1,2]")
        await s.send({"type": "error", "error": "bad event name", "name": "-x"})
        await s.send({"type": "hello-from-the-future", "x": 1})
        await s.send({"type": "pong"})
        await s.command(ID1, "echo", {"v": 1}, deadline="2030-01-02T03:04:05.123456789Z", priority="high")
        self.assertEqual(await s.next("reply"), {"type": "reply", "id": ID1, "ok": True, "result": {"v": 1}})
        self.assertEqual(seen[0].deadline, datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc))
        self.assertFalse(seen[0].expired())
        await s.send({"type": "ping"})
        self.assertEqual(await s.next(), {"type": "pong"})
        self.assertFalse(s.done.is_set(), "the session stays up")

    async def test_redelivered_command_runs_once(self) -> None:
        runs = 0
        started, release = asyncio.Event(), asyncio.Event()

        async def work(cmd: Command) -> Any:
            nonlocal runs
            runs += 1
            started.set()
            await release.wait()
            return {"done": True}

        c = self.client()
        c.handle("work", work)
        c.handle("echo", lambda cmd: cmd.args)
        self.run_client(c)
        s1 = await self.node.session()
        await s1.command(ID1, "work")
        await asyncio.wait_for(started.wait(), WAIT)
        s1.drop()

        # Redelivered while still running: not run again.
        s2 = await self.node.session()
        await s2.command(ID1, "work")
        await s2.command(ID2, "echo", "after")
        self.assertEqual((await s2.next("reply"))["id"], ID2)
        self.assertEqual(runs, 1)

        # Its reply comes on the session that is up when it finishes.
        release.set()
        want = {"type": "reply", "id": ID1, "ok": True, "result": {"done": True}}
        self.assertEqual(await s2.next("reply"), want)

        # Redelivered once finished, on another session: the same reply.
        s2.drop()
        s3 = await self.node.session()
        await s3.command(ID1, "work")
        self.assertEqual(await s3.next("reply"), want)
        self.assertEqual(runs, 1)

    async def test_reply_finished_between_sessions_is_kept(self) -> None:
        release = threading.Event()
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def work(cmd: Command) -> str:  # a sync handler, in a worker thread
            loop.call_soon_threadsafe(started.set)
            release.wait(WAIT)
            return "late"

        c = self.client(min_backoff=0.3, max_backoff=0.3)
        c.handle("work", work)
        self.run_client(c)
        s1 = await self.node.session()
        await s1.command(ID1, "work")
        await asyncio.wait_for(started.wait(), WAIT)
        await s1.close(1011, "database away")
        release.set()  # finishes while the device waits to reconnect
        s2 = await self.node.session()
        self.assertEqual(await s2.next(), {"type": "reply", "id": ID1, "ok": True, "result": "late"})


class StateAndEventTest(NodeTest):
    async def test_desired_state_is_applied_once_per_version(self) -> None:
        applied: list[int] = []
        c = self.client()

        def apply(desired: dict[str, Any], version: int) -> None:
            applied.append(version)
            c.report(desired)

        c.on_desired(apply)
        self.run_client(c)
        s = await self.node.session()
        await s.send({"type": "state", "desired": {"target_celsius": 21, "mode": "heat"}, "version": 2})
        self.assertEqual(await s.next(), {"type": "report", "reported": {"target_celsius": 21, "mode": "heat"}})
        await s.send({"type": "state", "desired": {"target_celsius": 19}, "version": 2})
        await s.send({"type": "state", "desired": {"target_celsius": 18}, "version": 1})
        s.drop()
        s2 = await self.node.session()
        await s2.send({"type": "state", "desired": {"target_celsius": 21, "mode": "heat"}, "version": 2})
        await s2.send({"type": "state", "desired": {"target_celsius": 22}, "version": 3})
        self.assertEqual(await s2.next(), {"type": "report", "reported": {"target_celsius": 22}})
        self.assertEqual(applied, [2, 3])

    async def test_report_before_connecting_is_sent_first(self) -> None:
        c = self.client()
        c.report({"celsius": 20.5, "old": None})
        self.run_client(c)
        s = await self.node.session()
        self.assertEqual(await s.next(), {"type": "report", "reported": {"celsius": 20.5, "old": None}})
        with self.assertRaises(ValueError):
            c.report({"big": "x" * (33 << 10)})

    async def test_events(self) -> None:
        c = self.client()

        async def emit(cmd: Command) -> None:
            await c.event(cmd.args["name"], cmd.args.get("data"))

        c.handle("emit", emit)
        with self.assertRaises(NotConnected):
            await c.event("boot")
        self.run_client(c)
        s = await self.node.session()
        await s.command(ID1, "emit", {"name": "alarm", "data": {"level": 3}})
        self.assertEqual(await s.next(), {"type": "event", "name": "alarm", "data": {"level": 3}})
        self.assertEqual(await s.next(), {"type": "reply", "id": ID1, "ok": True})
        await s.command(ID2, "emit", {"name": "-bad"})
        reply = await s.next("reply")
        self.assertFalse(reply["ok"])
        self.assertIn("event name", reply["error"])


class CloseCodeTest(NodeTest):
    async def gap_after(self, code: int, reason: str = "", **cfg: Any) -> float:
        """Close the first session with code; the time until the next."""
        self.run_client(self.client(**cfg))
        s1 = await self.node.session()
        await s1.close(code, reason)
        s2 = await self.node.session()
        assert s1.ended is not None
        return s2.opened - s1.ended

    async def test_plain_codes_reconnect_with_backoff(self) -> None:
        self.run_client(self.client())
        s = await self.node.session()
        for code in (1001, 1008, 1009, 1011, 1013, 4000):
            await s.close(code, "bad message" if code == 1008 else "")
            s = await self.node.session()
        s.drop()
        await self.node.session()

    async def test_1012_waits_the_delay_given(self) -> None:
        gap = await self.gap_after(1012, "700ms")
        self.assertGreaterEqual(gap, 0.7)
        self.assertLess(gap, 0.7 + 2)

    async def test_4008_waits_half_to_all_of_replaced_delay(self) -> None:
        gap = await self.gap_after(4008, "replaced", replaced_delay=0.8)
        self.assertGreaterEqual(gap, 0.4)
        self.assertLess(gap, 0.8 + 2)

    async def test_4029_reconnects(self) -> None:
        gap = await self.gap_after(4029, "rate limited", min_backoff=0.2, max_backoff=0.4)
        self.assertLess(gap, 0.4 + 2)  # its wait's bounds: DelayChoiceTest

    async def test_1008_disabled_or_deleted_stops(self) -> None:
        for reason in ("device disabled", "device deleted"):
            with self.subTest(reason=reason):
                task = self.run_client(self.client())
                s = await self.node.session()
                await s.close(1008, reason)
                with self.assertRaises(Unauthorized):
                    await asyncio.wait_for(task, WAIT)
                self.assertTrue(self.node.sessions.empty(), "no reconnect")

    async def test_401_stops(self) -> None:
        self.node.refusals.append((401, {}))
        errors: list[DialError] = []
        task = self.run_client(self.client(on_dial_error=errors.append))
        with self.assertRaises(Unauthorized):
            await asyncio.wait_for(task, WAIT)
        self.assertEqual(len(self.node.requests), 1)
        self.assertEqual(errors[0].status_code, 401)

    async def test_429_and_503_wait_retry_after(self) -> None:
        loop = asyncio.get_running_loop()
        self.node.refusals.extend([(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"})])
        self.run_client(self.client())
        s = await self.node.session()
        self.assertGreaterEqual(self.node.refused_at[1] - self.node.refused_at[0], 1.0)
        self.assertGreaterEqual(s.opened - self.node.refused_at[1], 1.0)
        self.assertLess(loop.time() - self.node.refused_at[0], 2 + 2)

    async def test_close_stops_with_1000_after_running_handlers(self) -> None:
        async def work(cmd: Command) -> str:
            await asyncio.sleep(0.2)
            return "finished"

        c = self.client()
        c.handle("work", work)
        task = self.run_client(c)
        s = await self.node.session()
        await s.command(ID1, "work")
        await asyncio.sleep(0.05)  # let it start: close() must then wait for it
        c.close()
        await asyncio.wait_for(task, 5)
        self.assertEqual(await s.next(), {"type": "reply", "id": ID1, "ok": True, "result": "finished"})
        await s.wait_done()
        self.assertEqual(s.close_code, 1000)

    async def test_cancelling_run_stops_it(self) -> None:
        task = self.run_client(self.client())
        s = await self.node.session()
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        await s.wait_done()


class SilentNodeTest(NodeTest):
    async def test_silent_node_is_given_up(self) -> None:
        self.run_client(self.client(read_timeout=0.3))
        s1 = await self.node.session()
        await s1.wait_done()
        assert s1.ended is not None
        self.assertGreaterEqual(s1.ended - s1.opened, 0.3)
        self.assertEqual(s1.close_code, 1006, "dropped, not closed politely: the node is gone")
        await self.node.session()


class PingingNodeTest(NodeTest):
    node_ping_interval = 0.1

    async def test_pings_keep_the_session(self) -> None:
        self.run_client(self.client(read_timeout=0.4))
        s = await self.node.session()
        with self.assertRaises(asyncio.TimeoutError):
            await s.wait_done(timeout=1.5)


@unittest.skipUnless(have_openssl(), "the openssl command makes the test certificate")
class TLSTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.cert = Certificate()
        self.node = await FakeNode(tls=self.cert.server_context()).start()
        self.tasks: list[tuple[Client, asyncio.Task[None]]] = []
        loop = asyncio.get_running_loop()
        default = loop.get_exception_handler()

        def quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # The node's side of a handshake the device broke off (a pin
            # mismatch) is expected here, not worth a traceback.
            if isinstance(context.get("exception"), (ConnectionResetError, ssl.SSLError)):
                return
            (default or loop.default_exception_handler.__func__)(loop, context)  # type: ignore[attr-defined]

        loop.set_exception_handler(quiet)

    async def asyncTearDown(self) -> None:
        for client, task in self.tasks:
            client.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)
        await self.node.stop()
        self.cert.remove()

    def start(self, **cfg: Any) -> None:
        client = Client(Config(url=self.node.url, id="dev-1", secret="s3cret", min_backoff=0.01, max_backoff=0.05, **cfg))
        self.tasks.append((client, asyncio.ensure_future(client.run())))

    async def test_trusted_certificate(self) -> None:
        fp = fingerprint(self.cert.der)
        for cfg in ({"ca_file": self.cert.cert}, {"ca_file": self.cert.cert, "pin": fp}, {"pin": fp.replace(":", "").lower()}):
            with self.subTest(cfg=cfg):
                self.start(**cfg)
                s = await self.node.session()
                self.assertIsNotNone(s.auth)

    async def test_refused_before_credentials(self) -> None:
        wrong = "AB:" * 31 + "CD"
        cases: list[tuple[dict[str, Any], type[BaseException]]] = [
            ({"ca_file": self.cert.cert, "pin": wrong}, PinMismatch),
            ({"pin": wrong}, PinMismatch),
            ({}, ssl.SSLCertVerificationError),  # the system's roots do not know it
        ]
        for cfg, why in cases:
            with self.subTest(cfg=cfg):
                failures: asyncio.Queue[DialError] = asyncio.Queue()
                self.start(on_dial_error=failures.put_nowait, **cfg)
                for _ in range(3):  # it keeps retrying, and keeps refusing
                    err = await asyncio.wait_for(failures.get(), WAIT)
                    self.assertIsInstance(err.cause, why)
                client, task = self.tasks.pop()
                client.close()
                await asyncio.wait_for(task, WAIT)
                self.assertEqual(self.node.requests, [], "no HTTP request, so no credentials, reached the node")
                self.assertTrue(self.node.sessions.empty())


if __name__ == "__main__":
    unittest.main()
