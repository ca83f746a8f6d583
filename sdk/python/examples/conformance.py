#!/usr/bin/env python3
"""The conformance device: what `switchboard conformance -device-cmd` runs
to check this SDK (the contract is in docs/protocol.md and the suite).

It reads SWITCHBOARD_URL, SWITCHBOARD_DEVICE_ID, SWITCHBOARD_DEVICE_SECRET,
SWITCHBOARD_CA, SWITCHBOARD_PIN and the SWITCHBOARD_*_MS timings; logs to
stderr; exits 0 on SIGTERM, 3 when its credentials are refused (401, or
the device was disabled or deleted), 2 on a bad environment.

    /usr/bin/python3 sdk/python/examples/conformance.py
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

try:
    import switchboard_device  # noqa: F401 - installed
except ImportError:  # run from the repository: the package is next door
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from switchboard_device import Client, Command, Config, NotConnected, Unauthorized

EXIT_UNAUTHORIZED = 3
EFFECT_WAIT = 10.0  # seconds a work handler waits for a session to send its effect on


def build(client: Client) -> None:
    """Register the contract's commands and state handling."""

    client.handle("echo", lambda cmd: {"echo": cmd.args})

    def fail(cmd: Command) -> None:
        raise RuntimeError("asked to fail")

    client.handle("fail", fail)

    async def work(cmd: Command) -> dict[str, Any]:
        args = cmd.args if isinstance(cmd.args, dict) else {}
        await asyncio.sleep(float(args.get("ms", 0)) / 1000)
        # The effect must reach the node even when the session dropped
        # meanwhile: wait (a while) for the next one rather than lose it.
        async def send_effect() -> None:
            while True:
                await client.wait_connected()
                try:
                    await client.event("effect", {"command": cmd.id})
                    return
                except NotConnected:
                    continue

        await asyncio.wait_for(send_effect(), EFFECT_WAIT)
        return {"done": True}

    client.handle("work", work)

    async def emit(cmd: Command) -> None:
        args = cmd.args if isinstance(cmd.args, dict) else {}
        name = args.get("name")
        if not isinstance(name, str):
            raise ValueError('want args {"name": "...", "data": {...}}')
        await client.event(name, args.get("data"))

    client.handle("emit", emit)

    def apply(desired: dict[str, Any], version: int) -> None:
        # The example applies the document as it is, and reports every key
        # with the value applied, so the delta becomes empty.
        client.report(desired)

    client.on_desired(apply)


async def main() -> int:
    try:
        config = Config.from_env()
        client = Client(config)
    except (KeyError, ValueError) as exc:
        logging.error("bad environment: %s", exc)
        return 2
    build(client)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, client.close)
    try:
        await client.run()
    except Unauthorized:  # the SDK logged why
        return EXIT_UNAUTHORIZED
    return 0


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main()))
