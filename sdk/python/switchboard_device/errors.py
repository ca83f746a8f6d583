"""Errors the SDK raises or reports."""

from __future__ import annotations

import ssl


class Unauthorized(Exception):
    """Ends Client.run: the node refused the credentials (HTTP 401), or
    closed the session because the device was disabled or deleted (1008).
    Retrying with the same credentials would not help."""


class Replaced(Exception):
    """A newer session of the same device replaced this one (close code
    4008). Client.run waits replaced_delay, jittered, and tries again, in
    case the other session was a ghost of this device's own past."""


class NotConnected(Exception):
    """Raised by Client.event while the device has no session (events are
    at most once: they are not kept for the next session)."""


class DialError(Exception):
    """An attempt to connect that failed.

    status_code is the node's HTTP status when it answered without
    upgrading (401, 429, 503), else 0; retry_after is how long (seconds) its
    429 or 503 asked the device to wait, else 0.
    """

    def __init__(self, url: str, cause: BaseException, status_code: int = 0, retry_after: float = 0.0) -> None:
        super().__init__(f"connecting to {url}: {cause}")
        self.url = url
        self.cause = cause
        self.status_code = status_code
        self.retry_after = retry_after


class PinMismatch(ssl.SSLCertVerificationError):
    """The node's certificate is not the pinned one. Raised during the TLS
    handshake, before any byte of the HTTP upgrade (and so the device's
    credentials) is written."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "certificate does not match the pin"
