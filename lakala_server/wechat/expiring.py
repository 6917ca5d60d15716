"""Small per-user stores whose entries expire: Expiring (bounded, in memory) for the replay
check's nonces; UserStore, in memory or in Redis (RedisUserStore, REDIS_URL), for the numbered
options offered to a user and the answers carried over to a user's next reply."""
import json
import time
from collections import OrderedDict
from typing import Any, Callable, List, Tuple

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


class UserStore:
    """Per-user values that expire, behind one async interface: in this process's memory, or
    (RedisUserStore) in Redis, where every replica sees them."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._items = Expiring(ttl_seconds)

    async def put(self, openid: str, value: Any) -> None:
        self._items.put(openid, value)

    async def pop(self, openid: str) -> Any:
        return self._items.pop(openid)

    async def append(self, openid: str, item: Any) -> None:
        self._items.put(openid, (self._items.pop(openid) or []) + [item])

    async def pop_all(self, openid: str) -> List[Any]:
        return self._items.pop(openid) or []


class RedisUserStore(UserStore):
    """The same in Redis: JSON values under `<prefix>:<openid>`, expiring `ttl_seconds`."""

    def __init__(self, ttl_seconds: float, prefix: str, client: Callable[[], Any]) -> None:
        super().__init__(ttl_seconds)
        self.prefix = prefix
        self._client = client

    def _key(self, openid: str) -> str:
        return f"{self.prefix}:{openid}"

    async def put(self, openid: str, value: Any) -> None:
        await self._client().set(self._key(openid), json.dumps(value, ensure_ascii=False), ex=int(self.ttl))

    async def pop(self, openid: str) -> Any:
        raw = await self._client().getdel(self._key(openid))
        return json.loads(raw) if raw is not None else None

    async def append(self, openid: str, item: Any) -> None:
        async with self._client().pipeline(transaction=True) as pipe:
            key = self._key(openid)
            await pipe.rpush(key, json.dumps(item, ensure_ascii=False)).expire(key, int(self.ttl)).execute()

    async def pop_all(self, openid: str) -> List[Any]:
        async with self._client().pipeline(transaction=True) as pipe:
            key = self._key(openid)
            items, _ = await pipe.lrange(key, 0, -1).delete(key).execute()
        return [json.loads(item) for item in items]
