"""The lock that lets one conversation's turns run one at a time, in arrival order, across
every replica of the Rasa server (endpoints.yml `lock_store:`).

Rasa's RedisLockStore reads its ticket list, changes it and writes it back in three steps
(RasaHQ/rasa#9213), so two replicas taking the same sender's lock a few milliseconds apart
can both go ahead; their turns interleave and the tracker store loses or misplaces events.
Here every step is one Lua script run atomically on Redis:

- a turn draws a ticket (a counter per conversation) and waits in a queue ordered by ticket;
- the first ticket in the queue runs; release removes it and wakes the next one;
- every ticket has a lease: the running turn's lasts the lock lifetime (Rasa's
  TICKET_LOCK_LIFETIME, default 60 s), a waiting turn's a few seconds and is renewed while
  it waits. A replica killed mid-turn or while waiting leaves a ticket whose lease runs out,
  and the queue moves on. A waiter that gives up (its request cancelled) leaves at once;
- the keys expire with the last lease, so an idle conversation leaves nothing in Redis.

Without REDIS_URL the server is one process and this is Rasa's in-memory lock store.
A Redis failure while locking raises LockStoreUnavailable: the turn neither hangs nor runs
unlocked (the channels answer it with the apology, lakala_server/fallback.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, List, Optional

import redis.asyncio as aioredis
from rasa.constants import DEFAULT_SANIC_WORKERS, ENV_SANIC_WORKERS
from rasa.core.lock import Ticket, TicketLock
from rasa.core.lock_store import LOCK_LIFETIME, InMemoryLockStore, LockError
from rasa.utils.endpoints import EndpointConfig
from redis.exceptions import RedisError

from lakala_server import config, shared

logger = logging.getLogger(__name__)

# A waiting turn renews its place at least this often; one that stops (its process died) is
# skipped when its lease runs out.
MIN_WAITER_LEASE_SECONDS = 5.0
# A blocking wait for the wake-up must end well within the client's socket timeout.
MAX_BLOCK_SECONDS = shared.SOCKET_TIMEOUT_SECONDS / 2

# KEYS: state (hash: next ticket, last ticket served), queue (zset ticket->ticket),
# lease (zset ticket->deadline in ms, Redis's clock). ARGV[1]: lock lifetime ms,
# ARGV[2]: waiter lease ms, ARGV[3]: ticket (0: draw a new one).
_PRELUDE = """
local state, queue, lease = KEYS[1], KEYS[2], KEYS[3]
local lifetime, waiter_lease, ticket = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', lease, '-inf', now)
for _, gone in ipairs(expired) do redis.call('ZREM', queue, gone) end
redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
local function head()
  local first = redis.call('ZRANGE', queue, 0, 0)
  if first[1] then return tonumber(first[1]) end
  return 0
end
local function keep()
  local last = redis.call('ZRANGE', lease, -1, -1, 'WITHSCORES')
  if not last[1] then
    redis.call('DEL', state, queue, lease)
    return
  end
  local ttl = tonumber(last[2]) - now + 1000
  redis.call('PEXPIRE', state, ttl)
  redis.call('PEXPIRE', queue, ttl)
  redis.call('PEXPIRE', lease, ttl)
end
local function try()
  if head() == ticket then
    redis.call('ZADD', lease, now + lifetime, ticket)
    redis.call('HSET', state, 'served', ticket)
    return 1
  end
  redis.call('ZADD', lease, now + waiter_lease, ticket)
  return 0
end
"""

# Returns {ticket, 1 if it runs now else 0 (-1: its turn was skipped), ticket at the head}.
_TAKE = _PRELUDE + """
if ticket == 0 then
  ticket = redis.call('HINCRBY', state, 'next', 1)
  local last = redis.call('ZRANGE', queue, -1, -1)
  if last[1] and tonumber(last[1]) >= ticket then
    ticket = tonumber(last[1]) + 1
    redis.call('HSET', state, 'next', ticket)
  end
  redis.call('ZADD', queue, ticket, ticket)
elseif not redis.call('ZSCORE', queue, ticket) then
  -- its lease ran out while it waited (a stalled process): back in its place unless a
  -- later ticket has run meanwhile
  if ticket <= tonumber(redis.call('HGET', state, 'served') or '0') then
    keep()
    return {ticket, -1, head()}
  end
  redis.call('ZADD', queue, ticket, ticket)
end
local runs = try()
keep()
return {ticket, runs, head()}
"""

# Removes the ticket; returns the ticket now at the head (0: none), to be woken.
_LEAVE = _PRELUDE + """
redis.call('ZREM', queue, ticket)
redis.call('ZREM', lease, ticket)
keep()
return head()
"""


class LockStoreUnavailable(LockError):
    """Redis did not answer while a turn took or waited for its conversation's lock."""


