"""A small per-user store whose entries expire, bounded in size: the replay check's nonces,
the numbered options offered to a user, and answers carried over to a user's next reply."""
import time
from collections import OrderedDict
from typing import Any, Tuple

MAX_TRACKED = 10_000


class Expiring:
    """Entries live `ttl_seconds`; beyond MAX_TRACKED the oldest is evicted."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._items: OrderedDict[str, Tuple[float, Any]] = OrderedDict()

    def put(self, key: str, value: Any) -> None:
        self._items.pop(key, None)
        self._items[key] = (time.monotonic() + self.ttl, value)
        while len(self._items) > MAX_TRACKED:
            self._items.popitem(last=False)

    def get(self, key: str) -> Any:
        expires, value = self._items.get(key, (0.0, None))
        return value if expires > time.monotonic() else None

    def pop(self, key: str) -> Any:
        expires, value = self._items.pop(key, (0.0, None))
        return value if expires > time.monotonic() else None
