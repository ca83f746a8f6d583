"""A scripted connection node for the SDK's tests: a real websockets
server on loopback (TLS optional) whose sessions the test drives."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections import deque
from http import HTTPStatus
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the package, from the repository

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.typing import Subprotocol  # noqa: E402
from websockets.legacy.server import WebSocketServerProtocol, serve  # noqa: E402

WAIT = 10.0  # the longest a test waits for something that should happen

if not os.environ.get("SWITCHBOARD_TEST_LOG"):
    # Quiet by default (the SDK warns about what the tests provoke); set
    # SWITCHBOARD_TEST_LOG=1 to see it, as for the Go tests.
    for name in ("switchboard_device", "asyncio", "websockets"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False


class Session:
    """One device session as the node sees it."""

    def __init__(self, ws: WebSocketServerProtocol, opened: float) -> None:
        self.ws = ws
        self.opened = opened
        self.ended: float | None = None
        self.auth = ws.request_headers.get("Authorization")
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.done = asyncio.Event()
        self.close_code: int | None = None  # the code the device sent, once closed

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def command(self, id: str, name: str, args: Any = None, **extra: Any) -> None:
        frame = {"type": "command", "id": id, "name": name, **extra}
        if args is not None:
            frame["args"] = args
        await self.send(frame)

    async def next(self, type: str | None = None, timeout: float = WAIT) -> dict[str, Any]:
        """The next frame from the device (of that type, skipping others)."""
        while True:
            frame = await asyncio.wait_for(self.frames.get(), timeout)
            if type is None or frame.get("type") == type:
                return frame

    async def close(self, code: int, reason: str = "") -> None:
        await self.ws.close(code, reason)
        await self.wait_done()

    def drop(self) -> None:
        """End the session without a close frame, as a killed node would."""
        self.ws.transport.abort()

    async def wait_done(self, timeout: float = WAIT) -> None:
        await asyncio.wait_for(self.done.wait(), timeout)


class FakeNode:
    def __init__(self, ping_interval: float | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.ping_interval = ping_interval
        self.tls = tls
        self.sessions: asyncio.Queue[Session] = asyncio.Queue()
        self.refusals: deque[tuple[int, dict[str, str]]] = deque()  # next upgrades refused so
        self.requests: list[str | None] = []  # Authorization of every HTTP request that arrived
        self.refused_at: list[float] = []
        self.url = ""
        self._server: Any = None

    async def start(self) -> FakeNode:
        loop = asyncio.get_running_loop()

        async def process_request(path: str, headers: Any) -> Any:
            self.requests.append(headers.get("Authorization"))
            if self.refusals:
                status, extra = self.refusals.popleft()
                self.refused_at.append(loop.time())
                return HTTPStatus(status), list(extra.items()), b"refused\n"
            return None

        async def handler(ws: WebSocketServerProtocol) -> None:
            session = Session(ws, loop.time())
            await self.sessions.put(session)
            try:
                async for message in ws:
                    session.frames.put_nowait(json.loads(message))
            except ConnectionClosed:
                pass
            finally:
                session.close_code = ws.close_code
                session.ended = loop.time()
                session.done.set()

        self._server = await serve(
            handler,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol("switchboard.v1")],
            process_request=process_request,
            ping_interval=self.ping_interval,
            ping_timeout=None,
            ssl=self.tls,
            compression=None,
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"{'wss' if self.tls else 'ws'}://127.0.0.1:{port}/v1/connect"
        return self

    async def session(self, timeout: float = WAIT) -> Session:
        """The next session a device opens."""
        return await asyncio.wait_for(self.sessions.get(), timeout)

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


class Certificate:
    """A self-signed certificate for 127.0.0.1 made with the openssl command."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sbpy-cert-")
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", self.key, "-out", self.cert, "-days", "1", "-subj", "/CN=switchboard test node",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )
        with open(self.cert) as f:
            self.der = ssl.PEM_cert_to_DER_cert(f.read())

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def have_openssl() -> bool:
    return shutil.which("openssl") is not None
