"""Client message ids across replicas: two Rasa servers sharing one PostgreSQL tracker store
and one Redis, as behind nginx. A retry that reaches the other replica gets the first answer
and leaves one turn, and a message whose processor stopped is neither lost nor handled twice."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from lakala_server import shared
from tests.postgres import postgres_schema, reachable_postgres_url
from tests.support.clients import post, user_messages, with_id
from tests.support.redis_server import delete_matching, reachable_redis_url, unique
from tests.support.servers import MODEL, Bot, render
from tests.support.webchat import Visitor, run

QUESTION = "押金能退吗"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, request):
    """Two replicas: their own action servers, one tracker store, one Redis, one session secret."""
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train`")
    redis_url = reachable_redis_url()
    with postgres_schema(reachable_postgres_url(request.node.nodeid), "test_message_ids") as (_, tracker_url):
        shared_env = {"REDIS_URL": redis_url, "TRACKER_DB_URL": tracker_url,
                      "WEB_SESSION_SECRET": unique("secret")}
        started = []
        try:
            for name in ("replica_a", "replica_b"):
                started.append(Bot(tmp_path_factory.mktemp(name), extra_env=shared_env).start())
            yield started
        finally:
            for bot in started:
                bot.stop()


@pytest.fixture()
def conversation_keys(replicas):
    """Conversations of this test; their message-id records are deleted afterwards."""
    conversations = []
    yield conversations
    for conversation in conversations:
        delete_matching(replicas[0].env["REDIS_URL"], shared.key("message", "*", conversation, "*"))


def rest_conversation(conversation_keys):
    sender = unique("idem-cluster")
    conversation_keys.append("rest:" + sender)
    return sender, "rest:" + sender


def turns(replicas, conversation):
    return user_messages(replicas[0].env["TRACKER_DB_URL"], conversation)


def test_a_retry_on_the_other_replica_gets_the_first_answer(replicas, conversation_keys):
    a, b = replicas
    sender, conversation = rest_conversation(conversation_keys)
    first = post(a, sender, QUESTION, "m-1")
    assert [m["text"] for m in first] == [render("utter_deposit")]
    assert post(b, sender, QUESTION, "m-1") == first
    assert post(a, sender, QUESTION, "m-1") == first
    assert len(turns(replicas, conversation)) == 1


def test_concurrent_retries_on_both_replicas_are_processed_once(replicas, conversation_keys):
    sender, conversation = rest_conversation(conversation_keys)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda n: post(replicas[n % 2], sender, QUESTION, "same"), range(6)))
    assert [m["text"] for m in answers[0]] == [render("utter_deposit")]
    assert all(answer == answers[0] for answer in answers)
    assert len(turns(replicas, conversation)) == 1


def test_a_web_chat_retry_after_reconnecting_to_the_other_replica(replicas, conversation_keys):
    a, b = replicas

    async def scenario():
        on_a = Visitor(a)
        session_id = await on_a.join()
        conversation_keys.append("web:" + session_id.split(".")[0])
        first = await on_a.send(with_id(on_a, QUESTION, "w-1"))
        await on_a.close()
        on_b = Visitor(b)  # the connection broke; the page reconnected through nginx to the other one
        await on_b.join(session_id)
        again = await on_b.send(with_id(on_b, QUESTION, "w-1"))
        await on_b.close()
        return session_id, first, again

    session_id, first, again = run(scenario())
    assert first == [render("utter_deposit")]
    assert again == first
    assert len(turns(replicas, "web:" + session_id.split(".")[0])) == 1


def stop_processor_of(replicas, conversation, message_id):
    """Leaves the record as a processor that stopped leaves it: processing, its lease run out."""
    client = redis.Redis.from_url(replicas[0].env["REDIS_URL"])
    key = shared.key("message", "rest", conversation, message_id)
    client.set(key, "processing", ex=3600)
    client.delete(key + ":lease")


def test_a_turn_saved_by_a_processor_that_stopped_is_replayed_not_processed_again(replicas, conversation_keys):
    a, b = replicas
    sender, conversation = rest_conversation(conversation_keys)
    first = post(a, sender, QUESTION, "m-1")
    stop_processor_of(replicas, conversation, "m-1")  # it saved the turn and stopped before storing the answer
    assert post(b, sender, QUESTION, "m-1") == first
    assert post(a, sender, QUESTION, "m-1") == first
    assert len(turns(replicas, conversation)) == 1


def test_a_message_whose_processor_stopped_before_its_turn_is_processed_by_the_retry(replicas, conversation_keys):
    a, b = replicas
    sender, conversation = rest_conversation(conversation_keys)
    stop_processor_of(replicas, conversation, "m-1")  # it claimed the message and stopped at once
    answer = post(b, sender, QUESTION, "m-1")
    assert [m["text"] for m in answer] == [render("utter_deposit")]
    assert post(a, sender, QUESTION, "m-1") == answer
    assert len(turns(replicas, conversation)) == 1
