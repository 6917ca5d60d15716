"""A button's title typed as text counts as a click on that button, on every channel.

Merchants often type what a button says instead of tapping it ("先不注销" under the
deregistration question). The classifier reads such a text as a sentence and may pick
another intent; the bot itself offered the words, so it should understand them exactly.
Before the NLU runs, the text is compared with the titles of the buttons the bot sent since
the user's last message; on a match the button's payload is parsed instead, as a click
would send it. The user's own words stay in the conversation. Anything else goes to the
NLU as before. WeChat also accepts an option's number (lakala_server/wechat/render.py). The rule
is applied before the NLU by lakala_server/patches/typed_commands.py.

The other way round, a typed "/intent" (Rasa's payload syntax: /restart, /back,
/session_start, /affirm) counts as a click only when it is exactly the payload of a button
just offered. Anything else starting with "/" is read as words, so a user cannot reset,
undo or answer the conversation by typing commands. The WeChat channel sends only payloads
of offered options and of the operator's menu, and refuses typed ones itself.
"""
import functools
from typing import Any, Dict, List, Optional, Reversible

from rasa.core.channels.channel import UserMessage
from rasa.shared.core.events import BotUttered, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker

from lakala_common.text import normalized

MAX_TITLE_CHARS = 40  # longer than any button title with spaces and punctuation around it
COMMAND_PREFIX = "/"


_normalized_title = functools.lru_cache(maxsize=1024)(normalized)  # titles come from domain.yml


def offered_buttons(events: Reversible[Any]) -> List[Dict[str, Any]]:
    """The buttons of the bot's messages after the user's last message, in the order sent."""
    buttons: List[Dict[str, Any]] = []
    for event in reversed(events):
        if isinstance(event, UserUttered):
            break
        if isinstance(event, BotUttered):
            buttons[:0] = event.data.get("buttons") or []
    return buttons


def button_titled(text: Optional[str], buttons: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The button (with a payload) whose title `text` is, typed in any width, script or
    spacing, if there is one. The one rule for typed titles, on every channel."""
    if not buttons or not text or len(text) > MAX_TITLE_CHARS:
        return None  # a long paste is no title, and is not normalised here character by character
    answer = normalized(text)
    if not answer or answer.startswith(COMMAND_PREFIX):
        return None
    for button in buttons:
        payload = str(button.get("payload") or "").strip()
        if payload and _normalized_title(str(button.get("title") or "")) == answer:
            return button
    return None


def typed_button_payload(tracker: DialogueStateTracker, text: Optional[str]) -> Optional[str]:
    """The payload of the offered button whose title is `text`, if there is one."""
    button = button_titled(text, offered_buttons(tracker.events))
    return str(button["payload"]).strip() if button is not None else None


# Channels that let a "/…" through only from their own options or menu.
CHANNELS_FILTERING_PAYLOADS = frozenset({"wechat"})
# The web chat opens every conversation with this payload (web/lakala-chat.js initPayload), as
# WeChat does on follow; a greeting changes nothing, so it is accepted from anyone.
HARMLESS_PAYLOADS = frozenset({"/greet"})


def refused_command(tracker: Optional[DialogueStateTracker], message: UserMessage) -> bool:
    """Whether `message` is a typed "/…" that is not the payload of a button just offered."""
    text = (message.text or "").strip()
    if not text.startswith(COMMAND_PREFIX) or message.input_channel in CHANNELS_FILTERING_PAYLOADS:
        return False
    if text in HARMLESS_PAYLOADS:
        return False
    offered = offered_buttons(tracker.events) if tracker is not None else []
    return all(str(button.get("payload") or "").strip() != text for button in offered)
