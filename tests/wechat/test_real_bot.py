"""A merchant on WeChat talking to the real Rasa server and action server, through the channel
as configured by credentials.wechat.yml, with the stand-in WeChat API for late answers: message
types and events, numbered options, dedupe and replay, and WeChat's 5-second clock. The same
without an AppSecret (retries and the apology): test_real_bot_without_api.py."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lakala_server.wechat.delivery import DEDUPE_TTL_SECONDS
from lakala_server.wechat.render import load_texts
from tests.support.expect import assert_said, assert_turn, reply, said
from tests.support.servers import DOMAIN, ROOT, render
from tests.wechat.conftest import (
    LOOKUP_30091254,
    new_user,
    said_texts,
    split_reply,
    terminal_db_locked,
    to_phone_prompt,
    tracker_events,
    user_texts,
    wait_for_messages,
)

TEXTS = load_texts(ROOT / "domain.yml")
LOCK_SECONDS = 7.0
GREETING_TITLES = [button["title"] for button in DOMAIN["responses"]["utter_greet"][0]["buttons"]]



def test_follow_then_a_terminal_lookup_by_numbered_options(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    welcome = sim.deliver(sim.event(openid, "subscribe", "")).reply
    texts, options = split_reply(welcome)
    assert texts == [render("utter_greet")]
    assert options == [(i + 1, b["title"]) for i, b in enumerate(DOMAIN["responses"]["utter_greet"][0]["buttons"])]
    assert "回复 3 查询终端状态" in welcome
    assert_said(said_texts(sim.deliver(sim.text(openid, "3"))), "utter_ask_terminal_id")
    assert_said(said_texts(sim.deliver(sim.text(openid, "30091254"))), "utter_ask_phone_tail")
    texts = said_texts(sim.deliver(sim.text(openid, "6721")))
    assert_turn(texts, reply("utter_status_active", terminal_id="30091254", merchant="张记便利店", device="电签POS"),
                *LOOKUP_30091254[1:])
    # Slots and forms live in the OpenID's conversation: the follow-up is about this terminal.
    assert_said(said_texts(sim.deliver(sim.text(openid, "押金能退吗"))), "utter_deposit_after_deregistration",
                terminal_id="30091254", deposit=299)


def test_a_question_is_answered_in_the_chat(wechat_bot):
    sim, openid = wechat_bot.sim("compat"), new_user()
    outcome = sim.deliver(sim.text(openid, "押金能退吗"))
    texts, options = split_reply(outcome.reply)
    assert_said(texts, "utter_deposit")
    assert [title for _, title in options] == [b["title"] for b in DOMAIN["responses"]["utter_deposit"][0]["buttons"]]
    assert outcome.attempts[0].seconds < 4.5


def test_a_recognised_voice_message_is_answered(wechat_bot):
    sim, openid = wechat_bot.sim("compat"), new_user()
    assert_said(said_texts(sim.deliver(sim.voice(openid, "押金能退吗？"))), "utter_deposit")


def test_a_picture_is_answered_politely_without_a_turn(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    assert sim.deliver(sim.image(openid)).reply == TEXTS.unsupported
    assert tracker_events(wechat_bot, openid, "user") == []


def test_a_menu_item_acts_as_its_button(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    assert_said(said_texts(sim.deliver(sim.event(openid, "CLICK", "/check_terminal_status"))), "utter_ask_terminal_id")


def test_unfollowing_ends_the_conversation(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    sim.deliver(sim.text(openid, "帮我查一下终端状态"))
    sim.deliver(sim.text(openid, "K7306118"))
    assert_turn(said_texts(sim.deliver(sim.text(openid, "0839"))),
                reply("utter_status_dormant", terminal_id="K7306118"),
                reply("utter_deposit_after_deregistration", terminal_id="K7306118", deposit=99),
                reply("utter_fee_none", terminal_id="K7306118"))
    assert sim.deliver(sim.event(openid, "unsubscribe", "")).acknowledged
    assert len(tracker_events(wechat_bot, openid, "restart")) == 1
    sim.deliver(sim.event(openid, "subscribe", "", create_time=int(time.time()) + 1))
    texts = said_texts(sim.deliver(sim.text(openid, "押金能退吗")))
    assert_said(texts, "utter_deposit")
    assert not said(texts, "utter_deposit_after_deregistration")


def test_four_concurrent_deliveries_are_one_turn_and_one_reply(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    url, body = sim.envelope(sim.text(openid, "押金能退吗"))
    barrier = threading.Barrier(4)

    def deliver(_):
        barrier.wait()
        return sim.post(url, body)

    with ThreadPoolExecutor(4) as pool:
        attempts = list(pool.map(deliver, range(4)))
    assert all(a.status == 200 and a.seconds < 5 for a in attempts)
    replies = [sim.read_reply(a.body, openid) for a in attempts if a.body != b"success"]
    assert len(replies) == 1
    assert_said(split_reply(replies[0]["Content"])[0], "utter_deposit")
    assert len(tracker_events(wechat_bot, openid, "user")) == 1
    assert wechat_bot.api.messages_to(openid) == []


def test_slow_backend_answer_arrives_once_as_a_customer_service_message(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    to_phone_prompt(sim, openid)
    with terminal_db_locked(wechat_bot, LOCK_SECONDS):
        outcome = sim.deliver(sim.text(openid, "6721"))
        assert outcome.acknowledged and len(outcome.attempts) == 1 and outcome.attempts[0].seconds < 5
    sent = wait_for_messages(wechat_bot.api, openid)
    assert len(sent) == 1
    time.sleep(1)
    assert wechat_bot.api.messages_to(openid) == sent
    assert_turn(split_reply(sent[0])[0], *LOOKUP_30091254)
    # Three messages, three turns (the phone digits themselves are masked in the tracker).
    assert len(tracker_events(wechat_bot, openid, "user")) == 3


def test_slow_backend_answer_comes_on_wechats_retry_when_ready_by_then(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    to_phone_prompt(sim, openid)
    url, body = sim.envelope(sim.text(openid, "6721"))
    with terminal_db_locked(wechat_bot, 5.5):
        # The acknowledgement did not reach WeChat within its timeout here, so WeChat retries.
        first = sim.post(url, body, timeout=3)
        retry = sim.post(url, body)
    assert first.timed_out and retry.status == 200 and retry.seconds < 4.5
    texts = split_reply(sim.read_reply(retry.body, openid)["Content"])[0]
    assert_turn(texts, *LOOKUP_30091254)
    time.sleep(1)
    assert wechat_bot.api.messages_to(openid) == []
    # Three messages, three turns (the phone digits themselves are masked in the tracker).
    assert len(tracker_events(wechat_bot, openid, "user")) == 3


# --- message types and events ---------------------------------------------------------------------

def test_voice_without_recognition_asks_for_text(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    assert sim.deliver(sim.voice(openid, None)).reply == TEXTS.voice_unrecognized
    assert sim.deliver(sim.voice(openid, "  ")).reply == TEXTS.voice_unrecognized
    assert user_texts(wechat_bot, openid) == []


@pytest.mark.parametrize("kind", ["image", "location", "video", "shortvideo", "link", "file"])
def test_other_messages_are_told_only_text_is_understood(wechat_bot, kind):
    sim, openid = wechat_bot.sim(), new_user()
    if kind in ("image", "location"):
        xml = getattr(sim, kind)(openid)
    else:
        xml = sim._xml(openid, kind, {"MediaId": "m", "Title": "t", "MsgId": sim.new_msg_id()})
    assert sim.deliver(xml).reply == TEXTS.unsupported
    assert user_texts(wechat_bot, openid) == []


def test_following_greets_with_numbered_options(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    texts, options = split_reply(sim.deliver(sim.event(openid, "subscribe", "")).reply)
    assert texts == [render("utter_greet")]
    assert options == list(enumerate(GREETING_TITLES, start=1))
    assert user_texts(wechat_bot, openid) == ["/greet"]


def test_following_through_a_qr_code_also_greets(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    assert sim.deliver(sim.event(openid, "subscribe", "qrscene_123")).reply.startswith(render("utter_greet"))


def test_unfollowing_forgets_the_options_offered(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    sim.deliver(sim.event(openid, "subscribe", ""))
    outcome = sim.deliver(sim.event(openid, "unsubscribe", ""))
    assert outcome.acknowledged and outcome.attempts[-1].body == b"success"
    assert user_texts(wechat_bot, openid) == ["/greet", "/restart"]
    # The options offered before are gone with the conversation.
    sim.deliver(sim.text(openid, "1"))
    assert user_texts(wechat_bot, openid)[-1] == "1"


@pytest.mark.parametrize("event, key", [("VIEW", "https://example.com"), ("LOCATION", None), ("SCAN", "123"),
                                        ("TEMPLATESENDJOBFINISH", None), ("some_future_event", None)])
def test_other_events_are_acknowledged_without_reply(wechat_bot, event, key):
    sim, openid = wechat_bot.sim(), new_user()
    outcome = sim.deliver(sim.event(openid, event, key))
    assert outcome.acknowledged
    assert user_texts(wechat_bot, openid) == []


# --- numbered options -----------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["3", "３", "查询终端状态", "查询终端状态。", "voice:查询终端状态。"])
def test_a_number_or_an_option_text_is_the_button_payload(wechat_bot, answer):
    sim, openid = wechat_bot.sim(), new_user()
    sim.deliver(sim.event(openid, "subscribe", ""))
    if answer.startswith("voice:"):
        outcome = sim.deliver(sim.voice(openid, answer[len("voice:"):]))
    else:
        outcome = sim.deliver(sim.text(openid, answer))
    assert_said(said_texts(outcome), "utter_ask_terminal_id")
    assert user_texts(wechat_bot, openid) == ["/greet", "/check_terminal_status"]


def test_options_expire_with_the_turn(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    texts, options = split_reply(sim.deliver(sim.text(openid, "押金能退吗")).reply)
    assert_said(texts, "utter_deposit")
    assert options == [(1, "查询终端状态"), (2, "POS机怎么注销")]
    assert_said(said_texts(sim.deliver(sim.text(openid, "1"))), "utter_ask_terminal_id")
    # The question for the terminal number offers no options: "2" is now just what was typed.
    sim.deliver(sim.text(openid, "2"))
    assert user_texts(wechat_bot, openid) == ["押金能退吗", "/check_terminal_status", "2"]


def test_a_number_outside_the_options_is_plain_text(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    sim.deliver(sim.event(openid, "subscribe", ""))
    sim.deliver(sim.text(openid, str(len(GREETING_TITLES) + 1)))
    assert user_texts(wechat_bot, openid) == ["/greet", str(len(GREETING_TITLES) + 1)]


def test_typed_intent_payloads_are_not_obeyed(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    texts = said_texts(sim.deliver(sim.text(openid, "/request_deregistration")))
    assert user_texts(wechat_bot, openid) == ["request_deregistration"]
    assert not said(texts, "utter_ask_deregistration_confirmed")


# --- dedupe and replay ----------------------------------------------------------------------------

def test_a_retried_message_is_handled_once(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    url, body = sim.envelope(sim.text(openid, "押金能退吗"))
    first, again = sim.post(url, body), sim.post(url, body)
    assert b"<Encrypt>" in first.body and again.body == b"success"
    assert len(tracker_events(wechat_bot, openid, "user")) == 1


def test_a_retried_event_is_handled_once(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    created = int(time.time())
    first = sim.deliver(sim.event(openid, "subscribe", "", create_time=created))
    again = sim.deliver(sim.event(openid, "subscribe", "", create_time=created))
    assert first.reply and again.acknowledged
    assert user_texts(wechat_bot, openid) == ["/greet"]


def test_a_captured_request_replayed_later_is_refused_or_ignored(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    url, body = sim.envelope(sim.text(openid, "押金能退吗"))
    assert sim.post(url, body).status == 200
    replay = sim.post(url, body)
    assert (replay.status, replay.body) == (200, b"success")
    assert len(tracker_events(wechat_bot, openid, "user")) == 1


def test_a_request_from_before_the_dedupe_lifetime_is_refused(wechat_bot):
    # What the dedupe has forgotten cannot come back: its signed timestamp is too old by then.
    sim, openid = wechat_bot.sim(), new_user()
    timestamp = str(int(time.time()) - DEDUPE_TTL_SECONDS)
    attempt = sim.post(*sim.envelope(sim.text(openid, "押金能退吗"), timestamp=timestamp))
    assert attempt.status == 403
    assert tracker_events(wechat_bot, openid, "user") == []


# --- WeChat's clock, with the customer-service API --------------------------------------------------

def test_concurrent_deliveries_of_a_slow_answer_share_one_answer(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    to_phone_prompt(sim, openid)
    url, body = sim.envelope(sim.text(openid, "6721"))
    with terminal_db_locked(wechat_bot, 1.0), ThreadPoolExecutor(4) as pool:
        attempts = list(pool.map(lambda _: sim.post(url, body), range(4)))
    replies = [a for a in attempts if a.body != b"success"]
    assert all(a.status == 200 and a.seconds < 5 for a in attempts)
    assert len(replies) == 1
    assert_turn(split_reply(sim.read_reply(replies[0].body, openid)["Content"])[0], *LOOKUP_30091254)
    assert len(tracker_events(wechat_bot, openid, "user")) == 3


def test_a_failed_customer_service_message_comes_with_the_next_reply(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    to_phone_prompt(sim, openid)
    wechat_bot.api.fail_next_send(45015)
    with terminal_db_locked(wechat_bot, 5.0):
        assert sim.deliver(sim.text(openid, "6721")).acknowledged
    time.sleep(2)
    texts = said_texts(sim.deliver(sim.text(openid, "押金能退吗")))
    # The lookup's turn, carried over, then the answer to this message.
    assert_turn(texts, *LOOKUP_30091254, LOOKUP_30091254[1])
    assert wechat_bot.api.messages_to(openid) == []


def test_the_acknowledgement_is_on_time_under_load(wechat_bot):
    sim = wechat_bot.sim()
    users = [new_user() for _ in range(12)]
    to_phone_prompt(sim, users[0])
    barrier = threading.Barrier(len(users))

    def one(openid):
        barrier.wait()
        return sim.deliver(sim.text(openid, "6721" if openid == users[0] else "押金能退吗"))

    with terminal_db_locked(wechat_bot, 5.0), ThreadPoolExecutor(len(users)) as pool:
        outcomes = list(pool.map(one, users))
    assert all(len(o.attempts) == 1 and o.attempts[0].seconds < 4.6 for o in outcomes)
    assert outcomes[0].acknowledged and all(o.reply for o in outcomes[1:])


def test_without_transfer_turned_on_a_person_means_a_callback(wechat_bot):
    """WECHAT_HANDOFF is off by default: the account may have no 客服 function, so nothing is
    transferred and the merchant is offered a callback."""
    sim, openid = wechat_bot.sim(), new_user()
    outcome = sim.deliver(sim.text(openid, "转人工"))
    assert not outcome.transferred
    texts, options = split_reply(outcome.reply)
    assert_said(texts, "utter_handoff_offer")
    assert [title for _, title in options] == ["留电话等回电", "不用了"]
    assert tracker_events(wechat_bot, openid, "pause") == []
