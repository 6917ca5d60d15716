"""The WeChat channel on several replicas sharing Redis (REDIS_URL): the access_token fetched
once for all, the durable outbox taken over from a dead sender, and two real Rasa servers
sharing Redis and a PostgreSQL tracker store, driven by the simulator with WeChat's XML and
crypto: one message delivered to both is one turn and one answer, an option offered by one is
picked on the other, and a slow answer whose replica is killed is still sent, once.

Each test uses its own AppID, so its keys (lakala:wechat:<appid>:..., the token's
lakala:wechatpy:<appid>_access_token) are its own; they are deleted afterwards."""
import asyncio
import os
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import redis
import sqlalchemy as sa

from lakala_server.wechat import delivery as delivery_module
from lakala_server.wechat.api import TOKEN_PREFIX, CustomerServiceClient
from lakala_server.wechat.cluster import GROUP, Cluster, MessageShare, OutboxStream
from lakala_server.wechat.delivery import Delivery, Outbox, State
from lakala_server.wechat.simulator import FakeWeChatAPI
from tests.postgres import postgres_schema, reachable_postgres_url
from tests.support.expect import assert_said, assert_turn
from tests.support.servers import MODEL
from tests.wechat.conftest import (
    LOOKUP_30091254,
    SETTINGS,
    WeChatBot,
    new_user,
    said_texts,
    simulator,
    split_reply,
    terminal_db_locked,
    to_phone_prompt,
    wait_for_messages,
)

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RECLAIM_SECONDS = 3.0


def new_appid() -> str:
    return "wx" + secrets.token_hex(8)


def delete_keys(appid: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"lakala:wechat:{appid}:*", f"{TOKEN_PREFIX}:{appid}_*"):
        for key in client.scan_iter(match=pattern, count=500):
            client.delete(key)
    client.close()


@pytest.fixture
def appid(monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    value = new_appid()
    yield value
    delete_keys(value)


# --- the access_token -----------------------------------------------------------------------------

def test_concurrent_replicas_fetch_the_access_token_once(appid):
    # Each client on its own thread and event loop, so with its own Redis connection: replicas.
    api = FakeWeChatAPI(appid, SETTINGS["WECHAT_APPSECRET"], token_delay=0.3).start()
    clients = 8
    barrier = threading.Barrier(clients)

    def replica(_: int) -> Tuple[str, str]:
        async def run() -> Tuple[str, str]:
            client = CustomerServiceClient(appid, SETTINGS["WECHAT_APPSECRET"], api.base_url)
            barrier.wait()
            first = await client.access_token()
            await client.send_text("oUserToken", "你好")
            again = await client.access_token()
            await client.close()
            return first, again

        return asyncio.run(run())

    try:
        with ThreadPoolExecutor(clients) as pool:
            tokens = list(pool.map(replica, range(clients)))
        assert api.token_requests == 1
        assert len({token for pair in tokens for token in pair}) == 1
        assert len(api.messages_to("oUserToken")) == clients
        # Stored where wechatpy's RedisStorage(prefix=TOKEN_PREFIX) finds a WeChatClient's token.
        from wechatpy.session.redisstorage import RedisStorage

        storage = RedisStorage(redis.Redis.from_url(REDIS_URL), prefix=TOKEN_PREFIX)
        assert storage.get(f"{appid}_access_token") == tokens[0][0]

        # A token WeChat rejects is fetched again, once, however many replicas meet the rejection.
        api.expire_tokens()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(replica, range(clients)))
        assert api.token_requests == 2
    finally:
        api.stop()


# --- the durable outbox ---------------------------------------------------------------------------

