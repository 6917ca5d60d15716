"""What a WeChat user reads: the bot's messages of one turn as one text, its buttons as
numbered options ("回复 1 …"), and the channel's own texts from domain.yml. A user picks an
option by its number (here) or by its title (typed_buttons.button_titled, the one rule for
typed titles on every channel)."""
import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from rasa.core.channels.channel import OutputChannel
from rasa.shared.core.domain import Domain
from rasa.shared.exceptions import InvalidConfigException, RasaException

from lakala_server import texts
from lakala_server.typed_buttons import button_titled, normalized

logger = logging.getLogger(__name__)

OPTION_NUMBER_RE = re.compile(r"[0-9]{1,3}")
OPTION_RESPONSE = "utter_wechat_option"
UNSUPPORTED_RESPONSE = "utter_wechat_unsupported"
VOICE_UNRECOGNIZED_RESPONSE = "utter_wechat_voice_unrecognized"
STILL_WORKING_RESPONSE = "utter_wechat_still_working"
HANDOFF_ENDED_RESPONSE = "utter_handoff_ended"


@dataclass(frozen=True)
class ChannelTexts:
    """What the channel itself says, taken from domain.yml."""

    option_line: str
    unsupported: str
    voice_unrecognized: str
    still_working: str
    options_ttl_seconds: float
    handoff_ended: str = ""


def load_texts(path: Optional[Path] = None) -> ChannelTexts:
    """The texts from the domain (lakala_server/texts.py), or from the domain file at `path`."""
    try:
        domain = Domain.load(str(path)) if path is not None else texts.domain()
        responses = domain.responses

        def text(name: str) -> str:
            return str(responses[name][0]["text"])

        minutes = float(domain.session_config.session_expiration_time or 60)
        return ChannelTexts(
            option_line=str(responses[OPTION_RESPONSE][0]["custom"]["line"]),
            unsupported=text(UNSUPPORTED_RESPONSE),
            voice_unrecognized=text(VOICE_UNRECOGNIZED_RESPONSE),
            still_working=text(STILL_WORKING_RESPONSE),
            options_ttl_seconds=minutes * 60,
            handoff_ended=text(HANDOFF_ENDED_RESPONSE),
        )
    except (OSError, KeyError, IndexError, TypeError, ValueError, RasaException) as error:
        raise InvalidConfigException(
            f"The WeChat channel needs the responses {OPTION_RESPONSE}, {UNSUPPORTED_RESPONSE}, "
            f"{VOICE_UNRECOGNIZED_RESPONSE}, {STILL_WORKING_RESPONSE} and {HANDOFF_ENDED_RESPONSE} "
            f"in {path or 'the domain'} "
            f"({type(error).__name__})."
        ) from None


@dataclass(frozen=True)
class Option:
    number: int
    title: str
    payload: str


def render(messages: List[Dict[str, Any]], option_line: str) -> Tuple[str, List[Option]]:
    """The bot's messages of one turn as one text, buttons numbered across the turn."""
    blocks: List[str] = []
    options: List[Option] = []
    for message in messages:
        lines = [str(message["text"]).strip()] if message.get("text") else []
        for button in message.get("buttons") or []:
            title = str(button.get("title") or "").strip()
            payload = str(button.get("payload") or "").strip()
            if not title or not payload:
                continue
            option = Option(len(options) + 1, title, payload)
            options.append(option)
            lines.append(option_line.replace("{number}", str(option.number)).replace("{title}", title))
        if lines:
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks), options


def resolve_option(text: str, options: List[Option]) -> Optional[Option]:
    """The option the user picked by its number or its title, if any."""
    answer = normalized(text)
    if OPTION_NUMBER_RE.fullmatch(answer):
        number = int(answer)
        return options[number - 1] if 1 <= number <= len(options) else None
    picked = button_titled(text, [dataclasses.asdict(option) for option in options])
    return Option(**picked) if picked is not None else None


class WeChatOutput(OutputChannel):
    """Collects one turn of bot messages; the input channel sends them as one WeChat reply."""

    @classmethod
    def name(cls) -> str:
        return "wechat"

    def __init__(self) -> None:
        self.messages: List[Dict[str, Any]] = []

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        self.messages.append({"text": text})

    async def send_text_with_buttons(
        self, recipient_id: str, text: str, buttons: List[Dict[str, Any]], **kwargs: Any
    ) -> None:
        self.messages.append({"text": text, "buttons": buttons})

    async def send_image_url(self, recipient_id: str, image: str, **kwargs: Any) -> None:
        self.messages.append({"text": image})

    async def send_attachment(self, recipient_id: str, attachment: str, **kwargs: Any) -> None:
        self.messages.append({"text": str(attachment)})

    async def send_custom_json(self, recipient_id: str, json_message: Dict[str, Any], **kwargs: Any) -> None:
        logger.debug("a custom payload has no WeChat form; not sent")
