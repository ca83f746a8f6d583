#!/usr/bin/env python3
"""A thermostat written with the Python SDK, like the Go one that
`switchboard device` and `scripts/dev` simulate (app/sim/thermostat): it
answers get_state, set_target and set_mode, takes target_celsius (5-30)
and mode (heat, cool, off) from the desired state, reports celsius, mode
and target_celsius, and sends telemetry every --telemetry seconds.

With `scripts/dev` running, as my-device:

    dir=/tmp/switchboard-dev-$(id -u)
    /usr/bin/python3 sdk/python/examples/thermostat.py --url wss://localhost:8443/v1/connect \\
        --id my-device --credentials $dir/devices.csv --ca $dir/conn.pem

Every flag has a SWITCHBOARD_* variable as its default (see --help).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import threading
from typing import Any

try:
    import switchboard_device  # noqa: F401 - installed
except ImportError:  # run from the repository: the package is next door
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from switchboard_device import Client, Command, Config, NotConnected, Unauthorized

MODES = ("heat", "cool", "off")


class Thermostat:
    """One simulated thermostat. Its state is guarded by a lock: sync
    handlers run in worker threads."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lock = threading.Lock()  # guards the following
        self.celsius = 18 + random.random() * 4
        self.target = 20.0
        self.mode = "heat"
        client.handle("get_state", lambda cmd: self.snapshot())
        client.handle("set_target", self.set_target)
        client.handle("set_mode", self.set_mode)
        client.on_desired(self.apply_desired)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"celsius": self.celsius, "target": self.target, "mode": self.mode}

    def reported(self) -> dict[str, Any]:
        """The reported-state patch of the current state."""
        with self._lock:
            return {"celsius": round(self.celsius, 1), "mode": self.mode, "target_celsius": self.target}

    def apply_desired(self, desired: dict[str, Any], version: int) -> None:
        """Take the target (5-30°C) and mode of the desired state, and report
        what was applied. A value out of range or of the wrong kind is left
        out: the delta then shows it was not applied."""
        target, mode = desired.get("target_celsius"), desired.get("mode")
        with self._lock:
            if isinstance(target, (int, float)) and not isinstance(target, bool) and 5 <= target <= 30:
                self.target = float(target)
            if mode in MODES:
                self.mode = mode
        self.client.report(self.reported())

    def set_target(self, cmd: Command) -> dict[str, Any]:
        celsius = cmd.args.get("celsius") if isinstance(cmd.args, dict) else None
        if not isinstance(celsius, (int, float)) or isinstance(celsius, bool):
            raise ValueError('want args {"celsius": <number>}')
        if not 5 <= celsius <= 30:
            raise ValueError(f"target {celsius:.1f}°C is outside 5-30°C")
        with self._lock:
            self.target = float(celsius)
        self.client.report(self.reported())
        return self.snapshot()

    def set_mode(self, cmd: Command) -> dict[str, Any]:
        mode = cmd.args.get("mode") if isinstance(cmd.args, dict) else None
        if mode not in MODES:
            raise ValueError('want args {"mode": "heat" | "cool" | "off"}')
        with self._lock:
            self.mode = mode
        self.client.report(self.reported())
        return self.snapshot()

    async def telemetry(self, every: float) -> None:
        """Drift toward the target and tell the node, every `every` seconds."""
        while True:
            await asyncio.sleep(every)
            with self._lock:
                if self.mode != "off":
                    self.celsius += (self.target - self.celsius) * 0.2
                self.celsius += (random.random() - 0.5) * 0.1
            try:
                await self.client.event("telemetry", self.snapshot())
            except NotConnected:
                continue  # skip this reading, and its report: a stale temperature is not worth keeping
            self.client.report(self.reported())


def secret_from(path: str, device_id: str) -> str:
    """The secret of device_id in an `id,secret` file (devices.csv)."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                id, _, secret = line.partition(",")
                if id.strip() == device_id:
                    return secret.strip()
    raise SystemExit(f"{path} has no line for {device_id}")


async def main(args: argparse.Namespace) -> int:
    secret = args.secret or (secret_from(args.credentials, args.id) if args.credentials else "")
    if not (args.url and args.id and secret):
        raise SystemExit("want --url, --id and --secret (or --credentials)")
    client = Client(Config(url=args.url, id=args.id, secret=secret, ca_file=args.ca or None, pin=args.pin or None))
    thermostat = Thermostat(client)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, client.close)
    reporter = asyncio.ensure_future(thermostat.telemetry(args.telemetry)) if args.telemetry > 0 else None
    try:
        await client.run()
    except Unauthorized:  # the SDK logged why
        return 3
    finally:
        if reporter is not None:
            reporter.cancel()
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="A thermostat on the Switchboard Python SDK.")
    p.add_argument("--url", default=env("SWITCHBOARD_URL", "wss://localhost:8443/v1/connect"), help="node URL (SWITCHBOARD_URL)")
    p.add_argument("--id", default=env("SWITCHBOARD_DEVICE_ID", "my-device"), help="device id (SWITCHBOARD_DEVICE_ID)")
    p.add_argument("--secret", default=env("SWITCHBOARD_DEVICE_SECRET", ""), help="device secret (SWITCHBOARD_DEVICE_SECRET)")
    p.add_argument("--credentials", default="", help="an id,secret file (scripts/dev's devices.csv) to take the secret from")
    p.add_argument("--ca", default=env("SWITCHBOARD_CA", ""), help="PEM file of the CA or certificate to trust (SWITCHBOARD_CA)")
    p.add_argument("--pin", default=env("SWITCHBOARD_PIN", ""), help="the node certificate's SHA-256, AB:CD:… (SWITCHBOARD_PIN)")
    p.add_argument("--telemetry", type=float, default=10.0, help="seconds between telemetry events (0: none)")
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
