"""One WeChat message, however many times WeChat delivers it, from the moment it arrives to
the moment its answer reaches the user.

WeChat POSTs a message and listens 5 seconds for the passive reply; without one it drops the
connection and delivers the message again, 3 times in all, and it listens only to the newest
delivery. A Delivery answers each of those requests, and moves through these states:

    RECEIVED -> PROCESSING                 the bot is asked (once, whatever WeChat retries)
    PROCESSING -> ANSWERED_IN_TIME         the answer is ready while WeChat's first request waits
    PROCESSING -> DELIVERED_BY_RETRY       ... while one of WeChat's retries waits
    PROCESSING -> DEFERRED                 a request's deadline passed and it was answered without
                                           the answer: "success" (with the customer-service API),
                                           or the apology on WeChat's last delivery (without it)
    PROCESSING -> AWAITING_RETRY           the answer is ready and nobody waits for it: WeChat's
                                           retry should come for it (a request without the API
                                           stays silent past WeChat's 5 s so that WeChat retries)
    PROCESSING, DEFERRED -> NOTHING_TO_SEND  the bot had nothing to say and nobody waits
    DEFERRED -> DELIVERED_BY_RETRY         a retry came and waited (WeChat missed the "success")
    DEFERRED -> SENDING                    the answer is ready: it must go another way
    AWAITING_RETRY -> DELIVERED_BY_RETRY   WeChat's retry took the ready answer
    AWAITING_RETRY -> SENDING              no retry came (GIVE_UP_SECONDS): it goes another way
    SENDING -> DELIVERED_BY_API            sent as a customer-service message
    SENDING -> QUEUED                      in the durable outbox (REDIS_URL): a replica's sender sends it
    SENDING -> CARRIED_OVER                no API, or it failed: it comes with the user's next reply

The Outbox does the sending; Deliveries remembers each message for DEDUPE_TTL_SECONDS so that
WeChat's retries find their Delivery (the dedupe, in this process's memory).

With REDIS_URL several replicas may receive the same message (cluster.py). One handles it; its
Delivery publishes the answer, and whichever request or sender first claims it in Redis hands
it to the user. A Delivery with a MessageShare claims before every hand-over; one that loses
the claim ends in DELIVERED_BY_RETRY (a retry on another replica took it).
"""
import asyncio
import logging
import time
from enum import Enum
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Set

from lakala_server.wechat.api import CustomerServiceClient, WeChatAPIError, split_text
from lakala_server.wechat.envelope import MAX_CLOCK_SKEW_SECONDS
from lakala_server.wechat.expiring import MAX_TRACKED, UserStore

if TYPE_CHECKING:
    from lakala_server.wechat.cluster import MessageShare, OutboxStream

logger = logging.getLogger(__name__)

WECHAT_TIMEOUT_SECONDS = 5.0
# WeChat sends a message at most 3 times; the third delivery is the last chance to answer it.
LAST_DELIVERY = 3
# How long a ready answer waits for WeChat's retry before it goes another way.
GIVE_UP_SECONDS = 2 * WECHAT_TIMEOUT_SECONDS
# The rest of a long answer follows the passive reply this much later, so the pieces arrive in order.
REST_DELAY_SECONDS = 1.0
# Longer than the accepted clock skew, so a replayed request is caught by one or the other.
DEDUPE_TTL_SECONDS = MAX_CLOCK_SKEW_SECONDS + 60


# The reply that hands a message to the 公众号's customer-service agents (a passive reply only,
# lakala_server/handoff.py); never a text.
TRANSFER = "\x00transfer_customer_service"


class State(Enum):
    RECEIVED = "received"
    PROCESSING = "processing"
    DEFERRED = "deferred"
    AWAITING_RETRY = "awaiting retry"
    SENDING = "sending"
    ANSWERED_IN_TIME = "answered in time"
    DELIVERED_BY_RETRY = "delivered by retry"
    DELIVERED_BY_API = "delivered by API"
    QUEUED = "queued for the API"
    CARRIED_OVER = "carried over"
    NOTHING_TO_SEND = "nothing to send"


TRANSITIONS: Dict[State, Set[State]] = {
    State.RECEIVED: {State.PROCESSING},
    State.PROCESSING: {State.ANSWERED_IN_TIME, State.DELIVERED_BY_RETRY, State.DEFERRED, State.AWAITING_RETRY,
                       State.NOTHING_TO_SEND},
    State.DEFERRED: {State.DEFERRED, State.DELIVERED_BY_RETRY, State.SENDING, State.NOTHING_TO_SEND},
    State.AWAITING_RETRY: {State.DELIVERED_BY_RETRY, State.SENDING},
    State.SENDING: {State.DELIVERED_BY_API, State.QUEUED, State.CARRIED_OVER, State.NOTHING_TO_SEND},
}
# A request for a message in these states waits for the answer.
ANSWER_PENDING = {State.PROCESSING, State.DEFERRED}


