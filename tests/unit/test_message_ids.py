"""Client message ids (lakala_server/message_ids.py): the records in memory and in the real
Redis, and the wrapper around a channel's message handler. The whole path through the real
server, with one replica and with two: tests/e2e/test_client_message_ids.py and
tests/cluster/test_client_message_ids.py."""
import asyncio
import socket

import pytest
import redis.asyncio as aioredis
from rasa.core.channels.channel import CollectingOutputChannel, UserMessage

from lakala_server import message_ids, shared
from lakala_server.message_ids import BUSY, PROCESS, RECOVER, REPLAY, MemoryRecords, RedisRecords
from tests.support.redis_server import delete_matching, reachable_redis_url, unique
from tests.support.servers import render

ANSWER = [{"text": "押金在注销后可以退。", "buttons": [{"title": "转人工", "payload": "/request_human"}]}]


@pytest.fixture()
def redis_url():
    return reachable_redis_url()


@pytest.fixture()
def namespace(redis_url):
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = unique("test-message-ids")
    yield prefix
    delete_matching(redis_url, f"{prefix}*")


def stores(kind, redis_url, count=1, **options):
    """`count` record stores sharing their records, as the replicas of one cluster do."""
    if kind == "memory":
        store = MemoryRecords(**{k: v for k, v in options.items() if k == "ttl"})
        return [store] * count
    return [RedisRecords(aioredis.Redis.from_url(redis_url), **options) for _ in range(count)]


@pytest.fixture(params=["memory", "redis"])
def kind(request):
    return request.param


@pytest.fixture()
def url_for(kind, request):
    return request.getfixturevalue("redis_url") if kind == "redis" else None


@pytest.fixture()
def key(kind, request):
    if kind == "redis":
        return request.getfixturevalue("namespace") + ":rest:rest:me:m1"
    return "rest:rest:me:m1"


@pytest.mark.parametrize("message_id", ["a", "m-1_X", "0" * 64, "550e8400-e29b-41d4-a716-446655440000"])
def test_bounded_printable_ids_are_valid(message_id):
    assert message_ids.valid(message_id)


@pytest.mark.parametrize("message_id", ["", "0" * 65, "a b", "a:b", "消息1", "a\n", 42, None, ["a"]])
def test_other_ids_are_not(message_id):
    assert not message_ids.valid(message_id)


def test_the_first_claims_a_retry_waits_then_gets_the_first_answer(kind, url_for, key):
    async def scenario():
        first_replica, second_replica = stores(kind, url_for, 2)
        first = await first_replica.begin(key)
        retry = await second_replica.begin(key)
        await first_replica.finish(first, ANSWER)
        later = await second_replica.begin(key)
        return first, retry, later

    first, retry, later = asyncio.run(scenario())
    assert first.kind == PROCESS
    assert retry.kind == BUSY and retry.answer is None
    assert later.kind == REPLAY and later.answer == ANSWER


def test_concurrent_retries_are_processed_once_and_all_get_one_answer(kind, url_for, key):
    async def scenario():
        replicas = stores(kind, url_for, 3)
        processed = []

        async def deliver(store, n):
            turn = await message_ids.settle(store, key)
            if turn.kind == PROCESS:
                processed.append(n)
                await asyncio.sleep(0.3)  # the turn takes a while: the others arrive during it
                await store.finish(turn, [{"text": f"answer of {n}"}])
                return [{"text": f"answer of {n}"}]
            return turn.answer

        answers = await asyncio.gather(*(deliver(replicas[n % 3], n) for n in range(8)))
        return processed, answers

    processed, answers = asyncio.run(scenario())
    assert len(processed) == 1
    assert answers == [[{"text": f"answer of {processed[0]}"}]] * 8


def test_the_first_answer_stored_stays(kind, url_for, key):
    async def scenario():
        store, = stores(kind, url_for)
        first = await store.begin(key)
        await store.finish(first, ANSWER)
        await store.finish(first, [{"text": "a second answer"}])
        return await store.begin(key)

    assert asyncio.run(scenario()).answer == ANSWER


def test_an_abandoned_message_is_recovered_by_the_next_retry_only(kind, url_for, key):
    async def scenario():
        first_replica, second_replica = stores(kind, url_for, 2)
        first = await first_replica.begin(key)
        await first_replica.abandon(first)
        taken = await second_replica.begin(key)
        another = await first_replica.begin(key)
        return taken, another

    taken, another = asyncio.run(scenario())
    assert taken.kind == RECOVER
    assert another.kind == BUSY


def test_a_working_processor_keeps_its_claim_past_the_lease(redis_url, namespace):
    key = namespace + ":m"

    async def scenario():
        worker, retrier = stores("redis", redis_url, 2, lease_seconds=0.5)
        first = await worker.begin(key)
        seen = []
        for _ in range(6):
            await asyncio.sleep(0.2)
            assert await worker.keep(first)
            seen.append((await retrier.begin(key)).kind)
        return seen

    assert asyncio.run(scenario()) == [BUSY] * 6


