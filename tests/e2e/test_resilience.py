"""Backends failing under a live conversation: the user is answered, never met with silence,
and a restart of the Rasa server loses nothing."""
import asyncio
import uuid

from tests.support.expect import assert_said, assert_turn, reply
from tests.support.servers import DOMAIN
from tests.support.webchat import Visitor, run

FAILURE = DOMAIN["responses"]["utter_backend_failed"][0]


def test_action_server_stopped_mid_conversation(bot):
    sender = f"e2e-{uuid.uuid4().hex[:10]}"
    assert_said(bot.texts(sender, "帮我查一下终端状态"), "utter_ask_terminal_id")
    assert_said(bot.texts(sender, "30091254"), "utter_ask_phone_tail")
    bot.actions.stop()
    try:
        assert_said(bot.texts(sender, "6721"), "utter_backend_failed")
        # Answers that need no backend keep working meanwhile.
        assert_said(bot.texts(f"e2e-{uuid.uuid4().hex[:10]}", "押金能退吗"), "utter_deposit")
    finally:
        bot.actions.start()
    # Once the backend is back, the same conversation carries on.
    assert_turn(bot.texts(sender, "6721"), reply("utter_status_active", terminal_id="30091254"),
                reply("utter_deposit_after_deregistration", terminal_id="30091254", deposit=299),
                reply("utter_fee_due", fee=200))


def test_a_failed_turn_is_answered_with_the_apology_on_rest_and_on_the_web_chat(bot):
    """Rasa logs a failed action call and goes on without a reply: both channels send the
    apology with its way to a human instead of silence."""
    sender = f"e2e-{uuid.uuid4().hex[:10]}"
    assert_said(bot.texts(sender, "帮我查一下终端状态"), "utter_ask_terminal_id")
    assert_said(bot.texts(sender, "30091254"), "utter_ask_phone_tail")

    async def web_chat_failure() -> None:
        tab, second_tab, elsewhere = Visitor(bot), Visitor(bot), Visitor(bot)
        session_id = await tab.join()
        await second_tab.join(session_id)
        await elsewhere.join()
        assert_said(await tab.say("查询终端状态"), "utter_ask_terminal_id")
        assert_said(await tab.say("K7306118"), "utter_ask_phone_tail")
        before = len(tab.answers)
        bot.actions.stop()
        try:
            rest = await asyncio.get_running_loop().run_in_executor(None, bot.send, sender, "6721")
            assert rest == [{"recipient_id": f"rest:{sender}", **FAILURE}]
            await tab.say("0839")
        finally:
            bot.actions.start()
        quick_replies = [{"content_type": "text", "title": button["title"], "payload": button["payload"]}
                         for button in FAILURE["buttons"]]
        assert tab.answers[before:] == [{"text": FAILURE["text"], "quick_replies": quick_replies}]
        assert second_tab.answers == tab.answers  # sent to the session's sockets
        assert elsewhere.answers == []  # and to no other
        for visitor in (tab, second_tab, elsewhere):
            await visitor.close()

    run(web_chat_failure())


def test_conversation_survives_a_rasa_restart(bot):
    sender = f"e2e-{uuid.uuid4().hex[:10]}"
    assert_said(bot.texts(sender, "帮我查一下终端状态"), "utter_ask_terminal_id")
    assert_said(bot.texts(sender, "K7306118"), "utter_ask_phone_tail")
    bot.rasa.stop()
    bot.rasa.start()
    assert_turn(bot.texts(sender, "0839"), reply("utter_status_dormant", terminal_id="K7306118"),
                reply("utter_deposit_after_deregistration", terminal_id="K7306118", deposit=99),
                reply("utter_fee_none", terminal_id="K7306118"))
