"""Reaching a person, on the real servers: a callback request taken down as a ticket in the
registry, the support team's WeCom group told (a local stand-in for the group robot), and a
paused conversation left alone by the bot, across a restart."""
import asyncio
import json
import re
import sqlite3
import time
import uuid
from typing import Iterator, List

import pytest
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ConversationPaused, ConversationResumed

from lakala_server.tracker_store import UrlSQLTrackerStore
from tests.support.expect import assert_said, assert_turn, reply, said
from tests.support.servers import MODEL, ROOT, Bot
from tests.support.wecom import FakeWeCom

TICKET_ID = re.compile(r"单号(HJ\d{8}[0-9A-Z]{6})")
PHONE = "13800138000"
TOPIC = "押金退款一直没到账，想问问进度"


@pytest.fixture(scope="module")
def wecom() -> Iterator[FakeWeCom]:
    with FakeWeCom() as fake:
        yield fake


@pytest.fixture(scope="module")
def handoff_bot(tmp_path_factory, wecom) -> Iterator[Bot]:
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train`")
    bot = Bot(tmp_path_factory.mktemp("handoff"),
              extra_env={"WECOM_WEBHOOK_URL": wecom.url, "WECOM_POLL_SECONDS": "1"}).start()
    yield bot
    bot.stop()


def new_sender() -> str:
    return f"handoff-{uuid.uuid4().hex[:10]}"


def tickets(bot: Bot, conversation: str) -> List[sqlite3.Row]:
    with sqlite3.connect(bot.terminal_db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM callback_tickets WHERE conversation = ?", (conversation,)).fetchall()


def stored_text(bot: Bot, conversation: str) -> str:
    with sqlite3.connect(bot.workdir / "tracker.db") as conn:
        rows = conn.execute("SELECT data FROM events WHERE sender_id = ?", (conversation,)).fetchall()
    return "\n".join(row[0] for row in rows)


def wait_for(condition, seconds: float = 15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    return condition()


def ask_for_callback(bot: Bot, sender: str, topic: str = TOPIC) -> None:
    assert_said(bot.texts(sender, "转人工"), "utter_handoff_offer", hours="每天 00:00-24:00")
    assert_said(bot.texts(sender, "好的"), "utter_ask_callback_topic")
    assert_said(bot.texts(sender, topic), "utter_ask_callback_consent", retention_days="30")


def test_a_callback_request_becomes_one_ticket_and_the_team_is_told(handoff_bot, wecom):
    sender = new_sender()
    ask_for_callback(handoff_bot, sender)
    assert_said(handoff_bot.texts(sender, "同意"), "utter_ask_callback_phone")
    turn = handoff_bot.texts(sender, "我的手机是 138 0013 8000")
    assert_said(turn, "utter_callback_created", phone="138****8000", hours="每天 00:00-24:00")
    ticket_id = TICKET_ID.search(turn[0]).group(1)

    [row] = tickets(handoff_bot, f"rest:{sender}")
    assert (row["ticket_id"], row["phone"], row["channel"], row["status"]) == (ticket_id, PHONE, "rest", "open")
    assert row["topic"] == TOPIC and row["terminal_id"] is None
    # The number is needed to call back, so the ticket has it; the conversation does not.
    stored = stored_text(handoff_bot, f"rest:{sender}")
    assert PHONE not in stored and "0013 8000" not in stored and "138****8000" in stored

    posted = wait_for(lambda: [c for c in wecom.contents() if ticket_id in c])
    assert len(posted) == 1, wecom.contents()
    assert TOPIC in posted[0] and "138****8000" in posted[0] and PHONE not in posted[0]
    body = [r.json for r in wecom.requests() if ticket_id in r.body.decode()][0]
    assert body["msgtype"] == "markdown" and set(body) == {"msgtype", "markdown"}

    # Asking again: the open ticket, not a second one.
    assert_said(handoff_bot.texts(sender, "转人工"), "utter_callback_exists", ticket_id=ticket_id)
    assert_said(handoff_bot.texts(sender, "我要人工客服给我回电话"), "utter_callback_exists", ticket_id=ticket_id)
    assert len(tickets(handoff_bot, f"rest:{sender}")) == 1


def test_without_consent_no_number_is_asked_or_kept(handoff_bot):
    sender = new_sender()
    ask_for_callback(handoff_bot, sender)
    assert_said(handoff_bot.texts(sender, "不同意"), "utter_callback_declined")
    assert tickets(handoff_bot, f"rest:{sender}") == []
    # The conversation goes on with the bot.
    assert_said(handoff_bot.texts(sender, "押金能退吗"), "utter_deposit")


def test_a_wrong_number_is_asked_again_and_the_merchant_can_leave(handoff_bot):
    sender = new_sender()
    ask_for_callback(handoff_bot, sender)
    assert_said(handoff_bot.texts(sender, "/affirm"), "utter_ask_callback_phone")  # the 同意 button
    for wrong in ("12345", "0755-88886666", "138001380001", "abc"):
        assert_turn(handoff_bot.texts(sender, wrong), reply("utter_callback_phone_invalid"),
                    reply("utter_ask_callback_phone"))
    assert_said(handoff_bot.texts(sender, "算了"), "utter_callback_declined")
    assert tickets(handoff_bot, f"rest:{sender}") == []


def test_an_unclear_consent_is_asked_again(handoff_bot):
    sender = new_sender()
    ask_for_callback(handoff_bot, sender)
    assert_turn(handoff_bot.texts(sender, "你们几点上班"), reply("utter_callback_consent_unclear"),
                reply("utter_ask_callback_consent", retention_days="30"))
    assert_said(handoff_bot.texts(sender, "可以"), "utter_ask_callback_phone")


def test_the_verified_terminal_goes_on_the_ticket(handoff_bot):
    sender = new_sender()
    handoff_bot.texts(sender, "帮我查一下终端状态")
    handoff_bot.texts(sender, "30091254")
    assert "正常" in "".join(handoff_bot.texts(sender, "6721"))
    ask_for_callback(handoff_bot, sender)
    handoff_bot.texts(sender, "同意")
    assert said(handoff_bot.texts(sender, "+86 139 0000 1111"), "utter_callback_created", phone="139****1111")
    [row] = tickets(handoff_bot, f"rest:{sender}")
    assert row["terminal_id"] == "30091254" and row["phone"] == "13900001111"
    assert "13900001111" not in stored_text(handoff_bot, f"rest:{sender}")


def test_three_wrong_tails_offer_a_person_who_can_call_back(handoff_bot):
    sender = new_sender()
    handoff_bot.texts(sender, "帮我查一下终端状态")
    handoff_bot.texts(sender, "30091254")
    handoff_bot.texts(sender, "1111")
    handoff_bot.texts(sender, "2222")
    assert_turn(handoff_bot.texts(sender, "3333"), reply("utter_verification_locked"), reply("utter_handoff_offer"))
    assert_said(handoff_bot.texts(sender, "好"), "utter_ask_callback_topic")


def append(bot: Bot, monkeypatch, conversation: str, event) -> None:
    """What an agent tool does to a conversation it takes over: append Rasa's pause (or resume)
    event to the conversation in the tracker store."""
    monkeypatch.setenv("TRACKER_DB_URL", bot.env["TRACKER_DB_URL"])
    monkeypatch.setenv("TRACKER_RETENTION_DAYS", "0")
    store = UrlSQLTrackerStore(domain=Domain.load(str(ROOT / "domain.yml")))
    try:
        tracker = asyncio.run(store.retrieve(conversation))
        tracker.update(event)
        asyncio.run(store.save(tracker))
    finally:
        store.engine.dispose()


def test_a_paused_conversation_gets_no_bot_answers_even_after_a_restart(handoff_bot, monkeypatch):
    sender = new_sender()
    assert_said(handoff_bot.texts(sender, "押金能退吗"), "utter_deposit")
    append(handoff_bot, monkeypatch, f"rest:{sender}", ConversationPaused())

    assert handoff_bot.send(sender, "人呢？押金到底什么时候退") == []  # no answer, and no apology
    handoff_bot.rasa.stop()
    handoff_bot.rasa.start()
    assert handoff_bot.send(sender, "还在吗") == []
    texts = [json.loads(data) for data in stored_text(handoff_bot, f"rest:{sender}").split("\n")]
    users = [event["text"] for event in texts if event["event"] == "user"]
    assert users[-2:] == ["人呢？押金到底什么时候退", "还在吗"]  # kept for the person reading along

    append(handoff_bot, monkeypatch, f"rest:{sender}", ConversationResumed())
    assert_said(handoff_bot.texts(sender, "押金能退吗"), "utter_deposit")


def test_a_topic_with_a_number_in_it_is_kept_without_the_number(handoff_bot):
    sender = new_sender()
    ask_for_callback(handoff_bot, sender, "押金退款的事，我手机13800001111")
    handoff_bot.texts(sender, "同意")
    assert said(handoff_bot.texts(sender, "13800001111"), "utter_callback_created", phone="138****1111")
    [row] = tickets(handoff_bot, f"rest:{sender}")
    assert row["topic"] == "押金退款的事，我手机****" and row["phone"] == "13800001111"


def test_a_question_about_the_article_is_answered_and_the_form_goes_on(handoff_bot):
    sender = new_sender()
    ask_for_callback(handoff_bot, sender)
    assert_turn(handoff_bot.texts(sender, "押金能退吗"), reply("utter_deposit"),
                reply("utter_ask_callback_consent", retention_days="30"))
    assert_said(handoff_bot.texts(sender, "同意"), "utter_ask_callback_phone")
    assert_turn(handoff_bot.texts(sender, "注销要多久"), reply("utter_deregister_duration"),
                reply("utter_ask_callback_phone"))
    assert said(handoff_bot.texts(sender, "13800002222"), "utter_callback_created", phone="138****2222")