def test_a_stopped_processors_claim_runs_out_and_one_retry_recovers_it(redis_url, namespace):
    key = namespace + ":m"

    async def scenario():
        dead, first_retry, second_retry = stores("redis", redis_url, 3, lease_seconds=0.3)
        stale = await dead.begin(key)
        await asyncio.sleep(0.6)  # no keep(): the processor stopped
        taken = await first_retry.begin(key)
        other = await second_retry.begin(key)
        still_owner = await dead.keep(stale)
        await first_retry.finish(taken, ANSWER)
        return taken, other, still_owner, await second_retry.begin(key)

    taken, other, still_owner, after = asyncio.run(scenario())
    assert taken.kind == RECOVER and other.kind == BUSY
    assert not still_owner
    assert after.answer == ANSWER


def test_records_are_forgotten_after_their_time(kind, url_for, key):
    async def scenario():
        store, = stores(kind, url_for, ttl=1)
        await store.finish(await store.begin(key), ANSWER)
        await asyncio.sleep(1.5)
        return await store.begin(key)

    assert asyncio.run(scenario()).kind == PROCESS


def test_memory_keeps_a_bounded_number_of_ids():
    async def scenario():
        store = MemoryRecords(max_ids=2)
        for key in ("a", "b", "c"):
            await store.finish(await store.begin(key), [{"text": key}])
        return [(await store.begin(key)).kind for key in ("c", "b", "a")]

    assert asyncio.run(scenario()) == [REPLAY, REPLAY, PROCESS]


def test_redis_records_live_a_day_and_leases_a_few_seconds(redis_url, namespace):
    key = namespace + ":m"

    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        await RedisRecords(client).begin(key)
        return await client.ttl(key), await client.pttl(key + ":lease")

    record_ttl, lease_ms = asyncio.run(scenario())
    assert message_ids.MESSAGE_ID_TTL - 60 < record_ttl <= message_ids.MESSAGE_ID_TTL
    assert 0 < lease_ms <= message_ids.LEASE_SECONDS * 1000


# The wrapper around a channel's message handler, with the records in memory or in Redis.

@pytest.fixture()
def wrapper_mode(kind, monkeypatch, request):
    monkeypatch.setattr(shared, "_clients", {})  # each test runs its own event loop
    if kind == "redis":
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_url"))
    else:
        monkeypatch.delenv("REDIS_URL", raising=False)
    sender = unique("rest:unit")
    yield sender
    if kind == "redis":
        delete_matching(request.getfixturevalue("redis_url"), shared.key("message", "rest", sender, "*"))


def run_wrapped(sender, metadatas, concurrently=False, turn_seconds=0.2):
    """Sends one message per metadata through exactly_once; (handled count, each one's replies)."""
    handled = []

    async def handler(message):
        handled.append(message.metadata)
        await asyncio.sleep(turn_seconds)
        await message.output_channel.send_response(message.sender_id, {"text": f"第{len(handled)}次处理"})

    async def scenario():
        wrapped = message_ids.exactly_once(handler)

        async def one(metadata):
            channel = CollectingOutputChannel()
            await wrapped(UserMessage("押金能退吗", channel, sender, input_channel="rest", metadata=metadata))
            return [m.get("text") for m in channel.messages]

        if concurrently:
            return await asyncio.gather(*(one(m) for m in metadatas))
        return [await one(m) for m in metadatas]

    replies = asyncio.run(scenario())
    return len(handled), replies


def test_a_retry_is_answered_with_the_first_answer(wrapper_mode):
    handled, replies = run_wrapped(wrapper_mode, [{"message_id": "m1"}] * 3)
    assert handled == 1
    assert replies == [["第1次处理"]] * 3


def test_concurrent_retries_wait_for_the_first_answer(wrapper_mode):
    handled, replies = run_wrapped(wrapper_mode, [{"message_id": "m1"}] * 4, concurrently=True)
    assert handled == 1
    assert replies == [["第1次处理"]] * 4


def test_other_ids_and_messages_without_one_are_each_handled(wrapper_mode):
    handled, replies = run_wrapped(wrapper_mode, [{"message_id": "m1"}, {"message_id": "m2"}, None, {}, None])
    assert handled == 5
    assert replies == [[f"第{n}次处理"] for n in range(1, 6)]


def test_an_invalid_id_is_answered_politely_and_not_handled(wrapper_mode):
    handled, replies = run_wrapped(wrapper_mode, [{"message_id": "不对"}, {"message_id": "x" * 65}])
    assert handled == 0
    assert replies == [[render("utter_message_id_invalid")]] * 2


def test_a_retry_that_waited_long_enough_is_told_to_retry_later(wrapper_mode, monkeypatch):
    monkeypatch.setattr(message_ids, "WAIT_SECONDS", 0.3)
    handled, replies = run_wrapped(wrapper_mode, [{"message_id": "slow"}] * 2, concurrently=True, turn_seconds=1.5)
    assert handled == 1
    assert sorted(replies) == sorted([["第1次处理"], [render("utter_message_in_progress")]])
    handled, replies = run_wrapped(wrapper_mode, [{"message_id": "slow"}])
    assert handled == 0 and replies == [["第1次处理"]]


def test_without_redis_a_message_with_an_id_gets_the_apology_and_is_not_handled(monkeypatch):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setattr(shared, "_clients", {})
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
    handled, replies = run_wrapped(unique("rest:unit"), [{"message_id": "m1"}, None])
    assert handled == 1  # only the message without an id
    assert replies[0] == [render("utter_backend_failed")]
    assert replies[1] == ["第1次处理"]
