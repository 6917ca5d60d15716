"""Rasa's own message processor with the trained model (models/lakala.tar.gz) and the project's
patches, as the server runs it: a typed button title is parsed as the button's payload and a
typed command as words, while the user's own words stay in the conversation."""
from typing import Any, Dict

import pytest
from rasa.core.agent import Agent
from rasa.core.channels.channel import UserMessage

from lakala_server import patches
from tests.support.servers import MODEL
from tests.support.webchat import run
from tests.unit.test_typed_buttons import after_question


@pytest.fixture(scope="module")
def processor():
    if not MODEL.exists():
        pytest.fail("no trained model: run `make train` (make e2e does)")
    patches.install()  # as the server's start hook does
    return Agent.load(str(MODEL)).processor


def parse(processor, message: UserMessage, tracker=None) -> Dict[str, Any]:
    return run(processor.parse_message(message, tracker))


def as_payload(parse_data: Dict[str, Any], intent: str) -> bool:
    """Parsed as the payload /<intent> (Rasa's certain, single-intent reading), not by the classifier."""
    return parse_data["intent"] == {"name": intent, "confidence": 1.0} and [
        ranked["name"] for ranked in parse_data["intent_ranking"]] == [intent]


def as_words(parse_data: Dict[str, Any]) -> bool:
    """Classified by the trained model: a ranking of the domain's intents."""
    return len(parse_data["intent_ranking"]) > 1


def test_the_server_parses_the_payload_and_keeps_the_typed_words(processor):
    message = UserMessage("先不注销", sender_id="unit")
    parse_data = parse(processor, message, after_question())
    assert as_payload(parse_data, "deny")
    assert parse_data["text"] == "先不注销"
    assert message.text == "先不注销"
    parse_data = parse(processor, UserMessage("先不注销吧"), after_question())
    assert as_words(parse_data) and parse_data["text"] == "先不注销吧"
    # Without a conversation (the HTTP API's /model/parse) nothing is offered.
    parse_data = parse(processor, UserMessage("先不注销"))
    assert as_words(parse_data) and parse_data["text"] == "先不注销"


def test_a_typed_command_is_read_as_words_unless_it_is_an_offered_payload(processor):
    for command in ["/restart", "/back", " /session_start ", "/deny_all", '/inform{"phone_tail": "6721"}', "/"]:
        parse_data = parse(processor, UserMessage(command, input_channel="rest"), after_question())
        assert as_words(parse_data), command
        assert parse_data["text"] == command.strip()
    # The web chat opens every conversation with /greet; a greeting resets nothing.
    assert as_payload(parse(processor, UserMessage("/greet", input_channel="socketio")), "greet")
    # The web widget sends a clicked button's payload: that is exactly an offered payload.
    assert as_payload(parse(processor, UserMessage("/deny", input_channel="socketio"), after_question()), "deny")
    # No conversation, no offered buttons: /model/parse reads a command as words too.
    parse_data = parse(processor, UserMessage("/restart"))
    assert as_words(parse_data) and parse_data["text"] == "/restart"
    # WeChat lets through only its offered options and the operator's menu keys.
    menu_click = UserMessage("/check_terminal_status", input_channel="wechat")
    assert as_payload(parse(processor, menu_click, after_question()), "check_terminal_status")
