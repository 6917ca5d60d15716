"""Backends failing under a live conversation: the user is answered, never met with silence,
and a restart of the Rasa server loses nothing."""
import uuid

from tests.support.expect import assert_said


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
    assert_said(bot.texts(sender, "6721"), "utter_status_active", terminal_id="30091254")


def test_conversation_survives_a_rasa_restart(bot):
    sender = f"e2e-{uuid.uuid4().hex[:10]}"
    assert_said(bot.texts(sender, "帮我查一下终端状态"), "utter_ask_terminal_id")
    assert_said(bot.texts(sender, "K7306118"), "utter_ask_phone_tail")
    bot.rasa.stop()
    bot.rasa.start()
    assert_said(bot.texts(sender, "0839"), "utter_status_dormant", terminal_id="K7306118")
