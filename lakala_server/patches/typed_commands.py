"""Wraps `MessageProcessor.parse_message` (rasa/core/processor.py).

Why: Rasa reads any text starting with "/" as a payload, so a user could type /restart or
/session_start and reset a verification. Rasa has no hook between a channel's text and the
NLU that sees the conversation, so the two rules of lakala_server/typed_buttons.py are
applied here: a typed "/…" that is not an offered button's payload is parsed as words, and
an offered button's title typed as text is parsed as that button's payload. The user's own
words stay in the conversation (`parse_data["text"]`). Every other text is parsed by Rasa's
own method, unchanged.

Proved by: tests/e2e/test_typed_buttons.py::test_the_server_parses_the_payload_and_keeps_the_typed_words
and ::test_a_typed_command_is_read_as_words_unless_it_is_an_offered_payload (Rasa's own
processor with the trained model), and tests/security/test_guessing.py::
test_typed_commands_do_not_reset_a_conversations_tries against the real server.
"""
import copy
from typing import Any, Dict, Optional

from rasa.core.channels.channel import UserMessage
from rasa.core.processor import MessageProcessor
from rasa.shared.core.trackers import DialogueStateTracker

from lakala_server.typed_buttons import COMMAND_PREFIX, refused_command, typed_button_payload

RASA_PARSE_MESSAGE = MessageProcessor.parse_message


async def _parse_message_with_buttons(
    self: MessageProcessor,
    message: UserMessage,
    tracker: Optional[DialogueStateTracker] = None,
    only_output_properties: bool = True,
) -> Dict[str, Any]:
    if refused_command(tracker, message):
        as_words = copy.copy(message)
        as_words.text = (message.text or "").strip().lstrip(COMMAND_PREFIX).strip() or "？"
        parse_data = await RASA_PARSE_MESSAGE(self, as_words, tracker, only_output_properties)
        parse_data["text"] = message.text
        return parse_data
    payload = typed_button_payload(tracker, message.text) if tracker is not None else None
    if payload is None:
        return await RASA_PARSE_MESSAGE(self, message, tracker, only_output_properties)
    clicked = copy.copy(message)
    clicked.text = payload
    parse_data = await RASA_PARSE_MESSAGE(self, clicked, tracker, only_output_properties)
    parse_data["text"] = message.text
    return parse_data


def install() -> None:
    MessageProcessor.parse_message = _parse_message_with_buttons  # type: ignore[method-assign]
