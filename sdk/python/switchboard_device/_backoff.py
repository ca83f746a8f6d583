"""Waits between sessions: exponential backoff with full jitter, the delay
a 1012 names, and a refusal's Retry-After (the Go SDK's internal/backoff
and device.rebalanceDelay / device.retryAfter)."""

from __future__ import annotations

import email.utils
import random
import re
import time
from typing import Callable

MAX_REBALANCE_DELAY = 600.0
"""Longest wait a 1012 reason can ask for (seconds): a typo in a node
("30h" for "30m") must not park its devices for a day."""

MAX_RETRY_AFTER = 300.0
"""Longest wait a Retry-After can ask for (seconds): a node asks for at most
10 s, and a wrong header must not park a device for hours."""


def ceiling(base: float, max_delay: float, attempt: int) -> float:
    """The longest wait after attempt failures: min(max_delay, base·2^attempt)."""
    if attempt >= 64 or base * (1 << attempt) > max_delay:
        return max_delay
    return base * (1 << attempt)


class Backoff:
    """Counts failed attempts and says how long to wait after each: a
    uniform random wait in [0, min(max, min·2^attempt)] (full jitter), so a
    fleet that lost its node spreads out instead of coming back in step."""

    def __init__(self, min_delay: float, max_delay: float, rand: Callable[[float, float], float] = random.uniform) -> None:
        if min_delay <= 0 or max_delay < min_delay:
            raise ValueError(f"backoff bounds {min_delay}, {max_delay}: want 0 < min <= max")
        self.min = min_delay
        self.max = max_delay
        self.attempts = 0
        self._rand = rand

    def next(self) -> float:
        """The wait before the next attempt; counts one failure."""
        d = self._rand(0.0, ceiling(self.min, self.max, self.attempts))
        self.attempts += 1
        return d

    def reset(self) -> None:
        """Start again from min, after a success."""
        self.attempts = 0


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """A Go duration ("30s", "1m30s", "500ms") in seconds, or None."""
    pos, total = 0, 0.0
    if not text:
        return None
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def rebalance_delay(reason: str) -> float:
    """The delay a node gave with close code 1012, such as "30s" or
    "reconnect in 30s", at most MAX_REBALANCE_DELAY; absent or unreadable,
    a second."""
    for field in reason.split():
        d = parse_duration(field)
        if d is not None and d > 0:
            return min(d, MAX_REBALANCE_DELAY)
    return 1.0


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float:
    """A Retry-After header in seconds (whole seconds, or an HTTP date), at
    most MAX_RETRY_AFTER; 0 when absent or unreadable."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        return 0.0
    return min(max(when.timestamp() - now(), 0.0), MAX_RETRY_AFTER)
