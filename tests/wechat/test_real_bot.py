"""A merchant on WeChat talking to the real Rasa server and action server, through the channel
as configured by credentials.wechat.yml, with the stand-in WeChat API for late answers."""
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, List

from lakala_server.wechat.render import load_texts
from tests.support.expect import assert_said, said
from tests.support.servers import DOMAIN, ROOT, render
from tests.wechat.conftest import split_reply

TEXTS = load_texts(ROOT / "domain.yml")
LOCK_SECONDS = 7.0


def new_user() -> str:
    return "o" + uuid.uuid4().hex[:27]


def said_texts(outcome) -> List[str]:
    assert outcome.reply is not None, outcome.attempts
    return split_reply(outcome.reply)[0]


def tracker_events(bot, openid: str, type_name: str) -> List[str]:
    with sqlite3.connect(bot.workdir / "tracker.db") as conn:
        rows = conn.execute("SELECT data FROM events WHERE sender_id = ? AND type_name = ? ORDER BY id",
                            ("wechat:" + openid, type_name)).fetchall()
    return [row[0] for row in rows]


@contextmanager
def terminal_db_locked(bot, seconds: float) -> Iterator[None]:
    """Another connection holds the terminal database's write lock for `seconds`, as a long batch
    job would; the action server's query waits for it (DB_TIMEOUT_SECONDS is 30 here)."""
    conn = sqlite3.connect(bot.terminal_db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    timer = threading.Timer(seconds, lambda: conn.execute("COMMIT"))
    timer.start()
    try:
        yield
    finally:
        timer.join()
        conn.close()


def wait_for_messages(api, openid: str, timeout: float = 15) -> List[str]:
    deadline = time.monotonic() + timeout
    while not api.messages_to(openid) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return api.messages_to(openid)


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
    assert_said(texts, "utter_status_active", terminal_id="30091254", merchant="张记便利店", device="电签POS")
    assert_said(texts, "utter_deposit_after_deregistration", terminal_id="30091254", deposit=299)
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
    assert_said(said_texts(sim.deliver(sim.text(openid, "0839"))), "utter_status_dormant", terminal_id="K7306118")
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


def _to_phone_prompt(sim, openid):
    sim.deliver(sim.text(openid, "帮我查一下终端状态"))
    assert_said(said_texts(sim.deliver(sim.text(openid, "30091254"))), "utter_ask_phone_tail")


def test_slow_backend_answer_arrives_once_as_a_customer_service_message(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    _to_phone_prompt(sim, openid)
    with terminal_db_locked(wechat_bot, LOCK_SECONDS):
        outcome = sim.deliver(sim.text(openid, "6721"))
        assert outcome.acknowledged and len(outcome.attempts) == 1 and outcome.attempts[0].seconds < 5
    sent = wait_for_messages(wechat_bot.api, openid)
    assert len(sent) == 1
    assert_said(split_reply(sent[0])[0], "utter_status_active", terminal_id="30091254")
    # Three messages, three turns (the phone digits themselves are masked in the tracker).
    assert len(tracker_events(wechat_bot, openid, "user")) == 3


def test_slow_backend_answer_comes_on_wechats_retry_when_ready_by_then(wechat_bot):
    sim, openid = wechat_bot.sim(), new_user()
    _to_phone_prompt(sim, openid)
    url, body = sim.envelope(sim.text(openid, "6721"))
    with terminal_db_locked(wechat_bot, 5.5):
        # The acknowledgement did not reach WeChat within its timeout here, so WeChat retries.
        first = sim.post(url, body, timeout=3)
        retry = sim.post(url, body)
    assert first.timed_out and retry.status == 200 and retry.seconds < 4.5
    texts = split_reply(sim.read_reply(retry.body, openid)["Content"])[0]
    assert_said(texts, "utter_status_active", terminal_id="30091254")
    time.sleep(1)
    assert wechat_bot.api.messages_to(openid) == []
    # Three messages, three turns (the phone digits themselves are masked in the tracker).
    assert len(tracker_events(wechat_bot, openid, "user")) == 3
