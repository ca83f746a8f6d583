"""TLS to the nodes: which certificates to trust, and pinning.

A pin is checked inside the TLS handshake (a custom SSLContext.sslobject_class,
which asyncio's TLS layer uses for every connection): a peer whose
certificate differs fails the handshake, so the HTTP upgrade, and the
device's credentials in it, are never written to it. This works whatever
the websockets version, since it never sees the connection before.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from .errors import PinMismatch


def parse_pin(pin: str) -> bytes:
    """The 32 bytes of a SHA-256 fingerprint written "AB:CD:…" (colons
    optional, any case)."""
    hexed = pin.strip().replace(":", "").replace(" ", "")
    try:
        raw = bytes.fromhex(hexed)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"pin {pin!r} is not a SHA-256 fingerprint (64 hex digits, colons optional)")
    return raw


def fingerprint(der: bytes) -> str:
    """A certificate's SHA-256 fingerprint as the nodes log it: "AB:CD:…"."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def check_pin(der: bytes | None, pin: bytes) -> None:
    """Raise PinMismatch unless der (a certificate) hashes to pin."""
    if der is None:
        raise PinMismatch("the node sent no certificate to check the pin against")
    if not hmac.compare_digest(hashlib.sha256(der).digest(), pin):
        raise PinMismatch(f"the node's certificate {fingerprint(der)} is not the pinned one")


def _pinned_object_class(pin: bytes) -> type[ssl.SSLObject]:
    class PinnedSSLObject(ssl.SSLObject):
        """Checks the peer's certificate against the pin once the handshake
        is done, before the connection is handed to the application."""

        def do_handshake(self) -> None:
            super().do_handshake()  # raises SSLWantReadError until done
            check_pin(self.getpeercert(binary_form=True), pin)

    return PinnedSSLObject


def client_context(ca_file: str | None, ssl_context: ssl.SSLContext | None, pin: str | None) -> ssl.SSLContext:
    """The SSLContext to connect with.

    ssl_context wins over ca_file; with neither, the system's roots are
    trusted, except that a pin alone trusts exactly the pinned certificate
    (a self-signed node's). A pin is checked in addition to any CA.
    Raises ValueError for a malformed pin.
    """
    pinned = parse_pin(pin) if pin else None
    ctx: ssl.SSLContext
    if ssl_context is not None:
        ctx = ssl_context  # pinning sets its sslobject_class
    elif ca_file:
        ctx = ssl.create_default_context(cafile=ca_file)
    elif pinned is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pin is the whole check
    else:
        ctx = ssl.create_default_context()
    if pinned is not None:
        ctx.sslobject_class = _pinned_object_class(pinned)
    return ctx