def test_the_outbox_sends_each_answer_once_and_takes_over_a_dead_senders(appid):
    sent: List[Tuple[str, str]] = []

    async def deliver(openid: str, text: str) -> None:
        sent.append((openid, text))

    async def scenario() -> None:
        dead = Cluster(appid, 60, RECLAIM_SECONDS)
        dead_outbox = OutboxStream(dead, deliver)
        await dead_outbox.add("oUserA", "被接管的回答")
        # The dead replica read it and died before sending: it stays pending, unacknowledged.
        redis_client = dead.redis()
        taken = await redis_client.xreadgroup(GROUP, dead.replica, {dead_outbox.stream: ">"}, count=10)
        assert len(taken[0][1]) == 1
        live = [OutboxStream(Cluster(appid, 60, RECLAIM_SECONDS), deliver) for _ in range(2)]
        await live[0].add("oUserB", "新的回答")
        deadline = time.monotonic() + RECLAIM_SECONDS + 10
        while len(sent) < 2 and time.monotonic() < deadline:
            await asyncio.gather(*(outbox.run_once(block_ms=200) for outbox in live))
        for _ in range(3):
            await asyncio.gather(*(outbox.run_once(block_ms=100) for outbox in live))
        assert sorted(sent) == [("oUserA", "被接管的回答"), ("oUserB", "新的回答")]
        assert await redis_client.xlen(dead_outbox.stream) == 0
        assert (await redis_client.xpending(dead_outbox.stream, GROUP))["pending"] == 0

    asyncio.run(scenario())


# --- one message's Delivery and a request on another replica -------------------------------------

async def answer_after(seconds: float, answer: str) -> str:
    await asyncio.sleep(seconds)
    return answer


def test_an_answer_awaiting_a_retry_is_taken_by_the_retry_on_another_replica(appid, monkeypatch):
    # Without the customer-service API a ready answer waits for WeChat's retry, which here
    # reaches another replica: that request takes it, and the first replica never carries it over.
    monkeypatch.setattr(delivery_module, "GIVE_UP_SECONDS", 0.5)

    async def scenario():
        loop = asyncio.get_running_loop()
        here, there = Cluster(appid, 60), Cluster(appid, 60)
        outbox = Outbox(None, 60, here.user_store("carried", 60))
        key = "msg:oUserRetryThere:1"
        delivery = Delivery("oUserRetryThere", outbox, 0.1, "稍等", share=MessageShare(here, key))
        delivery.start(answer_after(0.2, "答案"))
        dropped = loop.create_task(delivery.answer(loop.time()))  # WeChat hung up on this one
        await asyncio.sleep(0.05)
        dropped.cancel()
        while delivery.state is not State.AWAITING_RETRY:
            await asyncio.sleep(0.01)
        found, reply = await there.published(key)
        taken = await there.claim(key, there.claimant())
        await asyncio.sleep(1.0)
        return delivery, (found, reply, taken), await outbox.passive("oUserRetryThere", "下一条")

    delivery, elsewhere, next_reply = asyncio.run(scenario())
    assert elsewhere == (True, "答案", True)
    assert delivery.history == [State.RECEIVED, State.PROCESSING, State.AWAITING_RETRY, State.DELIVERED_BY_RETRY]
    assert next_reply == "下一条"


def test_a_deferred_answer_goes_through_the_outbox_once_while_a_retry_elsewhere_is_acknowledged(appid):
    api = FakeWeChatAPI(appid, SETTINGS["WECHAT_APPSECRET"]).start()

    async def scenario():
        loop = asyncio.get_running_loop()
        here, there = Cluster(appid, 60, RECLAIM_SECONDS), Cluster(appid, 60, RECLAIM_SECONDS)
        outbox = Outbox(CustomerServiceClient(appid, SETTINGS["WECHAT_APPSECRET"], api.base_url), 60,
                        here.user_store("carried", 60))
        outbox.stream = OutboxStream(here, outbox.send_now)
        key = "msg:oUserDeferred:1"
        delivery = Delivery("oUserDeferred", outbox, 0.1, "稍等", share=MessageShare(here, key))
        delivery.start(answer_after(0.3, "慢答案"))
        assert await delivery.answer(loop.time()) is None  # "success" in time
        while delivery.state is not State.QUEUED:
            await asyncio.sleep(0.01)
        # WeChat's retry on another replica finds the answer already claimed: it acknowledges.
        found, reply = await there.published(key)
        assert (found, reply) == (True, "慢答案")
        assert not await there.claim(key, there.claimant())
        for _ in range(3):
            await outbox.stream.run_once(block_ms=100)
        await outbox.close()
        return delivery

    try:
        delivery = asyncio.run(scenario())
        assert delivery.history == [State.RECEIVED, State.PROCESSING, State.DEFERRED, State.SENDING, State.QUEUED]
        assert api.messages_to("oUserDeferred") == ["慢答案"]
    finally:
        api.stop()