class Outbox:
    """Answers that do not fit in a passive reply: sent through the customer-service API when
    there is one, else (or when it fails) carried over to the user's next passive reply. With
    a `stream` (REDIS_URL) they go through the durable outbox, and `carried_over` is in Redis."""

    def __init__(self, api: Optional[CustomerServiceClient], carry_over_seconds: float,
                 carried_over: Optional[UserStore] = None, stream: "Optional[OutboxStream]" = None) -> None:
        self.api = api
        self._carried_over = carried_over or UserStore(carry_over_seconds)
        self.stream = stream
        self._tasks: Set[asyncio.Task] = set()

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        # Keep a reference so the task is not garbage-collected before it finishes.
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, openid: str, reply: str) -> State:
        """Sends an answer outside a passive reply: DELIVERED_BY_API if the customer-service API
        took it, QUEUED if the durable outbox did, CARRIED_OVER if it waits for the next reply."""
        if reply == TRANSFER:
            # A transfer is a passive reply only. The conversation is paused, so the user's
            # next message is transferred; there is nothing to send now.
            logger.info("a transfer to customer service came too late for its passive reply")
            return State.NOTHING_TO_SEND
        if self.api is not None and self.stream is not None:
            try:
                await self.stream.add(openid, reply)
                return State.QUEUED
            except Exception:
                logger.exception("the durable outbox failed; sending from this replica")
        return await self.send_now(openid, reply)

    async def send_now(self, openid: str, reply: str) -> State:
        if self.api is not None:
            try:
                await self.api.send_text(openid, reply)
                return State.DELIVERED_BY_API
            except WeChatAPIError as error:
                logger.error("customer-service message failed (errcode %s); keeping it for the next reply",
                             error.errcode)
        await self._carried_over.append(openid, reply)
        return State.CARRIED_OVER

    async def _send_rest(self, openid: str, rest: str) -> None:
        await asyncio.sleep(REST_DELAY_SECONDS)
        await self.send(openid, rest)

    async def passive(self, openid: str, text: str) -> str:
        """The passive reply's text: what was carried over, then `text`, cut to WeChat's limit;
        the rest follows outside the reply. A transfer stays a transfer (what was carried over
        waits for the next reply)."""
        if text == TRANSFER:
            return text
        pending = await self._carried_over.pop_all(openid)
        pieces = split_text("\n\n".join(pending + [text]))
        if len(pieces) > 1:
            self.spawn(self._send_rest(openid, "\n".join(pieces[1:])))
        return pieces[0]

    async def forget(self, openid: str) -> None:
        await self._carried_over.pop_all(openid)

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()


