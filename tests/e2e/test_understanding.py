"""How merchants really type, on the real bot: disguised cash-out is refused, a credit-card
application is not; pinyin, homophone typos, synonyms and English words reach the answer;
questions the article does not answer get the honest reply, not an article section."""
import uuid

import pytest

from tests.support.servers import render


def first_reply(bot, text):
    texts = bot.texts(f"understanding-{uuid.uuid4().hex}", text)
    assert texts, f"no reply to {text!r}"
    return texts[0]


@pytest.mark.parametrize("text", [
    "taoxian能做不",
    "能不能空刷几笔 我急用钱",
    "用刷卡机刷自己的信用卡取点现金出来",
    "帮朋友刷一下他的信用卡 钱转给他周转",
])
def test_disguised_cash_out_is_refused(bot, text):
    assert first_reply(bot, text) == render("utter_decline_cash_out")


def test_applying_for_a_credit_card_is_not_cash_out(bot):
    assert first_reply(bot, "请问怎么申请一张信用卡呀") != render("utter_decline_cash_out")


@pytest.mark.parametrize("text,response", [
    ("pos ji zen me zhu xiao a", "utter_deregister_terminal"),
    ("刷卡机注消流程是啥", "utter_deregister_terminal"),
    ("装机时交的保证金能拿回来不", "utter_deposit"),
    ("deposit能退吗", "utter_deposit"),
    ("违约进要交多少", "utter_termination_fee"),
    ("机器多久没用会被自动zhuxiao", "utter_dormancy"),
])
def test_how_merchants_type_reaches_the_answer(bot, text, response):
    assert first_reply(bot, text) == render(response)


@pytest.mark.parametrize("text", [
    "刷卡手续费是多少",
    "昨天刷的钱今天还没到账",
    "机器屏幕碎了去哪修",
    "收款宝app登录不上去",
])
def test_questions_the_article_does_not_answer_get_the_honest_reply(bot, text):
    assert first_reply(bot, text) == render("utter_not_covered")
