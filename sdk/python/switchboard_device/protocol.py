"""The device wire protocol (docs/protocol.md): names, limits, close codes.

Mirrors the Go package device/protocol, so that the SDK and the nodes agree
on what a frame may hold before it is sent.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

SUBPROTOCOL: Final = "switchboard.v1"
"""Offered by devices and accepted by the connection nodes."""

PATH: Final = "/v1/connect"

# Frame types.
TYPE_COMMAND: Final = "command"  # node → device
TYPE_REPLY: Final = "reply"  # device → node
TYPE_EVENT: Final = "event"  # device → node
TYPE_STATE: Final = "state"  # node → device: the whole desired document
TYPE_REPORT: Final = "report"  # device → node: a merge patch of the reported document
TYPE_PING: Final = "ping"  # either way, for clients without control frames
TYPE_PONG: Final = "pong"
TYPE_ERROR: Final = "error"  # node → device: a frame it refused without closing

# Close codes the nodes send.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # node draining: reconnect (to any node)
CLOSE_BAD_MESSAGE: Final = 1008  # bad frame, or the device was disabled or deleted
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011  # the node cannot serve the session now
CLOSE_REBALANCE: Final = 1012  # reconnect after the delay in the reason
CLOSE_TRY_AGAIN_LATER: Final = 1013  # the device did not read its frames
CLOSE_REPLACED: Final = 4008  # a newer session of this device took over
CLOSE_RATE_LIMITED: Final = 4029  # the device sent faster than its rate

# Reasons of a 1008 after which reconnecting cannot succeed.
FATAL_1008_REASONS: Final = ("device disabled", "device deleted")

MAX_FRAME: Final = 64 << 10
"""Largest frame a node takes (bytes); a larger one is closed with 1009."""

MAX_STATE: Final = 32 << 10
"""Largest desired or reported document, and so report patch (bytes)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")


def valid_name(name: object) -> bool:
    """Whether name is a valid command or event name."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def encode(frame: dict[str, Any]) -> str:
    """Render a frame as compact JSON text.

    NaN and infinities are refused (ValueError): they are not JSON, and the
    node would close the session over them.
    """
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
