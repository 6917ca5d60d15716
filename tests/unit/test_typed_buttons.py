"""A typed button title is read as the button's payload, only for buttons just offered."""
import asyncio

from rasa.core.channels.channel import UserMessage
from rasa.core.processor import MessageProcessor
from rasa.shared.core.events import ActionExecuted, BotUttered, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from lakala_server import patches
from lakala_server.typed_buttons import normalized, offered_buttons, typed_button_payload

patches.install()  # as the server's start hook does: the processor below is Rasa's, patched

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


class RecordingProcessor(MessageProcessor):
    """Rasa's processor with the NLU step replaced by a record of what it was asked to parse."""

    def __init__(self):  # no model: only parse_message's routing is under test
        self.parsed = []
        self.http_interpreter = None

    def _parse_message_with_graph(self, message, tracker, only_output_properties=True):
        self.parsed.append(message.text)
        return {"text": message.text, "intent": {"name": "nlu", "confidence": 1.0}, "entities": []}

    def _check_for_unseen_features(self, parse_data):
        pass


def test_the_server_parses_the_payload_and_keeps_the_typed_words():
    processor = RecordingProcessor()
    message = UserMessage("先不注销", sender_id="unit")
    parse_data = asyncio.run(processor.parse_message(message, after_question()))
    assert processor.parsed == ["/deny"]
    assert parse_data["text"] == "先不注销"
    assert message.text == "先不注销"
    parse_data = asyncio.run(processor.parse_message(UserMessage("先不注销吧"), after_question()))
    assert processor.parsed[-1] == "先不注销吧"
    # Without a conversation (the HTTP API's /model/parse) nothing is offered.
    asyncio.run(processor.parse_message(UserMessage("先不注销")))
    assert processor.parsed[-1] == "先不注销"


def test_a_typed_command_is_read_as_words_unless_it_is_an_offered_payload():
    processor = RecordingProcessor()
    for command in ["/restart", "/back", " /session_start ", "/deny_all", '/inform{"phone_tail": "6721"}', "/"]:
        parse_data = asyncio.run(processor.parse_message(UserMessage(command, input_channel="rest"), after_question()))
        assert not processor.parsed[-1].startswith("/"), command
        assert parse_data["text"] == command.strip()
    # The web chat opens every conversation with /greet; a greeting resets nothing.
    asyncio.run(processor.parse_message(UserMessage("/greet", input_channel="socketio")))
    assert processor.parsed[-1] == "/greet"
    # The web widget sends a clicked button's payload: that is exactly an offered payload.
    asyncio.run(processor.parse_message(UserMessage("/deny", input_channel="socketio"), after_question()))
    assert processor.parsed[-1] == "/deny"
    # No conversation, no offered buttons: /model/parse reads a command as words too.
    asyncio.run(processor.parse_message(UserMessage("/restart")))
    assert processor.parsed[-1] == "restart"
    # WeChat lets through only its offered options and the operator's menu keys.
    menu_click = UserMessage("/check_terminal_status", input_channel="wechat")
    asyncio.run(processor.parse_message(menu_click, after_question()))
    assert processor.parsed[-1] == "/check_terminal_status"
