"""Handing a WeChat merchant over to the 公众号's customer-service agents, through the real
channel and servers, with WeChat's exact XML from the simulator: the transfer_customer_service
reply, the kf_create_session / kf_switch_session / kf_close_session events, the pause kept
across a restart, the idle timeout, and the callback offered outside the service hours."""
import datetime as dt
import sqlite3
import time
from typing import Iterator

import pytest

from lakala_common.service_hours import BEIJING
from tests.support.expect import assert_said, assert_turn, reply
from tests.support.servers import render
from tests.wechat.conftest import (
    WeChatBot,
    new_user,
    said_texts,
    split_reply,
    started_bot,
    tracker_events,
)

AGENT, OTHER_AGENT = "kf2001@gh_0123456789ab", "kf2002@gh_0123456789ab"


@pytest.fixture(scope="module")
def handoff_bot(tmp_path_factory, fake_api) -> Iterator[WeChatBot]:
    """Transfer on, agents around the clock (the test servers' default hours)."""
    bot = started_bot(tmp_path_factory.mktemp("wechat_handoff"), fake_api, {"WECHAT_HANDOFF": "1"})
    yield bot
    bot.stop()


def closed_hours() -> str:
    """One hour of service that is not now, later today or tomorrow (Beijing time)."""
    start = (dt.datetime.now(BEIJING).hour + 3) % 24
    return f"{start:02d}:00-{start + 1:02d}:00"


@pytest.fixture(scope="module")
def closed_bot(tmp_path_factory, fake_api) -> Iterator[WeChatBot]:
    """Transfer on, but outside the service hours now; a paused conversation is handed back
    to the bot after 3 idle seconds."""
    bot = started_bot(tmp_path_factory.mktemp("wechat_closed"), fake_api, {
        "WECHAT_HANDOFF": "1", "SERVICE_HOURS": closed_hours(), "SERVICE_DAYS": "daily",
        "HANDOFF_TIMEOUT_MINUTES": "0.05",
    })
    yield bot
    bot.stop()


def bot_events(bot, openid: str) -> int:
    return len(tracker_events(bot, openid, "bot"))


