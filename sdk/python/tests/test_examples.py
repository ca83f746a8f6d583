"""The examples: the conformance device as a process (its contract: the
commands, state, exit statuses, SIGTERM), and the thermostat's handlers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
import unittest
from typing import Any

from fakenode import HERE, WAIT, FakeNode

from switchboard_device import Client, Config

EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
ID1 = "6f1c1a52-0d3e-4a51-9a43-6b3c2f1d0001"
ID2 = "6f1c1a52-0d3e-4a51-9a43-6b3c2f1d0002"


class ConformanceDeviceTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.node = await FakeNode().start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        env.update({
            "SWITCHBOARD_URL": self.node.url,
            "SWITCHBOARD_DEVICE_ID": "conformance-1",
            "SWITCHBOARD_DEVICE_SECRET": "s3cret",
            "SWITCHBOARD_MIN_BACKOFF_MS": "10",
            "SWITCHBOARD_MAX_BACKOFF_MS": "50",
            "PYTHONPATH": "",  # the example finds the package next door
        })
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(EXAMPLES, "conformance.py"), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )

    async def asyncTearDown(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self.node.stop()

    async def exit_status(self, within: float) -> tuple[int, str]:
        _, stderr = await asyncio.wait_for(self.proc.communicate(), within)
        assert self.proc.returncode is not None
        return self.proc.returncode, stderr.decode()

    async def test_contract(self) -> None:
        s = await self.node.session()
        await s.command(ID1, "echo", {"a": 1})
        self.assertEqual(await s.next(), {"type": "reply", "id": ID1, "ok": True, "result": {"echo": {"a": 1}}})
        await s.command(ID2, "fail", {})
        self.assertEqual(await s.next(), {"type": "reply", "id": ID2, "ok": False, "error": "asked to fail"})

        work = "6f1c1a52-0d3e-4a51-9a43-6b3c2f1d0003"
        await s.command(work, "work", {"ms": 200})
        await s.command(work, "work", {"ms": 200})  # redelivered while running
        self.assertEqual(await s.next(), {"type": "event", "name": "effect", "data": {"command": work}})
        done = {"type": "reply", "id": work, "ok": True, "result": {"done": True}}
        self.assertEqual(await s.next(), done)
        await s.command(work, "work", {"ms": 200})  # redelivered once finished: no second effect
        self.assertEqual(await s.next(), done)

        emit = "6f1c1a52-0d3e-4a51-9a43-6b3c2f1d0004"
        await s.command(emit, "emit", {"name": "door.open", "data": {"floor": 2}})
        self.assertEqual(await s.next(), {"type": "event", "name": "door.open", "data": {"floor": 2}})
        self.assertEqual(await s.next(), {"type": "reply", "id": emit, "ok": True})

        await s.send({"type": "state", "desired": {"target_celsius": 21, "x": {"y": 1}}, "version": 3})
        self.assertEqual(await s.next(), {"type": "report", "reported": {"target_celsius": 21, "x": {"y": 1}}})
        await s.send({"type": "state", "desired": {"target_celsius": 5}, "version": 3})  # not newer: skipped
        await s.send({"type": "state", "desired": {"target_celsius": 6}, "version": 4})
        self.assertEqual(await s.next(), {"type": "report", "reported": {"target_celsius": 6}})

        self.proc.send_signal(signal.SIGTERM)
        status, log = await self.exit_status(5)
        self.assertEqual(status, 0, log)
        await s.wait_done()
        self.assertEqual(s.close_code, 1000)
        self.assertIn("connected to", log)
        self.assertIn("command echo " + ID1, log)

    async def test_disabled_exits_3(self) -> None:
        s = await self.node.session()
        await s.close(1008, "device disabled")
        status, log = await self.exit_status(WAIT)
        self.assertEqual(status, 3, log)
        self.assertIn("close code 1008", log)

    async def test_refused_credentials_exit_3(self) -> None:
        s = await self.node.session()
        self.node.refusals.append((401, {}))
        s.drop()
        status, log = await self.exit_status(WAIT)
        self.assertEqual(status, 3, log)
        self.assertIn("401", log)


def load_thermostat() -> Any:
    spec = importlib.util.spec_from_file_location("thermostat_example", os.path.join(EXAMPLES, "thermostat.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ThermostatTest(unittest.IsolatedAsyncioTestCase):
    async def test_thermostat(self) -> None:
        node = await FakeNode().start()
        client = Client(Config(url=node.url, id="thermostat-py", secret="s", min_backoff=0.01, max_backoff=0.05))
        thermostat = load_thermostat().Thermostat(client)
        task = asyncio.ensure_future(client.run())
        try:
            s = await node.session()
            await s.send({"type": "state", "desired": {"target_celsius": 22.5, "mode": "cool"}, "version": 1})
            report = (await s.next("report"))["reported"]
            self.assertEqual((report["target_celsius"], report["mode"]), (22.5, "cool"))
            self.assertEqual(set(report), {"celsius", "mode", "target_celsius"})

            # Out of range, or of the wrong kind: not applied.
            await s.send({"type": "state", "desired": {"target_celsius": 40, "mode": "blast"}, "version": 2})
            report = (await s.next("report"))["reported"]
            self.assertEqual((report["target_celsius"], report["mode"]), (22.5, "cool"))

            await s.command(ID1, "set_target", {"celsius": 31})
            self.assertEqual(await s.next("reply"), {"type": "reply", "id": ID1, "ok": False, "error": "target 31.0°C is outside 5-30°C"})
            await s.command(ID2, "set_mode", {"mode": "off"})
            report = await s.next()  # the report goes before the reply
            self.assertEqual(report["reported"]["mode"], "off")
            reply = await s.next()
            self.assertEqual((reply["id"], reply["ok"], reply["result"]["mode"]), (ID2, True, "off"))
            self.assertEqual(thermostat.snapshot()["mode"], "off")
        finally:
            client.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, WAIT)
            await node.stop()


if __name__ == "__main__":
    unittest.main()
