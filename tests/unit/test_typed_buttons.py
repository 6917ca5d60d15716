"""A typed button title is read as the button's payload, only for buttons just offered.

What Rasa's processor, with the trained model, makes of typed titles and commands is tested
in tests/e2e/test_typed_buttons.py."""
from rasa.shared.core.events import ActionExecuted, BotUttered, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from lakala_server.typed_buttons import normalized, offered_buttons, typed_button_payload

CONFIRM = [{"title": "确认注销", "payload": "/affirm"}, {"title": "先不注销", "payload": "/deny"}]
NEXT_STEPS = [{"title": "查询终端状态", "payload": "/check_terminal_status"}]


def tracker(*events):
    return DialogueStateTracker.from_events("unit", list(events))


def after_question():
    return tracker(
        ActionExecuted("action_listen"),
        UserUttered("5566", {"name": "inform", "confidence": 1.0}),
        BotUttered("现在注销不收违约金。"),
        BotUttered("确认要注销吗？", data={"buttons": CONFIRM}),
        ActionExecuted("action_listen"),
    )


def test_buttons_offered_since_the_last_user_message_in_order():
    events = [
        BotUttered("押金可以退。", data={"buttons": NEXT_STEPS}),
        UserUttered("我要注销"),
        BotUttered("第一条", data={"buttons": CONFIRM[:1]}),
        BotUttered("没有按钮"),
        BotUttered("第二条", data={"buttons": CONFIRM[1:]}),
    ]
    assert offered_buttons(events) == CONFIRM
    assert offered_buttons(events + [UserUttered("好")]) == []


def test_typed_titles_give_the_payload():
    state = after_question()
    assert typed_button_payload(state, "先不注销") == "/deny"
    assert typed_button_payload(state, "  确认注销！ ") == "/affirm"
    assert typed_button_payload(state, "确认注销。") == "/affirm"
    assert normalized("ＯＫ！") == "OK"


def test_other_texts_are_left_to_the_nlu():
    state = after_question()
    for text in ["先不注销吧", "注销", "查询终端状态", "/deny", "", None, "   "]:
        assert typed_button_payload(state, text) is None, text
    # A title offered earlier, before the user's last message, no longer counts.
    answered = tracker(*after_question().events, UserUttered("押金呢"))
    assert typed_button_payload(answered, "先不注销") is None