class ConversationLockStore(InMemoryLockStore):
    """Rasa's lock store interface (`lock(conversation_id)`), atomic on Redis with REDIS_URL."""

    def __init__(
        self,
        endpoint_config: Optional[EndpointConfig] = None,
        redis_client: Optional[Callable[[], Optional[aioredis.Redis]]] = None,
        key_prefix: str = shared.key("lock"),
    ) -> None:
        super().__init__()
        self._client = redis_client or shared.client
        self._prefix = key_prefix
        self.distributed = redis_client is not None or shared.enabled()
        if not self.distributed and _sanic_workers() > DEFAULT_SANIC_WORKERS:
            raise config.ConfigError(
                f"{ENV_SANIC_WORKERS} is more than 1 but REDIS_URL is not set: the workers would not "
                "share their conversation locks. Set REDIS_URL or run one worker."
            )
        logger.info("conversation locks: %s", "on Redis (REDIS_URL)" if self.distributed else "in memory")

    def _keys(self, conversation_id: str) -> List[str]:
        return [f"{self._prefix}:{conversation_id}:{part}" for part in ("state", "queue", "lease")]

    def _wake_key(self, conversation_id: str, ticket: int) -> str:
        return f"{self._prefix}:{conversation_id}:wake:{ticket}"

    @asynccontextmanager
    async def lock(
        self,
        conversation_id: str,
        lock_lifetime: float = LOCK_LIFETIME,
        wait_time_in_seconds: float = 1,
    ) -> AsyncIterator[TicketLock]:
        """Holds the conversation's lock for the body (at most `lock_lifetime` s); waits for it,
        checking at least every `wait_time_in_seconds` s."""
        if not self.distributed:
            async with super().lock(conversation_id, lock_lifetime, wait_time_in_seconds) as held:
                yield held
            return
        redis = self._client()
        if redis is None:
            raise LockStoreUnavailable("REDIS_URL is no longer set: conversation locks need Redis")
        lifetime_ms = max(1, int(lock_lifetime * 1000))
        ticket = await self._take(redis, conversation_id, lifetime_ms, wait_time_in_seconds)
        try:
            yield TicketLock(conversation_id, deque([Ticket(ticket, time.time() + lock_lifetime)]))
        finally:
            # Shielded: a request cancelled as it finishes still hands the lock on at once.
            await asyncio.shield(self._leave(redis, conversation_id, ticket, lifetime_ms, wait_time_in_seconds))

    async def _take(self, redis: aioredis.Redis, conversation_id: str, lifetime_ms: int, wait: float) -> int:
        lease_ms = int(max(MIN_WAITER_LEASE_SECONDS, 3 * wait) * 1000)
        ticket, runs, head = 0, 0, 0
        try:
            ticket, runs, head = await self._script(redis, _TAKE, conversation_id, lifetime_ms, lease_ms, 0)
            # A turn stuck behind the same ticket for longer than a lease and a lifetime is
            # behind a holder that neither finishes nor expires: give up rather than hang.
            patience = lifetime_ms / 1000 + lease_ms / 1000 + wait
            waiting_since, waiting_for = time.monotonic(), head
            while runs == 0:
                await redis.blpop([self._wake_key(conversation_id, ticket)], timeout=_block_seconds(wait))
                _, runs, head = await self._script(redis, _TAKE, conversation_id, lifetime_ms, lease_ms, ticket)
                if head != waiting_for:
                    waiting_since, waiting_for = time.monotonic(), head
                elif runs == 0 and time.monotonic() - waiting_since > patience:
                    raise LockError(f"conversation '{conversation_id}': the turn ahead neither ends nor expires")
            if runs < 0:
                raise LockError(
                    f"conversation '{conversation_id}': this turn stalled for longer than its lease and "
                    "later turns have run; running it now would reorder the conversation"
                )
            logger.debug("conversation '%s': ticket %s runs", conversation_id, ticket)
            return ticket
        except RedisError as error:
            await self._abandon(redis, conversation_id, ticket, lifetime_ms, wait)
            raise LockStoreUnavailable(
                f"Redis failed while locking conversation '{conversation_id}': {error}"
            ) from error
        except BaseException:  # gave up, cancelled or skipped: the turns behind must not wait for it
            await self._abandon(redis, conversation_id, ticket, lifetime_ms, wait)
            raise

    async def _abandon(self, redis: aioredis.Redis, conversation_id: str, ticket: int, lifetime_ms: int,
                       wait: float) -> None:
        if ticket:
            await asyncio.shield(self._leave(redis, conversation_id, ticket, lifetime_ms, wait))

    async def _leave(self, redis: aioredis.Redis, conversation_id: str, ticket: int, lifetime_ms: int,
                     wait: float) -> None:
        lease_ms = int(max(MIN_WAITER_LEASE_SECONDS, 3 * wait) * 1000)
        try:
            head = await self._script(redis, _LEAVE, conversation_id, lifetime_ms, lease_ms, ticket)
            if head:
                wake = self._wake_key(conversation_id, head)
                await redis.pipeline(transaction=False).rpush(wake, 1).pexpire(wake, lease_ms).execute()
        except RedisError:
            # The turn itself is done; its hold runs out after the lock lifetime.
            logger.warning("conversation '%s': releasing ticket %s failed; it expires by itself",
                           conversation_id, ticket, exc_info=True)

    async def _script(self, redis: aioredis.Redis, source: str, conversation_id: str, *args: int) -> Any:
        # EVAL, not EVALSHA: a script Redis has not cached yet would need a second round trip,
        # and turns could overtake one another in between.
        result = await redis.eval(source, 3, *self._keys(conversation_id), *args)
        return tuple(int(value) for value in result) if isinstance(result, list) else int(result)


def _block_seconds(wait: float) -> float:
    return min(max(wait, 0.01), MAX_BLOCK_SECONDS)  # BLPOP's 0 would block for ever


def _sanic_workers() -> int:
    try:
        return int(os.environ.get(ENV_SANIC_WORKERS, DEFAULT_SANIC_WORKERS))
    except ValueError:
        return DEFAULT_SANIC_WORKERS

