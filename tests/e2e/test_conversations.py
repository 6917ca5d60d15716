"""A merchant chatting over REST with the real Rasa server and action server."""
import datetime as dt
import json
import uuid

import pytest
import sqlalchemy as sa

from actions.registry import Registry, hash_phone_tail, terminals
from tests.support import holidays
from tests.support.expect import assert_said, assert_turn, reply
from tests.support.servers import DOMAIN

# The servers read today's date from the clock; working days are counted with the hand-typed
# official holiday schedule (tests/support/holidays.py), never with actions/policy.py.
TODAY = dt.date.today()


def new_sender() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


def lookup(bot, sender, terminal_id, tail, opener="帮我查一下终端状态"):
    assert_said(bot.texts(sender, opener), "utter_ask_terminal_id")
    assert_said(bot.texts(sender, terminal_id), "utter_ask_phone_tail")
    return bot.texts(sender, tail)


def day(offset: int) -> str:
    return (TODAY + dt.timedelta(days=offset)).isoformat()


@pytest.mark.parametrize(
    "message, response",
    [
        ("", "utter_empty_input"),
        ("   ", "utter_empty_input"),
        ("😀😂👍", "utter_empty_input"),
        ("？？！！。。", "utter_empty_input"),
        ("押金" * 2500, "utter_too_long"),
        ("Could you recommend a nice restaurant near the station tonight?", "utter_chinese_only"),
        # English with the domain's words is read through lakala_nlu/english.txt and answered.
        ("Hello, how can I close my Lakala account please?", "utter_deregister_account"),
    ],
)
def test_bad_input_gets_a_polite_answer(bot, message, response):
    assert_said(bot.texts(new_sender(), message), response)


@pytest.mark.parametrize(
    "message, response",
    [
        ("押金能退吗", "utter_deposit"),
        ("押金能退嗎", "utter_deposit"),
        ("拉卡拉帳戶要怎麼註銷", "utter_deregister_account"),
        ("poss机不用了怎么注消", "utter_deregister_terminal"),
        ("三个月没刷卡会不会被停用", "utter_dormancy"),
        ("今天天气怎么样", "utter_out_of_scope"),
        ("教我怎么用刷卡机套现", "utter_decline_cash_out"),
        ("转人工", "utter_handoff_offer"),
        ("一清和二清哪个更安全", "utter_faq/yiqing_erqing"),
    ],
)
def test_article_answers(bot, message, response):
    assert_said(bot.texts(new_sender(), message), response)


def test_active_terminal(bot):
    texts = lookup(bot, new_sender(), "30091254", "6721")
    assert_turn(texts,
                reply("utter_status_active", terminal_id="30091254", merchant="张记便利店",
                      device="电签POS", last_tx=day(-2)),
                reply("utter_deposit_after_deregistration", terminal_id="30091254", deposit=299),
                reply("utter_fee_due", fee=200, contract_end=day(200)))


def test_dormant_terminal_and_follow_up_questions(bot):
    sender = new_sender()
    texts = lookup(bot, sender, "k730-6118", "0839")
    assert_turn(texts,
                reply("utter_status_dormant", terminal_id="K7306118", merchant="李记水果店",
                      device="手机POS", last_tx=day(-100), auto_date=day(80), days_left=80),
                reply("utter_deposit_after_deregistration", terminal_id="K7306118", deposit=99),
                reply("utter_fee_none", terminal_id="K7306118", contract_end=day(-30)))
    assert_said(bot.texts(sender, "押金能退吗"), "utter_deposit_after_deregistration",
                terminal_id="K7306118", deposit=99)
    assert_said(bot.texts(sender, "现在注销要违约金吗"), "utter_fee_none",
                terminal_id="K7306118", contract_end=day(-30))
    assert_said(bot.texts(sender, "什么时候会被自动注销"), "utter_status_dormant",
                terminal_id="K7306118", auto_date=day(80), days_left=80)


def test_automatically_deregistered_terminal(bot):
    texts = lookup(bot, new_sender(), "88004521", "1456")
    assert_turn(texts,
                reply("utter_status_auto_deregistered", terminal_id="88004521",
                      merchant="王家小馆", auto_date=day(-20)),
                reply("utter_deposit_refundable_now", terminal_id="88004521", deposit=199))


def test_deregistration_in_progress(bot):
    requested = holidays.working_days_before(TODAY, 3).date
    completes = holidays.completes_on(requested)
    texts = lookup(bot, new_sender(), "A0012345", "2290")
    response = "utter_status_in_progress_estimate" if completes.is_estimate else "utter_status_in_progress"
    assert_turn(texts,
                reply(response, terminal_id="A0012345", merchant="赵氏五金",
                      requested_on=requested.isoformat(), completes_on=completes.date.isoformat()),
                reply("utter_deposit_none", terminal_id="A0012345"))


