"""Every question heading of the article, asked in three everyday phrasings, gets the
answer of that section, as the first reply of a new conversation over REST."""
import uuid

import pytest

from tests.support.overlap import key
from tests.support.servers import render

# heading of the article -> (the response of its section, three everyday phrasings)
HEADINGS = {
    "拉卡拉pos机不用了怎么办（文章标题）": ("utter_need_deregister", [
        "拉卡拉的pos机我现在不用了 该咋办",
        "店里那台拉卡拉刷卡机闲着没用了，放着不管行不行",
        "不打算再用拉卡拉pos了，需要去办什么手续吗",
    ]),
    "pos机要怎么注销掉..急!": ("utter_deregister_terminal", [
        "急！！刷卡机要注销掉 找谁办",
        "电签机想退掉不用了，注销流程是怎样的",
        "我想把pos机给销了，要联系哪里",
    ]),
    "拉卡拉不用了需要注销吗": ("utter_need_deregister", [
        "拉卡拉以后不用了 一定得注销吗",
        "机器停着不用的话必须去注销么",
        "反正以后也用不上了，不去注销的话会咋样",
    ]),
    "拉卡拉怎么注销（账户）": ("utter_deregister_account", [
        "收款宝的账号怎么注销掉",
        "拉卡拉商户账户想销户，流程是什么",
        "我要把拉卡拉的支付账户关掉，需要准备啥材料",
    ]),
    "POS机怎么注销": ("utter_deregister_terminal", [
        "怎么注销我们店的pos",
        "pos终端注销去哪里办理",
        "收款机器不想要了，注销要怎么操作",
    ]),
    "使用POS机的注意事项": ("utter_faq/pos_precautions", [
        "用pos机收款平时要注意点啥",
        "刷卡机使用有哪些注意事项",
        "第一次用pos，有什么要特别小心的地方",
    ]),
    "安全性：手机遗失，银行卡上的钱安全吗": ("utter_faq/phone_loss", [
        "绑了银行卡的手机丢了 卡里的钱会不会被盗",
        "手机不见了，上面绑的银行卡安不安全",
        "手机掉了别人能用绑定的卡刷钱吗",
    ]),
}

CASES = [
    pytest.param(response, phrasing, id=f"{heading}-{n}")
    for heading, (response, phrasings) in HEADINGS.items()
    for n, phrasing in enumerate(phrasings, 1)
]


def test_three_distinct_phrasings_per_heading():
    for heading, (_, phrasings) in HEADINGS.items():
        assert len({key(p) for p in phrasings}) == 3, heading


@pytest.mark.parametrize("response,phrasing", CASES)
def test_heading_question_gets_its_section(bot, response, phrasing):
    texts = bot.texts(f"article-{uuid.uuid4().hex}", phrasing)
    assert texts and texts[0] == render(response), f"{phrasing!r} got {texts!r}"
