"""The Delivery state machine, one test per path through it, on a shortened clock: WeChat
listens WECHAT_TIMEOUT_SECONDS here and the channel answers within DEADLINE. Late answers go to
the stand-in WeChat API through the real customer-service client. The dedupe (Deliveries)
on a clock the tests move."""
import asyncio
import time
from typing import Optional

import pytest

from lakala_server.wechat import delivery as delivery_module
from lakala_server.wechat.api import CustomerServiceClient
from lakala_server.wechat.delivery import DEDUPE_TTL_SECONDS, Deliveries, Delivery, Outbox, State
from lakala_server.wechat.envelope import MAX_CLOCK_SKEW_SECONDS
from lakala_server.wechat.expiring import MAX_TRACKED
from tests.wechat.conftest import SETTINGS

DEADLINE = 0.2
ANSWER = "您的终端状态正常"
STILL_WORKING = "还在处理，请稍候"
R, P, D, AR, S = State.RECEIVED, State.PROCESSING, State.DEFERRED, State.AWAITING_RETRY, State.SENDING


@pytest.fixture(autouse=True)
def short_clock(monkeypatch):
    monkeypatch.setattr(delivery_module, "WECHAT_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(delivery_module, "GIVE_UP_SECONDS", 0.6)
    monkeypatch.setattr(delivery_module, "REST_DELAY_SECONDS", 0.01)


async def bot(answer: Optional[str], seconds: float) -> Optional[str]:
    await asyncio.sleep(seconds)
    return answer


def started(openid: str, outbox: Outbox, answer: Optional[str], seconds: float) -> Delivery:
    delivery = Delivery(openid, outbox, DEADLINE, STILL_WORKING)
    delivery.start(bot(answer, seconds))
    return delivery


async def request(delivery: Delivery) -> Optional[str]:
    """One delivery of the message by WeChat, as the channel's route answers it."""
    return await delivery.answer(asyncio.get_running_loop().time())


def api_client(fake_api) -> CustomerServiceClient:
    return CustomerServiceClient(SETTINGS["WECHAT_APPID"], SETTINGS["WECHAT_APPSECRET"], fake_api.base_url)


async def until(condition, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_received_to_processing_once():
    async def scenario():
        delivery = Delivery("oUser_start", Outbox(None, 60), DEADLINE, STILL_WORKING)
        assert delivery.state is R
        delivery.start(bot(ANSWER, 0))
        assert delivery.state is P
        again = bot(ANSWER, 0)
        with pytest.raises(RuntimeError):
            delivery.start(again)  # the bot is asked once per message
        again.close()
        await request(delivery)

    asyncio.run(scenario())


def test_received_to_answered_in_time():
    async def scenario():
        delivery = started("oUser_in_time", Outbox(None, 60), ANSWER, 0.05)
        assert await request(delivery) == ANSWER
        assert delivery.history == [R, P, State.ANSWERED_IN_TIME]
        assert await request(delivery) is None  # a late retry is acknowledged, not answered twice

    asyncio.run(scenario())


def test_deferred_then_delivered_by_api(fake_api):
    async def scenario():
        outbox = Outbox(api_client(fake_api), 60)
        delivery = started("oUser_by_api", outbox, ANSWER, 0.4)
        assert await request(delivery) is None  # "success" within the deadline
        assert delivery.state is D
        await until(lambda: delivery.state is State.DELIVERED_BY_API)
        await outbox.close()
        return delivery

    delivery = asyncio.run(scenario())
    assert delivery.history == [R, P, D, S, State.DELIVERED_BY_API]
    assert fake_api.messages_to("oUser_by_api") == [ANSWER]


def test_deferred_then_carried_over_when_the_api_fails(fake_api):
    async def scenario():
        outbox = Outbox(api_client(fake_api), 60)
        fake_api.fail_next_send(45015)
        delivery = started("oUser_api_fails", outbox, ANSWER, 0.4)
        assert await request(delivery) is None
        await until(lambda: delivery.state is State.CARRIED_OVER)
        await outbox.close()
        return delivery, await outbox.passive("oUser_api_fails", "在吗")

    delivery, next_reply = asyncio.run(scenario())
    assert delivery.history == [R, P, D, S, State.CARRIED_OVER]
    assert next_reply == f"{ANSWER}\n\n在吗"
    assert fake_api.messages_to("oUser_api_fails") == []


def test_deferred_then_delivered_by_retry(fake_api):
    # WeChat missed the "success" and delivers the message again; that request takes the answer.
    async def scenario():
        outbox = Outbox(api_client(fake_api), 60)
        delivery = started("oUser_retry_after_ack", outbox, ANSWER, 0.35)
        assert await request(delivery) is None
        assert await request(delivery) == ANSWER
        await asyncio.sleep(0.1)
        await outbox.close()
        return delivery

    delivery = asyncio.run(scenario())
    assert delivery.history == [R, P, D, State.DELIVERED_BY_RETRY]
    assert fake_api.messages_to("oUser_retry_after_ack") == []


def test_deferred_then_nothing_to_send(fake_api):
    async def scenario():
        outbox = Outbox(api_client(fake_api), 60)
        delivery = started("oUser_silent", outbox, None, 0.3)
        assert await request(delivery) is None
        await until(lambda: delivery.state is State.NOTHING_TO_SEND)
        await outbox.close()
        return delivery

    assert asyncio.run(scenario()).history == [R, P, D, State.NOTHING_TO_SEND]
    assert fake_api.messages_to("oUser_silent") == []


def test_silent_past_wechats_timeout_then_awaiting_retry_then_delivered_by_retry():
    # Without the API the first request says nothing until WeChat has given up on it.
    async def scenario():
        loop = asyncio.get_running_loop()
        delivery = started("oUser_retry", Outbox(None, 60), ANSWER, 0.25)
        first = loop.create_task(request(delivery))
        await until(lambda: delivery.state is AR)
        started_at = loop.time()
        assert await request(delivery) == ANSWER  # WeChat's retry takes it at once
        took = loop.time() - started_at
        assert await first is None
        return delivery, took

    delivery, took = asyncio.run(scenario())
    assert delivery.history == [R, P, AR, State.DELIVERED_BY_RETRY]
    assert took < 0.05


def test_awaiting_retry_given_up_then_carried_over():
    async def scenario():
        outbox = Outbox(None, 60)
        delivery = started("oUser_no_retry", outbox, ANSWER, 0.25)
        first = asyncio.get_running_loop().create_task(request(delivery))
        await until(lambda: delivery.state is State.CARRIED_OVER)
        await first
        return delivery, await outbox.passive("oUser_no_retry", "好了吗")

    delivery, next_reply = asyncio.run(scenario())
    assert delivery.history == [R, P, AR, S, State.CARRIED_OVER]
    assert next_reply == f"{ANSWER}\n\n好了吗"


def test_dropped_request_then_awaiting_retry_given_up_then_delivered_by_api(fake_api):
    # WeChat dropped the connection (the route was cancelled) and never came back.
    async def scenario():
        outbox = Outbox(api_client(fake_api), 60)
        delivery = started("oUser_dropped", outbox, ANSWER, 0.15)
        first = asyncio.get_running_loop().create_task(request(delivery))
        await asyncio.sleep(0.05)
        first.cancel()
        await until(lambda: delivery.state is State.DELIVERED_BY_API)
        await outbox.close()
        return delivery

    delivery = asyncio.run(scenario())
    assert delivery.history == [R, P, AR, S, State.DELIVERED_BY_API]
    assert fake_api.messages_to("oUser_dropped") == [ANSWER]


def test_last_delivery_deferred_with_the_apology_then_carried_over():
    async def scenario():
        loop = asyncio.get_running_loop()
        outbox = Outbox(None, 60)
        delivery = started("oUser_apology", outbox, ANSWER, 0.5)
        first, second = loop.create_task(request(delivery)), loop.create_task(request(delivery))
        await asyncio.sleep(0)
        third = await request(delivery)
        assert (await first, await second) == (None, None)  # WeChat listens to the newest only
        await until(lambda: delivery.state is State.CARRIED_OVER)
        return delivery, third, await outbox.passive("oUser_apology", "在吗")

    delivery, third, next_reply = asyncio.run(scenario())
    assert third == STILL_WORKING
    assert delivery.history == [R, P, D, S, State.CARRIED_OVER]
    assert next_reply == f"{ANSWER}\n\n在吗"


def test_a_newer_delivery_takes_over_the_waiting_one():
    async def scenario():
        loop = asyncio.get_running_loop()
        delivery = started("oUser_newer", Outbox(None, 60), ANSWER, 0.1)
        first = loop.create_task(request(delivery))
        await asyncio.sleep(0.02)
        assert await request(delivery) == ANSWER
        assert await first is None
        return delivery

    assert asyncio.run(scenario()).history == [R, P, State.DELIVERED_BY_RETRY]


def test_a_long_passive_reply_sends_the_rest_outside_it(fake_api):
    async def scenario():
        outbox = Outbox(api_client(fake_api), 60)
        text = "\n".join(["长" * 100] * 10)
        first = await outbox.passive("oUser_long_reply", text)
        await until(lambda: bool(fake_api.messages_to("oUser_long_reply")))
        await outbox.close()
        return text, first

    text, first = asyncio.run(scenario())
    assert len(first.encode("utf-8")) <= 2048
    assert "\n".join([first] + fake_api.messages_to("oUser_long_reply")) == text


# --- the dedupe ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def processed_delivery(clock: Clock, openid: str = "oUser_dedupe") -> Delivery:
    delivery = Delivery(openid, Outbox(None, 60), DEADLINE, STILL_WORKING, clock=clock)
    delivery.start(bot(None, 0))
    return delivery


def test_the_dedupe_outlives_the_accepted_clock_skew():
    # A request replayed once the dedupe has forgotten it is refused for its old timestamp.
    assert DEDUPE_TTL_SECONDS > MAX_CLOCK_SKEW_SECONDS + 10


def test_dedupe_within_and_after_its_lifetime():
    async def scenario():
        clock, made = Clock(), []
        deliveries = Deliveries(clock)

        def new():
            made.append(processed_delivery(clock))
            return made[-1]

        first = deliveries.once("msg:oUser:1", new)
        await asyncio.sleep(0.01)
        clock.now += DEDUPE_TTL_SECONDS - 1
        assert deliveries.once("msg:oUser:2", new) is not first  # a prune runs and keeps the first
        assert deliveries.once("msg:oUser:1", new) is first
        clock.now += 12
        assert deliveries.once("msg:oUser:1", new) is not first  # forgotten after its lifetime
        return len(made)

    assert asyncio.run(scenario()) == 3


def test_dedupe_when_more_messages_are_tracked_than_the_store_holds():
    async def scenario():
        clock = Clock()
        deliveries = Deliveries(clock)
        first = deliveries.once("msg:oUser:0", lambda: processed_delivery(clock))
        for number in range(1, MAX_TRACKED + 50):
            deliveries.once(f"msg:oUser:{number}", lambda: processed_delivery(clock))
        await asyncio.sleep(0.05)
        clock.now += 30
        # Full: a prune runs on every message, and still no message within its lifetime is dropped.
        assert deliveries.once("msg:oUser:0", lambda: processed_delivery(clock)) is first
        assert len(deliveries) == MAX_TRACKED + 50
        clock.now += DEDUPE_TTL_SECONDS
        deliveries.once("msg:oUser:1", lambda: processed_delivery(clock))
        return len(deliveries)

    assert asyncio.run(scenario()) == 1