def test_deregistered_terminal(bot):
    texts = lookup(bot, new_sender(), "55550001", "9088")
    completed = holidays.completes_on(TODAY - dt.timedelta(days=400 - 20)).date  # the demo's request
    assert_turn(texts,
                reply("utter_status_deregistered", terminal_id="55550001", merchant="孙家超市",
                      completes_on=completed.isoformat()),
                reply("utter_deposit_refunded", terminal_id="55550001", deposit=299))


def test_wrong_phone_tail_reveals_nothing_and_locks_after_three(bot):
    sender = new_sender()
    texts = lookup(bot, sender, "30091254", "1111")
    assert_turn(texts, reply("utter_phone_tail_wrong", tries_left=2), reply("utter_ask_phone_tail"))
    turn = bot.texts(sender, "2222")
    assert_turn(turn, reply("utter_phone_tail_wrong", tries_left=1), reply("utter_ask_phone_tail"))
    texts += turn
    turn = bot.texts(sender, "3333")
    # A person checks who the merchant is: the bot offers a callback.
    assert_turn(turn, reply("utter_verification_locked"), reply("utter_handoff_offer"))
    texts += turn
    joined = "".join(texts)
    for secret in ("张记便利店", "299", "200", "6721", "电签POS"):
        assert secret not in joined
    again = bot.texts(sender, "帮我查一下终端状态")
    assert_turn(again, reply("utter_verification_locked"), reply("utter_handoff_offer"))


def test_malformed_and_unknown_terminal_numbers(bot):
    sender = new_sender()
    bot.texts(sender, "查询终端状态")
    assert_turn(bot.texts(sender, "12345"), reply("utter_terminal_id_malformed"), reply("utter_ask_terminal_id"))
    texts = bot.texts(sender, "ZZ999999")
    assert_turn(texts, reply("utter_terminal_not_found", terminal_id="ZZ999999"), reply("utter_ask_terminal_id"))
    assert not any("30091254" in t or "K7306118" in t for t in texts)


def test_digression_inside_the_form_then_resume(bot):
    sender = new_sender()
    bot.texts(sender, "帮我查一下终端状态")
    texts = bot.texts(sender, "押金能退吗")
    assert_turn(texts, reply("utter_deposit"), reply("utter_ask_terminal_id"))
    assert_said(bot.texts(sender, "30091254"), "utter_ask_phone_tail")
    texts = bot.texts(sender, "POS机的流量卡是什么")
    assert_turn(texts, reply("utter_faq/sim_card"), reply("utter_ask_phone_tail"))
    assert_turn(bot.texts(sender, "6721"), reply("utter_status_active", terminal_id="30091254"),
                reply("utter_deposit_after_deregistration", terminal_id="30091254", deposit=299),
                reply("utter_fee_due", fee=200, contract_end=day(200)))


def test_leaving_the_form(bot):
    sender = new_sender()
    bot.texts(sender, "查询终端状态")
    assert_said(bot.texts(sender, "算了"), "utter_form_cancelled")
    assert_said(bot.texts(sender, "押金能退吗"), "utter_deposit")


def test_deregistration_declined_records_nothing(bot):
    sender = new_sender()
    bot.texts(sender, "我要注销终端K7306118")
    texts = bot.texts(sender, "0839")
    assert_turn(texts, reply("utter_deregistration_no_fee", terminal_id="K7306118"),
                reply("utter_deposit_after_deregistration", terminal_id="K7306118", deposit=99),
                confirmation_question())
    assert_said(bot.texts(sender, "不用了"), "utter_deregistration_cancelled", terminal_id="K7306118")
    status = Registry(f"sqlite:///{bot.terminal_db}", auto_seed=False).status("K7306118")
    assert status.request_id is None


def confirmation_question():
    """The question before a request filed today, with the day it would complete."""
    completes = holidays.completes_on(TODAY)
    return reply("utter_ask_deregistration_confirmed_estimate" if completes.is_estimate
                 else "utter_ask_deregistration_confirmed", completes_on=completes.date.isoformat())


def add_active_terminal(bot, terminal_id, tail, fee):
    """A terminal of this test's own, so filing a request does not change the demo ones."""
    registry = Registry(f"sqlite:///{bot.terminal_db}", auto_seed=False)
    with registry.engine.begin() as connection:
        connection.execute(terminals.insert().values(
            terminal_id=terminal_id, merchant_name="测试小卖部", device_type="电签POS",
            phone_tail_hash=hash_phone_tail(terminal_id, tail),
            last_transaction_on=TODAY - dt.timedelta(days=1),
            contract_ends_on=TODAY + dt.timedelta(days=30),
            deposit_amount=199, deposit_refunded=False, termination_fee=fee,
        ))
    return registry


