"""The real bot on an account without an AppSecret: no customer-service API, so an answer
slower than WeChat's 5 seconds comes on WeChat's retry, and after the last retry the merchant
gets the apology and the answer comes with the next reply. The slow answer is a terminal
lookup while another connection holds the terminal database's lock."""
import time

from lakala_server.wechat.render import load_texts
from tests.support.expect import assert_turn
from tests.support.servers import ROOT
from tests.wechat.conftest import (
    LOOKUP_30091254,
    new_user,
    said_texts,
    terminal_db_locked,
    to_phone_prompt,
    tracker_events,
)

TEXTS = load_texts(ROOT / "domain.yml")


def test_without_appsecret_a_slow_answer_comes_on_wechats_retry(wechat_bot_without_api):
    bot = wechat_bot_without_api
    sim, openid = bot.sim(), new_user()
    to_phone_prompt(sim, openid)
    with terminal_db_locked(bot, 7.0):
        outcome = sim.deliver(sim.text(openid, "6721"))
    assert [a.timed_out for a in outcome.attempts] == [True, False]
    assert_turn(said_texts(outcome), *LOOKUP_30091254)
    assert outcome.attempts[1].seconds < 4.5
    # Three messages, three turns (the phone digits themselves are masked in the tracker).
    assert len(tracker_events(bot, openid, "user")) == 3


def test_without_appsecret_an_answer_later_than_every_retry_comes_with_the_next_reply(wechat_bot_without_api):
    bot = wechat_bot_without_api
    sim, openid = bot.sim(), new_user()
    to_phone_prompt(sim, openid)
    with terminal_db_locked(bot, 16.0):
        outcome = sim.deliver(sim.text(openid, "6721"))
        assert [a.timed_out for a in outcome.attempts] == [True, True, False]
        assert outcome.attempts[2].seconds < 5
        assert outcome.reply == TEXTS.still_working
    time.sleep(2.5)  # the answer is ready soon after the lock is released
    texts = said_texts(sim.deliver(sim.text(openid, "押金能退吗")))
    # The lookup's turn, carried over, then the answer to this message.
    assert_turn(texts, *LOOKUP_30091254, LOOKUP_30091254[1])
    assert len(tracker_events(bot, openid, "user")) == 4