def wait_for_api_messages(api, openid: str, count: int, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(api.messages_to(openid)) < count:
        time.sleep(0.1)
    return api.messages_to(openid)


def test_a_request_for_a_person_is_transferred_until_the_agent_closes(handoff_bot, fake_api):
    sim, openid = handoff_bot.sim(), new_user()
    outcome = sim.deliver(sim.text(openid, "转人工"))
    # WeChat's reply that hands the message to the agents, addressed and encrypted like any reply.
    assert outcome.transferred and outcome.reply_xml["ToUserName"] == openid
    assert set(outcome.reply_xml) == {"ToUserName", "FromUserName", "CreateTime", "MsgType"}
    # What the bot said while handing over goes as a customer-service message.
    assert wait_for_api_messages(fake_api, openid, 1) == [render("utter_handoff_transfer")]
    assert len(tracker_events(handoff_bot, openid, "pause")) == 1

    answered = bot_events(handoff_bot, openid)
    assert sim.deliver(sim.text(openid, "押金到底能不能退")).transferred
    assert sim.deliver(sim.kf_event(openid, "kf_create_session", AGENT)).acknowledged
    assert sim.deliver(sim.text(openid, "好的我等你")).transferred
    assert sim.deliver(sim.kf_event(openid, "kf_switch_session", AGENT, OTHER_AGENT)).acknowledged
    assert sim.deliver(sim.text(openid, "换人了吗")).transferred
    assert bot_events(handoff_bot, openid) == answered, "the bot said something while a person was talking"
    assert fake_api.messages_to(openid) == [render("utter_handoff_transfer")]

    closed = sim.deliver(sim.kf_event(openid, "kf_close_session", OTHER_AGENT))
    assert closed.reply == render("utter_handoff_ended")
    assert len(tracker_events(handoff_bot, openid, "resume")) == 1
    # WeChat delivering the close again changes nothing and says nothing.
    assert sim.deliver(sim.kf_event(openid, "kf_close_session", OTHER_AGENT)).acknowledged
    assert_said(said_texts(sim.deliver(sim.text(openid, "押金能退吗"))), "utter_deposit")
    # The merchant's messages to the agents are part of the conversation.
    assert any("好的我等你" in data for data in tracker_events(handoff_bot, openid, "user"))


def test_the_pause_survives_a_restart(handoff_bot):
    sim, openid = handoff_bot.sim(), new_user()
    assert sim.deliver(sim.text(openid, "我要人工客服")).transferred
    handoff_bot.rasa.stop()
    handoff_bot.rasa.start()
    assert sim.deliver(sim.text(openid, "还在吗")).transferred
    assert sim.deliver(sim.kf_event(openid, "kf_close_session", AGENT)).reply == render("utter_handoff_ended")


def test_the_third_wrong_tail_is_transferred_to_a_person(handoff_bot, fake_api):
    sim, openid = handoff_bot.sim(), new_user()
    assert_said(said_texts(sim.deliver(sim.text(openid, "帮我查一下终端状态"))), "utter_ask_terminal_id")
    assert_said(said_texts(sim.deliver(sim.text(openid, "30091254"))), "utter_ask_phone_tail")
    sim.deliver(sim.text(openid, "1111"))
    sim.deliver(sim.text(openid, "2222"))
    assert sim.deliver(sim.text(openid, "3333")).transferred
    sent = wait_for_api_messages(fake_api, openid, 1)
    assert sent == [render("utter_verification_locked") + "\n\n" + render("utter_handoff_transfer")]
    assert "张记" not in "".join(sent)


def test_an_agent_can_take_over_a_chat_with_the_bot(handoff_bot):
    sim, openid = handoff_bot.sim(), new_user()
    assert_said(said_texts(sim.deliver(sim.text(openid, "押金能退吗"))), "utter_deposit")
    assert sim.deliver(sim.kf_event(openid, "kf_create_session", AGENT)).acknowledged
    assert sim.deliver(sim.text(openid, "你好")).transferred
    assert sim.deliver(sim.kf_event(openid, "kf_close_session", AGENT)).reply == render("utter_handoff_ended")


def test_in_plaintext_mode_the_transfer_is_plain_xml(tmp_path_factory, fake_api):
    bot = started_bot(tmp_path_factory.mktemp("wechat_plain_handoff"), fake_api,
                      {"WECHAT_HANDOFF": "1", "WECHAT_MESSAGE_MODE": "plaintext"})
    try:
        sim, openid = bot.sim("plain"), new_user()
        outcome = sim.deliver(sim.text(openid, "转人工"))
        assert outcome.transferred
        assert b"<Encrypt>" not in outcome.attempts[-1].body
        assert b"transfer_customer_service" in outcome.attempts[-1].body
    finally:
        bot.stop()


def test_outside_the_hours_a_callback_is_offered_instead(closed_bot):
    sim, openid = closed_bot.sim(), new_user()
    outcome = sim.deliver(sim.text(openid, "转人工"))
    assert not outcome.transferred
    texts, options = split_reply(outcome.reply)
    assert_said(texts, "utter_handoff_offer_closed")
    assert (1, "留电话等回电") in options
    assert_said(said_texts(sim.deliver(sim.text(openid, "1"))), "utter_ask_callback_topic")
    assert_said(split_reply(sim.deliver(sim.text(openid, "想问下押金多久能退")).reply)[0],
                "utter_ask_callback_consent")
    assert_said(said_texts(sim.deliver(sim.text(openid, "同意"))), "utter_ask_callback_phone")
    created = said_texts(sim.deliver(sim.text(openid, "13912345678")))
    assert_said(created, "utter_callback_created_closed", phone="139****5678")
    with sqlite3.connect(closed_bot.terminal_db) as conn:
        rows = conn.execute("SELECT channel, phone, topic FROM callback_tickets WHERE conversation = ?",
                            ("wechat:" + openid,)).fetchall()
    assert rows == [("wechat", "13912345678", "想问下押金多久能退")]


def test_an_idle_pause_goes_back_to_the_bot(closed_bot):
    sim, openid = closed_bot.sim(), new_user()
    assert sim.deliver(sim.kf_event(openid, "kf_create_session", AGENT)).acknowledged
    assert sim.deliver(sim.text(openid, "在吗")).transferred
    time.sleep(4)  # HANDOFF_TIMEOUT_MINUTES is 0.05 here: 3 s
    assert_turn(said_texts(sim.deliver(sim.text(openid, "押金能退吗"))), reply("utter_deposit"))
    assert len(tracker_events(closed_bot, openid, "resume")) == 1
