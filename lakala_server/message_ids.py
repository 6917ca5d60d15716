"""Exactly once for clients that retry: a REST or socket.io message may carry a client message
id (`metadata.message_id`, 1-64 characters of A-Z a-z 0-9 _ -). The first message with an id
is handled; a retry with the same id, on any replica, gets the first answer again and is never
handled a second time. docs/clients.md is the contract.

A message id belongs to one conversation of one channel; its record is kept MESSAGE_ID_TTL (a
day). The record of an id is a small state machine:

- none: the message was not seen. `begin` claims it (`process`): the claimant handles it,
  recording every reply, and `finish` stores the replies as the answer.
- processing: a replica is handling it. A retry waits (polling, at most WAIT_SECONDS) for the
  answer; past that it is told the message is still in progress, and may retry later.
- done: the stored answer; a retry gets it again (`replay`).
- processing, but its processor is gone (Redis: its lease, renewed every few seconds while it
  works, ran out; in memory: the handling was cancelled): the next retry takes it over
  (`recover`). It first looks for the message in the conversation's tracker: Rasa saves a turn
  in one write at its end, so if the message is there, its turn happened and the bot's
  messages after it are the answer; only if it is not there is the message handled. So a
  message is neither lost nor handled twice, unless a live processor lost its lease (Redis
  unreachable or the server stalled for longer than LEASE_SECONDS) and the turn was saved
  after the retry looked.

With REDIS_URL the records are in Redis, shared by every replica (Lua scripts make each step
atomic); without it, in this process's memory (at most MAX_MEMORY_IDS, oldest first out).
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional

from rasa.core.channels.channel import UserMessage
from rasa.shared.core.events import BotUttered, UserUttered
from redis.exceptions import RedisError

from lakala_server import fallback, shared, texts

logger = logging.getLogger(__name__)

MESSAGE_ID_KEY = "message_id"
VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MESSAGE_ID_TTL = 24 * 3600
LEASE_SECONDS = 10.0
WAIT_SECONDS = 10.0
POLL_SECONDS = 0.1
MAX_MEMORY_IDS = 10_000
INVALID_RESPONSE = "utter_message_id_invalid"
IN_PROGRESS_RESPONSE = "utter_message_in_progress"
FAILURE_RESPONSE = "utter_backend_failed"

Answer = List[Dict[str, Any]]

PROCESS, RECOVER, REPLAY, BUSY, FAILED = "process", "recover", "replay", "busy", "failed"
_PROCESSING = "processing"


@dataclass
class Turn:
    """What `begin` decided for a message id: PROCESS or RECOVER (the caller owns it now),
    REPLAY (`answer` is the first answer) or BUSY (another processor is at work)."""

    kind: str
    key: str
    token: str = ""
    answer: Optional[Answer] = None


def valid(message_id: Any) -> bool:
    return isinstance(message_id, str) and VALID_ID.fullmatch(message_id) is not None


def record_key(channel: str, conversation: str, message_id: str) -> str:
    return shared.key("message", channel, conversation, message_id)


class MemoryRecords:
    """The records in this process (no REDIS_URL: the server is one process)."""

    def __init__(self, max_ids: int = MAX_MEMORY_IDS, ttl: float = MESSAGE_ID_TTL) -> None:
        self.max_ids, self.ttl = max_ids, ttl
        # key -> (state: processing | abandoned | the answer, expiry on the monotonic clock)
        self._records: OrderedDict[str, tuple] = OrderedDict()

    def _get(self, key: str, now: float) -> Any:
        while self._records:
            oldest, (_, expires) = next(iter(self._records.items()))
            if expires > now:
                break
            del self._records[oldest]
        found = self._records.get(key)
        return None if found is None else found[0]

    def _put(self, key: str, state: Any, now: float) -> None:
        self._records.pop(key, None)
        self._records[key] = (state, now + self.ttl)
        while len(self._records) > self.max_ids:
            self._records.popitem(last=False)

    async def begin(self, key: str) -> Turn:
        now = time.monotonic()
        state = self._get(key, now)
        if isinstance(state, list):
            return Turn(REPLAY, key, answer=copy.deepcopy(state))
        if state == _PROCESSING:
            return Turn(BUSY, key)
        self._put(key, _PROCESSING, now)
        return Turn(RECOVER if state is not None else PROCESS, key, token=key)

    async def keep(self, turn: Turn) -> bool:
        return True  # the processor is this process: alive while this runs

    async def finish(self, turn: Turn, answer: Answer) -> None:
        if not isinstance(self._get(turn.key, time.monotonic()), list):
            self._put(turn.key, copy.deepcopy(answer), time.monotonic())

    async def abandon(self, turn: Turn) -> None:
        if self._get(turn.key, time.monotonic()) == _PROCESSING:
            self._put(turn.key, "abandoned", time.monotonic())


# KEYS: record, lease. ARGV: token, lease ms, record ttl s. The record is "processing" or the
# answer (JSON); the lease, while it lives, names the replica processing the message.
_BEGIN = """
local state = redis.call('GET', KEYS[1])
if state and state ~= 'processing' then return {'replay', state} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if state then return {'recover', ''} end
  redis.call('SET', KEYS[1], 'processing', 'EX', ARGV[3])
  return {'process', ''}
