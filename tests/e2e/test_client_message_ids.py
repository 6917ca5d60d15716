"""Clients that retry, through the real server: a message sent again with the same client
message id (REST and the web chat) gets the first answer and leaves one turn in the tracker
store, with the records in memory (make run) and in Redis (REDIS_URL). Two replicas sharing
them: tests/cluster/test_client_message_ids.py."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.clients import answers_settled, post, user_messages, with_id
from tests.support.redis_server import delete_matching, reachable_redis_url, unique
from tests.support.servers import MODEL, Bot, render
from tests.support.webchat import Visitor, run

QUESTION = "押金能退吗"


@pytest.fixture(scope="module")
def redis_bot(tmp_path_factory):
    url = reachable_redis_url()
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train` (make e2e does)")
    running = Bot(tmp_path_factory.mktemp("bot_redis"), extra_env={"REDIS_URL": url}).start()
    running.redis_url = url
    yield running
    running.stop()


@pytest.fixture(params=["memory", "redis"])
def any_bot(request):
    """The bot with its message-id records in memory, and with them in Redis."""
    running = request.getfixturevalue("bot" if request.param == "memory" else "redis_bot")
    conversations = []
    yield running, conversations
    if request.param == "redis":
        for conversation in conversations:
            delete_matching(running.redis_url, f"lakala:message:*:{conversation}:*")


def processed(bot, conversation, message_id):
    return [m for m in user_messages(bot.env["TRACKER_DB_URL"], conversation)
            if (m.get("metadata") or {}).get("message_id") == message_id]


def test_a_rest_retry_gets_the_first_answer_and_is_processed_once(any_bot):
    bot, conversations = any_bot
    sender = unique("idem-rest")
    conversations.append("rest:" + sender)
    first = post(bot, sender, QUESTION, "m-1")
    assert [m["text"] for m in first] == [render("utter_deposit")]
    assert post(bot, sender, QUESTION, "m-1") == first
    assert post(bot, sender, QUESTION, "m-1") == first
    assert len(processed(bot, "rest:" + sender, "m-1")) == 1
    post(bot, sender, QUESTION, "m-2")  # another id is another message
    post(bot, sender, QUESTION)  # and one without an id is always handled
    assert len(user_messages(bot.env["TRACKER_DB_URL"], "rest:" + sender)) == 3


def test_concurrent_rest_retries_are_processed_once_and_all_get_the_answer(any_bot):
    bot, conversations = any_bot
    sender = unique("idem-rest")
    conversations.append("rest:" + sender)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(bot, sender, QUESTION, "same"), range(4)))
    assert [m["text"] for m in answers[0]] == [render("utter_deposit")]
    assert all(answer == answers[0] for answer in answers)
    assert len(user_messages(bot.env["TRACKER_DB_URL"], "rest:" + sender)) == 1


@pytest.mark.parametrize("message_id", ["不是编号", "x" * 65, 12345, "a b"])
def test_an_invalid_message_id_is_answered_politely_and_not_processed(any_bot, message_id):
    bot, conversations = any_bot
    sender = unique("idem-rest")
    conversations.append("rest:" + sender)
    answer = post(bot, sender, QUESTION, message_id)
    assert [m["text"] for m in answer] == [render("utter_message_id_invalid")]
    assert answer[0]["buttons"][0]["payload"] == "/request_human"
    assert user_messages(bot.env["TRACKER_DB_URL"], "rest:" + sender) == []


def test_a_web_chat_retry_after_a_reconnect_gets_the_first_answer_again(any_bot):
    bot, conversations = any_bot

    async def scenario():
        before = Visitor(bot)
        session_id = await before.join()
        conversations.append("web:" + session_id.split(".")[0])
        first = await before.send(with_id(before, QUESTION, "w-1"))
        await before.close()
        after = Visitor(bot)  # the page reconnected and sends the message again
        await after.join(session_id)
        again = await after.send(with_id(after, QUESTION, "w-1"))
        await after.close()
        return session_id, first, again

    session_id, first, again = run(scenario())
    conversation = "web:" + session_id.split(".")[0]
    assert first == [render("utter_deposit")]
    assert again == first
    assert len(processed(bot, conversation, "w-1")) == 1
    assert len(user_messages(bot.env["TRACKER_DB_URL"], conversation)) == 1


def test_a_web_chat_message_sent_twice_at_once_is_processed_once(any_bot):
    bot, conversations = any_bot

    async def scenario():
        visitor = Visitor(bot)
        session_id = await visitor.join()
        conversations.append("web:" + session_id.split(".")[0])
        await visitor.client.emit("user_uttered", with_id(visitor, QUESTION, "w-2"))
        await visitor.client.emit("user_uttered", with_id(visitor, QUESTION, "w-2"))
        answers = await answers_settled(visitor, at_least=2)
        await visitor.close()
        return session_id, [answer.get("text") for answer in answers]

    session_id, texts = run(scenario())
    # The first answer reaches the session once from its turn and once for the retry.
    assert texts == [render("utter_deposit")] * 2
    assert len(user_messages(bot.env["TRACKER_DB_URL"], "web:" + session_id.split(".")[0])) == 1
