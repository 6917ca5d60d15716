"""What the WeChat channel shares between Rasa replicas through Redis (REDIS_URL): which replica
handles a message, the answer it publishes for the others, who hands that answer to the user,
and the durable outbox of answers sent through the customer-service API. Every key is in the
account's namespace, lakala:wechat:<appid>:..., so one Redis can serve several accounts.

Without REDIS_URL none of this is used: the server is one process and delivery.py keeps it all
in memory.
"""
import asyncio
import json
import logging
import os
import secrets
import socket
from typing import Any, Awaitable, Callable, List, Optional, Tuple

from redis.exceptions import RedisError, ResponseError

from lakala_server import config, shared
from lakala_server.wechat.expiring import RedisUserStore

logger = logging.getLogger(__name__)

# How often a request for a message handled on another replica looks for its answer.
POLL_SECONDS = 0.1
GROUP = "senders"
# An outbox entry a sender took this long ago and never acknowledged belongs to a dead sender
# (or a hung one): another replica takes it over. Longer than one send can take (api.py: a token
# fetch and two sends of at most 10 s each).
DEFAULT_RECLAIM_SECONDS = config.DEFAULT_WECHAT_OUTBOX_RECLAIM_SECONDS


def replica_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Cluster:
    """One account's shared state in Redis, as seen by one replica."""

    def __init__(self, appid: str, dedupe_seconds: float, reclaim_seconds: float = DEFAULT_RECLAIM_SECONDS) -> None:
        self.appid = appid
        self.replica = replica_name()
        self.dedupe_seconds = int(dedupe_seconds)
        self.reclaim_seconds = reclaim_seconds

    @staticmethod
    def redis() -> Any:
        return shared.client()

    def key(self, *parts: str) -> str:
        return shared.key("wechat", self.appid, *parts)

    def user_store(self, name: str, ttl_seconds: float) -> RedisUserStore:
        return RedisUserStore(ttl_seconds, self.key(name), self.redis)

    # --- one message across replicas ------------------------------------------------------------

    async def first_delivery(self, message_key: str) -> bool:
        """True for the one replica that handles the message (SET NX); the others answer
        WeChat from what it publishes. If Redis fails, this replica handles it: a message
        handled twice is better than one never answered."""
        try:
            return bool(await self.redis().set(self.key("seen", message_key), self.replica, nx=True,
                                               ex=self.dedupe_seconds))
        except RedisError as error:
            logger.error("Redis failed deduplicating a WeChat message (%s); handling it here", type(error).__name__)
            return True

    async def publish(self, message_key: str, reply: Optional[str]) -> None:
        """The message's answer (None: nothing to say), for requests waiting on other replicas."""
        try:
            await self.redis().set(self.key("answer", message_key), json.dumps({"reply": reply}, ensure_ascii=False),
                                   ex=self.dedupe_seconds)
        except RedisError as error:
            logger.error("Redis failed publishing a WeChat answer (%s)", type(error).__name__)

    async def published(self, message_key: str) -> Tuple[bool, Optional[str]]:
        """(found, reply) of the answer published for the message."""
        try:
            raw = await self.redis().get(self.key("answer", message_key))
        except RedisError:
            return False, None
        if raw is None:
            return False, None
        return True, json.loads(raw)["reply"]

    async def count_delivery(self, message_key: str, fallback: int) -> int:
        """Which of WeChat's deliveries of the message this is, counted on every replica
        (`fallback`, this replica's count, if Redis fails)."""
        key = self.key("deliveries", message_key)
        try:
            async with self.redis().pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(key).expire(key, self.dedupe_seconds).execute()
            return int(count)
        except RedisError:
            return fallback

    async def claim(self, message_key: str, claimant: str) -> bool:
        """True for the one claimant (a waiting request, or the outbox) that hands the answer
        to the user; the same claimant may ask again."""
        key = self.key("claimed", message_key)
        try:
            if await self.redis().set(key, claimant, nx=True, ex=self.dedupe_seconds):
                return True
            holder = await self.redis().get(key)
        except RedisError as error:
            logger.error("Redis failed claiming a WeChat answer (%s); sending it from here", type(error).__name__)
            return True
        return holder is not None and holder.decode("utf-8") == claimant

    def claimant(self) -> str:
        return f"{self.replica}:{secrets.token_hex(4)}"


class MessageShare:
    """One message's share of the Cluster, for its Delivery on the replica that handles it."""

    def __init__(self, cluster: Cluster, message_key: str) -> None:
        self.cluster = cluster
        self.message_key = message_key
        self._claimant = cluster.claimant()

    async def publish(self, reply: Optional[str]) -> None:
        await self.cluster.publish(self.message_key, reply)

    async def claim(self) -> bool:
        return await self.cluster.claim(self.message_key, self._claimant)

    async def count_delivery(self, fallback: int) -> int:
        return await self.cluster.count_delivery(self.message_key, fallback)


class OutboxStream:
    """Answers for the customer-service API in a Redis Stream read by a consumer group: each
    replica's sender reads new entries (XREADGROUP), sends them and acknowledges (XACK, XDEL);
    entries a sender took and never acknowledged for `reclaim_seconds` (it died) are taken over
    by a live one (XAUTOCLAIM) and sent. At least once: see docs/wechat.md."""

    def __init__(self, cluster: Cluster, deliver: Callable[[str, str], Awaitable[Any]]) -> None:
        self.cluster = cluster
        self.stream = cluster.key("outbox")
        self.deliver = deliver
        self._group_ready = False

    async def add(self, openid: str, text: str) -> None:
        await self._ensure_group()
        await self.cluster.redis().xadd(self.stream, {"openid": openid, "text": text})

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.cluster.redis().xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def _send(self, entries: List[Tuple[bytes, Any]]) -> None:
        redis = self.cluster.redis()
        for entry_id, fields in entries:
            if fields:  # an entry deleted meanwhile comes back without its fields
                await self.deliver(fields[b"openid"].decode("utf-8"), fields[b"text"].decode("utf-8"))
            # Acknowledged as soon as WeChat took it: a death before this line sends it twice.
            await redis.xack(self.stream, GROUP, entry_id)
            await redis.xdel(self.stream, entry_id)

    async def run_once(self, block_ms: int = 1000) -> None:
        """Sends what is new for this replica, then what dead senders left."""
        await self._ensure_group()
        redis = self.cluster.redis()
        found = await redis.xreadgroup(GROUP, self.cluster.replica, {self.stream: ">"}, count=10, block=block_ms)
        for _, entries in found or []:
            await self._send(entries)
        _, claimed, _ = (await redis.xautoclaim(
            self.stream, GROUP, self.cluster.replica, int(self.cluster.reclaim_seconds * 1000), "0-0", count=10,
        ))[:3]
        if claimed:
            logger.warning("taking over %d customer-service message(s) a stopped replica did not send", len(claimed))
            await self._send(claimed)

    async def run(self) -> None:
        """The replica's sender, until cancelled."""
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the WeChat outbox sender failed; trying again")
                self._group_ready = False
                await asyncio.sleep(1)