class Delivery:
    """One WeChat message, however many times WeChat delivers it (see the module's docstring)."""

    def __init__(self, openid: str, outbox: Outbox, reply_deadline: float, still_working: str,
                 clock: Callable[[], float] = time.monotonic, share: "Optional[MessageShare]" = None) -> None:
        self.openid = openid
        self.share = share
        self._claim: Optional[asyncio.Future[bool]] = None
        self.outbox = outbox
        self.reply_deadline = reply_deadline
        self.still_working = still_working
        self.created = clock()
        self.state = State.RECEIVED
        self.history: List[State] = [State.RECEIVED]
        self.deliveries = 0
        self.reply: Optional[str] = None
        self._task: Optional[asyncio.Task[Optional[str]]] = None
        # The newest request still waiting within its deadline (WeChat listens only to the newest).
        self._waiter: Optional[asyncio.Future[Optional[str]]] = None
        self._waiting_delivery = 0

    @property
    def processed(self) -> bool:
        return self._task is not None and self._task.done()

    def _move(self, state: State) -> None:
        if state not in TRANSITIONS.get(self.state, set()):
            raise RuntimeError(f"a WeChat delivery cannot go from {self.state.value} to {state.value}")
        self.state = state
        self.history.append(state)

    def start(self, work: "Awaitable[Optional[str]]") -> None:
        """Received -> processing: `work` asks the bot and returns the answer (None for none)."""
        self._move(State.PROCESSING)
        self._task = asyncio.ensure_future(work)
        self._task.add_done_callback(self._settle)

    def _settle(self, task: "asyncio.Task[Optional[str]]") -> None:
        """The answer is ready: hand it to whoever can still deliver it."""
        if task.cancelled():
            return
        self.reply = task.result()
        if self.share is None:
            self._hand_over()
        else:
            self.outbox.spawn(self._settle_shared())

    def _waiting(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    async def _taken(self) -> bool:
        """True if the answer is this Delivery's to hand over (always, without a MessageShare)."""
        if self.share is None:
            return True
        if self._claim is None:
            self._claim = asyncio.ensure_future(self.share.claim())
        return await asyncio.shield(self._claim)

    def _taken_elsewhere(self) -> None:
        self._move(State.DELIVERED_BY_RETRY)
        if self._waiting():
            self._waiter.set_result(None)

    async def _settle_shared(self) -> None:
        await self.share.publish(self.reply)
        # Claimed now only if it goes out now; an answer awaiting a retry stays open to a retry on
        # any replica until it is given up.
        if self.reply and (self._waiting() or self.state is State.DEFERRED) and not await self._taken():
            self._taken_elsewhere()
            return
        self._hand_over()

    def _hand_over(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._move(State.ANSWERED_IN_TIME if self._waiting_delivery == 1 else State.DELIVERED_BY_RETRY)
            self._waiter.set_result(self.reply)
        elif not self.reply:
            self._move(State.NOTHING_TO_SEND)
        elif self.state is State.DEFERRED:
            self._send_later()
        else:
            self._move(State.AWAITING_RETRY)
            asyncio.get_running_loop().call_later(GIVE_UP_SECONDS, self._give_up_waiting)

    def _give_up_waiting(self) -> None:
        if self.state is State.AWAITING_RETRY:
            if self.share is None:
                self._send_later()
            else:
                self.outbox.spawn(self._give_up_shared())

    async def _give_up_shared(self) -> None:
        mine = await self._taken()
        if self.state is State.AWAITING_RETRY:
            self._send_later() if mine else self._taken_elsewhere()

    def _send_later(self) -> None:
        self._move(State.SENDING)
        self.outbox.spawn(self._sent_later(str(self.reply)))

    async def _sent_later(self, reply: str) -> None:
        self._move(await self.outbox.send(self.openid, reply))

    async def answer(self, arrived: float) -> Optional[str]:
        """The passive reply for one delivery of the message (a request that arrived at loop time
        `arrived`), or None to acknowledge it with "success"."""
        loop = asyncio.get_running_loop()
        self.deliveries += 1
        attempt = self.deliveries
        if self.share is not None:
            attempt = await self.share.count_delivery(attempt)
        if self.state is State.AWAITING_RETRY:
            mine = await self._taken()
            if self.state is not State.AWAITING_RETRY:
                return None
            self._move(State.DELIVERED_BY_RETRY)
            return self.reply if mine else None
        if self.state not in ANSWER_PENDING:
            return None  # delivered already, or on its way
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        waiter: asyncio.Future[Optional[str]] = loop.create_future()
        self._waiter, self._waiting_delivery = waiter, attempt
        try:
            remaining = self.reply_deadline - (loop.time() - arrived)
            return await asyncio.wait_for(asyncio.shield(waiter), max(0.0, remaining))
        except asyncio.TimeoutError:
            if waiter.done():
                return waiter.result()  # the answer came just as the deadline passed
        finally:
            if self._waiter is waiter:
                self._waiter = None
        if self.outbox.api is not None:
            self._move(State.DEFERRED)
            return None
        if attempt >= LAST_DELIVERY:
            self._move(State.DEFERRED)
            return self.still_working
        # No customer-service API: stay silent past WeChat's 5 s so that it retries; the retry
        # takes the answer. Answering "success" here would tell WeChat to give up.
        await asyncio.sleep(max(0.0, WECHAT_TIMEOUT_SECONDS + 1 - (loop.time() - arrived)))
        return None


class Deliveries:
    """Each message's Delivery by its key for DEDUPE_TTL_SECONDS after it arrived, so that
    WeChat's retries (and replays) of a message never reach the bot twice."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: Dict[str, Delivery] = {}
        self._last_prune = clock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Optional[Delivery]:
        return self._items.get(key)

    def once(self, key: str, new: Callable[[], Delivery]) -> Delivery:
        """The message's Delivery; `new` makes (and starts) it the first time the key is seen."""
        self._prune()
        delivery = self._items.get(key)
        if delivery is None:
            delivery = self._items[key] = new()
        return delivery

    def _prune(self) -> None:
        now = self._clock()
        if now - self._last_prune < 10 and len(self._items) < MAX_TRACKED:
            return
        self._last_prune = now
        for key, delivery in list(self._items.items()):
            if delivery.processed and now - delivery.created > DEDUPE_TTL_SECONDS:
                del self._items[key]
