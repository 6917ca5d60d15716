"""Keeps phone tails out of the conversation store: the digits a merchant types to
verify a terminal are masked before events are written."""
import copy
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional

from rasa.shared.core.events import Event, SlotSet, UserUttered

PHONE_TAIL = "phone_tail"
MASK = "****"
FOUR_DIGITS = re.compile(r"(?<!\d)\d{4}(?!\d)")


def _mask_text(text: Optional[str]) -> Optional[str]:
    return FOUR_DIGITS.sub(MASK, text) if text else text


def redact_event_dict(data: Dict[str, Any], phone_tail_requested: bool) -> Dict[str, Any]:
    """A copy of a serialised event with any phone tail masked."""
    data = copy.deepcopy(data)
    kind = data.get("event")
    if kind == "slot" and data.get("name") == PHONE_TAIL and FOUR_DIGITS.search(str(data.get("value") or "")):
        data["value"] = MASK
    elif kind == "user":
        parse = data.get("parse_data") or {}
        entities: List[Dict[str, Any]] = list(data.get("entities") or []) + list(parse.get("entities") or [])
        has_tail = any(entity.get("entity") == PHONE_TAIL for entity in entities)
        if has_tail or phone_tail_requested:
            data["text"] = _mask_text(data.get("text"))
            if parse:
                parse["text"] = _mask_text(parse.get("text"))
            for entity in entities:
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
                masked = redact_event_dict(data, requested == PHONE_TAIL)
                yield event if masked == data else Event.from_parameters(masked)
            else:
                yield event
        if isinstance(event, SlotSet) and event.key == "requested_slot":
            requested = event.value
