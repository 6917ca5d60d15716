"""Keeps phone tails and phone numbers out of the conversation store: what a merchant
types to verify a terminal is masked before events are written.

Masked, in the text of user messages and in slot values:
- a phone number (11 digits starting with 1, or with the country code 86 / 0086) anywhere;
- four digits while the bot asks for the phone tail, typed with spaces or full-width too
  (6721, 67 21, ６７２１);
- four to seven digits while the bot asks for the terminal number (a tail typed too early,
  which the form would otherwise keep in the terminal_id slot);
- the phone_tail slot, and a terminal_id slot value that is not a terminal number.
Terminal numbers themselves are not secret and stay readable. So is the verified-terminal
marker, which the action server signs and no merchant types: its MAC is hex, and a run of
digits in it that looks like a phone number must not be masked, or the marker stops matching.
"""
import copy
import re
import unicodedata
from typing import Any, Dict, Iterable, Iterator, List, Optional

from rasa.shared.core.events import Event, SlotSet, UserUttered

from lakala_common.log_masking import DIGIT_RUN

PHONE_TAIL = "phone_tail"
TERMINAL_ID = "terminal_id"
# Slots only the action server sets, in a fixed format that holds no merchant text.
SIGNED_SLOTS = frozenset({"verified_terminal"})
MASK = "****"
TERMINAL_ID_RE = re.compile(r"[0-9A-Za-z]{8}")


def _digits(run: str) -> str:
    return "".join(unicodedata.normalize("NFKC", run).replace("-", " ").split())


def _masked_run(run: str, requested: Optional[str]) -> bool:
    digits = _digits(run)
    if len(digits) == 11 and digits.startswith("1"):
        return True  # a mobile phone number
    if (len(digits) == 13 and digits.startswith("861")) or (len(digits) == 15 and digits.startswith("00861")):
        return True  # the same with China's country code (+86 13800138000)
    if requested == PHONE_TAIL:
        return len(digits) == 4
    if requested == TERMINAL_ID:
        return 4 <= len(digits) < 8
    return False


def _mask_text(text: Optional[str], requested: Optional[str]) -> Optional[str]:
    if not text:
        return text
    return DIGIT_RUN.sub(lambda m: MASK if _masked_run(m.group(0), requested) else m.group(0), text)


def _entities(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    return list(data.get("entities") or []) + list((data.get("parse_data") or {}).get("entities") or [])


def _slot_needs_mask(name: Any, value: Any) -> bool:
    text = str(value or "")
    if name in SIGNED_SLOTS or not DIGIT_RUN.search(text):
        return False
    if name == PHONE_TAIL:
        return True
    if name == TERMINAL_ID:
        return not TERMINAL_ID_RE.fullmatch(text.replace("-", "").replace(" ", ""))
    return _mask_text(text, None) != text


def _may_hold_tail(data: Dict[str, Any], requested: Optional[str]) -> bool:
    kind = data.get("event")
    if kind == "slot":
        return _slot_needs_mask(data.get("name"), data.get("value"))
    if kind == "user":
        text = data.get("text") or ""
        return (_mask_text(text, requested) != text
                or any(entity.get("entity") == PHONE_TAIL for entity in _entities(data)))
    return False


def redact_event_dict(data: Dict[str, Any], requested: Optional[str] = None) -> Dict[str, Any]:
    """The serialised event with phone tails and numbers masked (`requested`: the slot the
    bot was asking for): a copy if something is masked, else the same dict (most events:
    copying every one cost time on every save)."""
    if not _may_hold_tail(data, requested):
        return data
    data = copy.deepcopy(data)
    kind = data.get("event")
    if kind == "slot":
        name, value = data.get("name"), data.get("value")
        if name in (PHONE_TAIL, TERMINAL_ID) or not isinstance(value, str):
            data["value"] = MASK
        else:  # free text (a callback's topic): only the number in it
            data["value"] = _mask_text(value, None)
    elif kind == "user":
        parse = data.get("parse_data") or {}
        data["text"] = _mask_text(data.get("text"), requested)
        if parse:
            parse["text"] = _mask_text(parse.get("text"), requested)
        for entity in _entities(data):
            if entity.get("entity") == PHONE_TAIL:
                entity["value"] = MASK
    return data


def redact(all_events: Iterable[Event], new_events: Iterable[Event]) -> Iterator[Event]:
    """Yields the new events, masked, knowing from all events when a tail was being asked for.
    Only user messages and slots can hold a tail; other events pass through as they are."""
    new_ids = {id(event) for event in new_events}
    requested: Optional[str] = None
    for event in all_events:
        if id(event) in new_ids:
            if isinstance(event, UserUttered | SlotSet):
                data = event.as_dict()
                masked = redact_event_dict(data, requested)
                yield event if masked is data or masked == data else Event.from_parameters(masked)
            else:
                yield event
        if isinstance(event, SlotSet) and event.key == "requested_slot":
            requested = event.value
