"""The websockets library, whichever API it offers: the legacy asyncio
client (10.x-13.x, extra_headers=, create_protocol=) or the new one
(14 and later, additional_headers=, create_connection=).

Both are given a connection class that notes when the node last sent any
byte (a frame or a ping), for the session's read watchdog.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING, Any, Mapping, cast

import websockets
from websockets.exceptions import ConnectionClosed

from .protocol import SUBPROTOCOL

__all__ = ["ConnectionClosed", "Connection", "open_connection", "refusal", "close_of", "VERSION"]

VERSION: str = getattr(websockets, "__version__", "0")
_MAJOR = int(VERSION.split(".")[0]) if VERSION.split(".")[0].isdigit() else 0
NEW_API = _MAJOR >= 14

if TYPE_CHECKING or not NEW_API:
    from websockets.legacy.client import WebSocketClientProtocol as _Base
    from websockets.legacy.client import connect as _connect
else:  # pragma: no cover - only with websockets >= 14
    from websockets.asyncio.client import ClientConnection as _Base
    from websockets.asyncio.client import connect as _connect


class Connection(_Base):
    """A client connection that records when bytes last arrived."""

    last_seen: float = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.last_seen = time.monotonic()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        super().data_received(data)


async def open_connection(
    url: str,
    headers: Mapping[str, str],
    ssl_context: ssl.SSLContext | None,
    open_timeout: float,
    close_timeout: float,
    user_agent: str,
) -> Connection:
    """Open a WebSocket to url offering the switchboard.v1 subprotocol.

    No client pings (the node pings; the watchdog listens for them) and no
    compression (the nodes do not negotiate it).
    """
    kwargs: dict[str, Any] = {
        "subprotocols": [SUBPROTOCOL],
        "open_timeout": open_timeout,
        "close_timeout": close_timeout,
        "ping_interval": None,
        "ping_timeout": None,
        "compression": None,
        "user_agent_header": user_agent,
    }
    if url.startswith("wss:"):
        kwargs["ssl"] = ssl_context
    made: list[Connection] = []

    def factory(*args: Any, **kw: Any) -> Connection:
        conn = Connection(*args, **kw)
        made.append(conn)
        return conn

    if NEW_API:  # pragma: no cover - only with websockets >= 14
        kwargs["additional_headers"] = dict(headers)
        kwargs["create_connection"] = factory
    else:
        kwargs["extra_headers"] = dict(headers)
        kwargs["create_protocol"] = factory
    try:
        conn = cast(Connection, await _connect(url, **kwargs))
    except BaseException:
        # Cancelled mid-handshake, the library leaves the socket open.
        for c in made:
            transport = getattr(c, "transport", None)  # unset before TCP and TLS are up
            if transport is not None:
                transport.abort()
        raise
    return conn


def refusal(exc: BaseException) -> tuple[int, str | None]:
    """The HTTP status and Retry-After of a connect the node answered
    without upgrading; (0, None) for any other failure."""
    status = getattr(exc, "status_code", None)  # legacy InvalidStatusCode
    headers = getattr(exc, "headers", None)
    response = getattr(exc, "response", None)  # new InvalidStatus
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
        headers = getattr(response, "headers", None)
    if not isinstance(status, int):
        return 0, None
    value = headers.get("Retry-After") if headers is not None else None
    return status, value


def close_of(exc: ConnectionClosed) -> tuple[int, str]:
    """The close code and reason the node sent; 1006 and "" when the socket
    dropped without a close frame."""
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is None:
        return 1006, ""
    return int(rcvd.code), str(rcvd.reason)


def is_closed(conn: Connection) -> bool:
    """Whether the connection is closed (both APIs)."""
    closed = getattr(conn, "closed", None)
    if isinstance(closed, bool):
        return closed
    return getattr(getattr(conn, "state", None), "name", "") == "CLOSED"  # pragma: no cover