def test_without_the_api_the_last_delivery_on_another_replica_gets_the_apology(appid):
    from lakala_server.wechat.channel import WeChatInput
    from lakala_server.wechat.envelope import Inbound

    channel = WeChatInput(SETTINGS["WECHAT_TOKEN"], appid, SETTINGS["WECHAT_ENCODING_AES_KEY"], "",
                          reply_deadline_seconds=0.5)
    inbound = Inbound("oUserLast", None, False, "1", "msg:oUserLast:1", "text", "")

    async def scenario():
        # WeChat's first two deliveries went to the replica still working on the message.
        for attempt in (1, 2):
            await channel.cluster.count_delivery(inbound.key, attempt)
        return await channel._answer_from_elsewhere(inbound, asyncio.get_running_loop().time())

    assert asyncio.run(scenario()) == channel.texts.still_working


# --- two real Rasa servers --------------------------------------------------------------------------

class Replicas:
    def __init__(self, bots: List[WeChatBot], api: FakeWeChatAPI, tracker_url: str, appid: str):
        self.bots, self.api, self.tracker_url, self.appid = bots, api, tracker_url, appid
        self.engine = sa.create_engine(tracker_url, future=True)

    def sim(self, index: int):
        return simulator(self.bots[index].url, WECHAT_APPID=self.appid)

    def user_events(self, openid: str) -> List[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT data FROM events WHERE sender_id = :sender AND type_name = 'user' "
                                        "ORDER BY id"), {"sender": "wechat:" + openid}).fetchall()
        return [row[0] for row in rows]

    def user_texts(self, openid: str) -> List[str]:
        import json

        return [json.loads(data)["text"] for data in self.user_events(openid)]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> Iterator[Replicas]:
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train`")
    appid = new_appid()
    api = FakeWeChatAPI(appid, SETTINGS["WECHAT_APPSECRET"]).start()
    shared_dir: Path = tmp_path_factory.mktemp("replicas")
    terminal_db = shared_dir / "terminals.db"
    bots: List[WeChatBot] = []
    # A verified terminal, marked by one replica's action server, is read by the other's.
    verification_secret = secrets.token_urlsafe(24)
    with postgres_schema(reachable_postgres_url("tests/cluster/test_wechat_replicas.py"), "wechat_replicas") as (
            _, tracker_url):
        try:
            for name in ("a", "b"):
                bot = WeChatBot(tmp_path_factory.mktemp(f"replica_{name}"), api)
                bot.env.update(
                    WECHAT_APPID=appid, REDIS_URL=REDIS_URL, TRACKER_DB_URL=tracker_url,
                    TERMINAL_DB_URL=f"sqlite:///{terminal_db}", WECHAT_OUTBOX_RECLAIM_SECONDS=str(RECLAIM_SECONDS),
                    VERIFICATION_SECRET=verification_secret,
                )
                bot.terminal_db = terminal_db
                bots.append(bot)
                bot.start()  # one after the other: the first creates the shared databases
            yield Replicas(bots, api, tracker_url, appid)
        finally:
            for bot in bots:
                bot.stop()
            api.stop()
            delete_keys(appid)


def test_one_message_delivered_to_two_replicas_is_one_turn_and_one_answer(replicas):
    sim, openid = replicas.sim(0), new_user()
    url_a, body = sim.envelope(sim.text(openid, "押金能退吗"))
    url_b = url_a.replace(replicas.bots[0].url, replicas.bots[1].url)
    barrier = threading.Barrier(2)

    def deliver(url: str):
        barrier.wait()
        return sim.post(url, body)

    with ThreadPoolExecutor(2) as pool:
        attempts = list(pool.map(deliver, [url_a, url_b]))
    assert all(attempt.status == 200 for attempt in attempts), attempts
    replies = [sim.read_reply(attempt.body, openid) for attempt in attempts if attempt.body != b"success"]
    assert len(replies) == 1
    assert_said(split_reply(replies[0]["Content"])[0], "utter_deposit")
    time.sleep(1)
    assert len(replicas.user_events(openid)) == 1
    assert replicas.api.messages_to(openid) == []


def test_an_option_offered_by_one_replica_is_picked_on_the_other(replicas):
    openid = new_user()
    on_a, on_b = replicas.sim(0), replicas.sim(1)
    texts, options = split_reply(on_a.deliver(on_a.event(openid, "subscribe", "")).reply)
    assert (3, "查询终端状态") in options
    assert_said(said_texts(on_b.deliver(on_b.text(openid, "3"))), "utter_ask_terminal_id")
    assert replicas.user_texts(openid) == ["/greet", "/check_terminal_status"]


def test_an_answer_not_sent_by_the_api_comes_with_the_next_reply_on_the_other_replica(replicas):
    openid = new_user()
    on_a, on_b = replicas.sim(0), replicas.sim(1)
    to_phone_prompt(on_a, openid)
    replicas.api.fail_next_send(45015)
    with terminal_db_locked(replicas.bots[0], 5.0):
        assert on_a.deliver(on_a.text(openid, "6721")).acknowledged
    time.sleep(3)
    texts = said_texts(on_b.deliver(on_b.text(openid, "押金能退吗")))
    assert_turn(texts, *LOOKUP_30091254, LOOKUP_30091254[1])
    assert replicas.api.messages_to(openid) == []


def test_a_slow_answer_whose_replica_is_killed_is_sent_once_by_the_other(replicas):
    # Runs last: it kills a replica.
    openid = new_user()
    sim = replicas.sim(0)
    to_phone_prompt(sim, openid)
    stall = 12.0
    replicas.api.stall_next_send(stall)
    with terminal_db_locked(replicas.bots[0], 6.0):
        assert sim.deliver(sim.text(openid, "6721")).acknowledged
    deadline = time.monotonic() + 30
    while replicas.api.stalled_sends == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replicas.api.stalled_sends == 1, "the slow answer never reached the API"
    stalled_at = time.monotonic()
    # The replica whose sender holds the entry (its consumer name carries its process id) dies.
    client = redis.Redis.from_url(REDIS_URL)
    pending = client.xpending_range(f"lakala:wechat:{replicas.appid}:outbox", GROUP, "-", "+", 10)
    client.close()
    assert len(pending) == 1
    pid = int(pending[0]["consumer"].decode().split("-")[-2])
    sender = next(bot for bot in replicas.bots if bot.rasa.proc.pid == pid)
    os.kill(pid, signal.SIGKILL)
    sender.rasa.proc.wait(10)
    sent = wait_for_messages(replicas.api, openid, timeout=RECLAIM_SECONDS + 30)
    assert len(sent) == 1
    assert_turn(split_reply(sent[0])[0], *LOOKUP_30091254)
    # The dead replica's own attempt, stalled at WeChat, never completes: still one message.
    time.sleep(max(0.0, stall + 1 - (time.monotonic() - stalled_at)))
    assert replicas.api.messages_to(openid) == sent