end
return {'busy', ''}
"""
# KEYS: lease. ARGV: token, lease ms.
_KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: record, lease. ARGV: token, answer, record ttl s. The first answer stored stays.
_FINISH = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
local state = redis.call('GET', KEYS[1])
if state and state ~= 'processing' then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
# KEYS: lease. ARGV: token.
_ABANDON = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisRecords:
    """The records in Redis, shared by every replica (REDIS_URL)."""

    def __init__(self, client: Any, lease_seconds: float = LEASE_SECONDS, ttl: int = MESSAGE_ID_TTL) -> None:
        self.client, self.lease_ms, self.ttl = client, int(lease_seconds * 1000), ttl
        self._begin = client.register_script(_BEGIN)
        self._keep = client.register_script(_KEEP)
        self._finish = client.register_script(_FINISH)
        self._abandon = client.register_script(_ABANDON)

    async def begin(self, key: str) -> Turn:
        token = secrets.token_hex(8)
        kind, state = await self._begin(keys=[key, key + ":lease"], args=[token, self.lease_ms, self.ttl])
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == REPLAY:
            return Turn(REPLAY, key, answer=json.loads(state))
        return Turn(kind, key, token=token if kind in (PROCESS, RECOVER) else "")

    async def keep(self, turn: Turn) -> bool:
        return bool(await self._keep(keys=[turn.key + ":lease"], args=[turn.token, self.lease_ms]))

    async def finish(self, turn: Turn, answer: Answer) -> None:
        await self._finish(keys=[turn.key, turn.key + ":lease"], args=[turn.token, json.dumps(answer), self.ttl])

    async def abandon(self, turn: Turn) -> None:
        await self._abandon(keys=[turn.key + ":lease"], args=[turn.token])


_memory = MemoryRecords()
_redis: Dict[int, RedisRecords] = {}


def records() -> Any:
    """Redis's records with REDIS_URL, else this process's."""
    client = shared.client()
    if client is None:
        return _memory
    found = _redis.get(id(client))
    if found is None or found.client is not client:
        found = _redis[id(client)] = RedisRecords(client)
    return found


async def settle(store: Any, key: str, wait_seconds: float = WAIT_SECONDS) -> Turn:
    """`begin`, again every POLL_SECONDS while another processor is at work, at most `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    while True:
        turn = await store.begin(key)
        if turn.kind != BUSY or time.monotonic() >= deadline:
            return turn
        await asyncio.sleep(POLL_SECONDS)


_app: Any = None


def use(app: Any) -> None:
    """The server's start hook hands over the Sanic app, whose agent has the tracker store."""
    global _app
    _app = app


async def answer_in_tracker(conversation: str, message_id: str) -> Optional[Answer]:
    """The bot's messages after the user message with this id, if the tracker has it."""
    agent = getattr(getattr(_app, "ctx", None), "agent", None)
    if agent is None or agent.tracker_store is None:
        return None
    tracker = await agent.tracker_store.retrieve(conversation)
    if tracker is None:
        return None
    answer: Optional[Answer] = None
    for event in tracker.events:
        if isinstance(event, UserUttered):
            if answer is not None:
                break
            if isinstance(event.metadata, dict) and event.metadata.get(MESSAGE_ID_KEY) == message_id:
                answer = []
        elif answer is not None and isinstance(event, BotUttered):
            answer.append(event.message())
    return answer


def message_id_of(message: UserMessage) -> Any:
    metadata = message.metadata
    return metadata.get(MESSAGE_ID_KEY) if isinstance(metadata, dict) else None


async def _say(message: UserMessage, response: Dict[str, Any]) -> None:
    await message.output_channel.send_response(message.sender_id, copy.deepcopy(response))


async def _keep_alive(store: Any, turn: Turn) -> None:
    while True:
        await asyncio.sleep(LEASE_SECONDS / 3)
        try:
            if not await store.keep(turn):
                logger.error("lost the lease of message %s while handling it", turn.key)
                return
        except RedisError:
            logger.warning("could not renew the lease of message %s", turn.key, exc_info=True)


async def _handle_recording(
    message: UserMessage, store: Any, turn: Turn, on_new_message: Callable[[UserMessage], Awaitable[Any]]
) -> None:
    channel = message.output_channel
    original = channel.send_response
    answer: Answer = []

    async def recording(recipient_id: str, response: Dict[str, Any]) -> None:
        answer.append(copy.deepcopy(response))  # send_response pops keys from what it is given
        await original(recipient_id, response)

    channel.send_response = recording  # type: ignore[method-assign]
    keeper = asyncio.ensure_future(_keep_alive(store, turn))
    finished = False
    try:
        await on_new_message(message)
        # A turn the conversation store could not keep is given up to the client's retry.
        finished = not fallback.turn_not_stored.get()
    finally:
        keeper.cancel()
        channel.send_response = original  # type: ignore[method-assign]
        await _release(store, turn, answer if finished else None)


async def _recover(message: UserMessage, message_id: str, store: Any, turn: Turn) -> Turn:
    """A message whose processor stopped: replayed from the tracker if its turn was saved."""
    try:
        found = await answer_in_tracker(message.sender_id, message_id)
        if found is None:
            return turn
        logger.warning("message %s was handled by a processor that stopped; its answer comes from the tracker",
                       turn.key)
        answer = found or [texts.response(FAILURE_RESPONSE)]  # that turn's only reply was the apology
        await _release(store, turn, answer)
        return Turn(REPLAY, turn.key, answer=answer)
    except Exception:
        logger.exception("could not look for message %s in the tracker; it is not handled now", turn.key)
        await _release(store, turn, None)
        return Turn(FAILED, turn.key)


async def _release(store: Any, turn: Turn, answer: Optional[Answer]) -> None:
    """Stores the answer, or (None) gives the message up to the next retry. If Redis fails
    here, the lease runs out and the next retry recovers the message from the tracker."""
    try:
        if answer is None:
            await store.abandon(turn)
        else:
            await store.finish(turn, answer)
    except RedisError:
        logger.exception("could not store the outcome of message %s", turn.key)


def exactly_once(
    on_new_message: Callable[[UserMessage], Awaitable[Any]]
) -> Callable[[UserMessage], Awaitable[Any]]:
    """Wraps a channel's (never silent) message handler: a message id is handled once."""

    async def handle(message: UserMessage) -> None:
        message_id = message_id_of(message)
        if message_id is None:
            await on_new_message(message)
            return
        if not valid(message_id):
            logger.warning("a message with an invalid message id refused")
            await _say(message, texts.response(INVALID_RESPONSE))
            return
        key = record_key(message.input_channel or "", message.sender_id, message_id)
        store = records()
        try:
            turn = await settle(store, key, WAIT_SECONDS)
        except RedisError:
            logger.exception("the message id store failed; the message is not handled")
            fallback.turn_not_stored.set(True)
            await _say(message, texts.response(FAILURE_RESPONSE))
            return
        if turn.kind == RECOVER:
            turn = await _recover(message, message_id, store, turn)
        if turn.kind == REPLAY:
            for response in turn.answer or []:
                await _say(message, response)
        elif turn.kind == BUSY:
            fallback.turn_not_stored.set(True)  # not handled by this request: the client retries later
            await _say(message, texts.response(IN_PROGRESS_RESPONSE))
        elif turn.kind == FAILED:
            fallback.turn_not_stored.set(True)
            await _say(message, texts.response(FAILURE_RESPONSE))
        else:
            await _handle_recording(message, store, turn, on_new_message)

    return handle
