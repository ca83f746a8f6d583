"""Switchboard device SDK for Python (asyncio, websockets).

    import asyncio
    from switchboard_device import Client, Config

    client = Client(Config(url="wss://localhost:8443/v1/connect", id="my-device",
                           secret="...", ca_file="conn.pem"))
    client.handle("echo", lambda cmd: {"echo": cmd.args})
    asyncio.run(client.run())  # until client.close(), or raises Unauthorized
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._backoff import Backoff
from ._tls import fingerprint
from .client import Client, Command, Config, Handler
from .errors import DialError, NotConnected, PinMismatch, Replaced, Unauthorized

__all__ = [
    "Backoff",
    "Client",
    "Command",
    "Config",
    "DialError",
    "Handler",
    "NotConnected",
    "PinMismatch",
    "Replaced",
    "Unauthorized",
    "fingerprint",
    "__version__",
]
