"""Recent command ids and their replies (the Go SDK's device/dedup.go).

Delivery is at least once: a command redelivered after a reconnect is
answered from here instead of being run twice.
"""

from __future__ import annotations


class Dedup:
    """Remembers the newest `size` command ids: their reply frames once
    their handlers finished, None while they run."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("dedup size must be at least 1")
        self._replies: dict[str, str | None] = {}
        self._order: list[str | None] = [None] * size  # ring of ids, oldest at _next
        self._next = 0

    def begin(self, id: str) -> tuple[str | None, bool]:
        """Record id. Returns (reply, fresh): fresh is False when id was
        seen, and reply is then its answer, or None while the first run is
        still going."""
        if id in self._replies:
            return self._replies[id], False
        old = self._order[self._next]
        if old is not None:
            self._replies.pop(old, None)
        self._order[self._next] = id
        self._next = (self._next + 1) % len(self._order)
        self._replies[id] = None
        return None, True

    def finish(self, id: str, reply: str) -> None:
        """Store id's reply, if id is still remembered."""
        if id in self._replies:
            self._replies[id] = reply

    def forget(self, id: str) -> None:
        """Drop id, so that its next delivery runs again."""
        self._replies.pop(id, None)

    def __len__(self) -> int:
        return len(self._replies)