def test_deregistration_confirmed_once_even_when_asked_twice(bot):
    registry = add_active_terminal(bot, "E2E00001", "5566", fee=150)
    sender = new_sender()
    texts = bot.texts(sender, "帮我把终端E2E00001注销了")
    assert_said(texts, "utter_ask_phone_tail")
    texts = bot.texts(sender, "5566")
    assert_turn(texts, reply("utter_deregistration_fee_warning", terminal_id="E2E00001", fee=150,
                             contract_end=day(30)),
                reply("utter_deposit_after_deregistration", terminal_id="E2E00001", deposit=199),
                confirmation_question())
    texts = bot.texts(sender, "是的")
    completes = holidays.completes_on(TODAY)
    response = ("utter_deregistration_submitted_estimate" if completes.is_estimate
                else "utter_deregistration_submitted")
    assert_said(texts, response, terminal_id="E2E00001", completes_on=completes.date.isoformat())
    first = registry.status("E2E00001").request_id
    assert first and first in texts[0]
    again = bot.texts(sender, "我要注销终端E2E00001")
    assert_said(again, "utter_deregistration_exists", terminal_id="E2E00001", request_id=first)
    other_user = new_sender()
    bot.texts(other_user, "申请注销终端E2E00001")
    assert_said(bot.texts(other_user, "5566"), "utter_deregistration_exists", request_id=first)
    assert registry.status("E2E00001").request_id == first
    with registry.engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT count(*) FROM deregistration_requests WHERE terminal_id = 'E2E00001'")).scalar()
    assert rows == 1


def stored_user_texts(bot, sender):
    """What the tracker store kept as the user's words, in order."""
    engine = sa.create_engine(f"sqlite:///{bot.workdir / 'tracker.db'}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT data FROM events WHERE sender_id = :sender AND type_name = 'user' ORDER BY id"),
                {"sender": f"rest:{sender}"}).scalars()  # how the REST channel names it
            return [json.loads(row)["text"] for row in rows]
    finally:
        engine.dispose()


def offer(terminal_id):
    """What the bot says once a fee-free test terminal is verified for deregistration."""
    return (reply("utter_deregistration_no_fee", terminal_id=terminal_id),
            reply("utter_deposit_after_deregistration", terminal_id=terminal_id, deposit=199),
            confirmation_question())


@pytest.mark.parametrize("typed, terminal_id, confirmed", [
    ("先不注销", "E2E00002", False),  # the buttons' titles, typed
    ("确认注销！", "E2E00003", True),
    ("不注销了", "E2E00004", False),  # other words for the same decision
    ("可以注销", "E2E00005", True),
])
def test_typed_answers_to_the_confirmation_work_like_its_buttons(bot, typed, terminal_id, confirmed):
    # The question offers the buttons 确认注销 and 先不注销; merchants often type instead.
    registry = add_active_terminal(bot, terminal_id, "7788", fee=0)
    sender = new_sender()
    bot.texts(sender, f"申请注销终端{terminal_id}")
    texts = bot.texts(sender, "7788")
    assert_turn(texts, *offer(terminal_id))
    texts = bot.texts(sender, typed)
    request_id = registry.status(terminal_id).request_id
    if confirmed:
        completes = holidays.completes_on(TODAY)
        response = ("utter_deregistration_submitted_estimate" if completes.is_estimate
                    else "utter_deregistration_submitted")
        assert request_id
        assert_said(texts, response, terminal_id=terminal_id, request_id=request_id,
                    completes_on=completes.date.isoformat())
    else:
        assert_said(texts, "utter_deregistration_cancelled", terminal_id=terminal_id)
        assert request_id is None
    assert stored_user_texts(bot, sender)[-1] == typed


def test_a_question_at_the_confirmation_is_answered_and_the_question_asked_again(bot):
    registry = add_active_terminal(bot, "E2E00006", "7788", fee=0)
    sender = new_sender()
    bot.texts(sender, "申请注销终端E2E00006")
    bot.texts(sender, "7788")
    texts = bot.texts(sender, "不注销会怎么样")
    assert_turn(texts, reply("utter_need_deregister"), *offer("E2E00006"))
    assert registry.status("E2E00006").request_id is None


FAQ_OPTIONS = {
    key: label
    for key, label in DOMAIN["responses"]["utter_clarify_options"][0]["custom"]["options"].items()
    if key.startswith("faq/")
}


@pytest.mark.parametrize("key", sorted(FAQ_OPTIONS))
def test_clarification_buttons_for_article_topics_lead_to_their_answer(bot, key):
    # These buttons send their label as the message, so the label must be understood.
    assert_said(bot.texts(new_sender(), FAQ_OPTIONS[key]), f"utter_{key}")
