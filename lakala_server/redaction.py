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


def _entities(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    return list(data.get("entities") or []) + list((data.get("parse_data") or {}).get("entities") or [])


def _may_hold_tail(data: Dict[str, Any], phone_tail_requested: bool) -> bool:
    kind = data.get("event")
    if kind == "slot":
        return data.get("name") == PHONE_TAIL and bool(FOUR_DIGITS.search(str(data.get("value") or "")))
    if kind == "user":
        return phone_tail_requested or any(entity.get("entity") == PHONE_TAIL for entity in _entities(data))
    return False


def redact_event_dict(data: Dict[str, Any], phone_tail_requested: bool) -> Dict[str, Any]:
    """The serialised event with any phone tail masked: a copy if something may be masked,
    else the same dict (most events: copying every one was a fiftieth of the server's time)."""
    if not _may_hold_tail(data, phone_tail_requested):
        return data
    data = copy.deepcopy(data)
    kind = data.get("event")
    if kind == "slot":
        data["value"] = MASK
    elif kind == "user":  # a tail was asked for, or one was recognised
        parse = data.get("parse_data") or {}
        data["text"] = _mask_text(data.get("text"))
        if parse:
            parse["text"] = _mask_text(parse.get("text"))
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
                masked = redact_event_dict(data, requested == PHONE_TAIL)
                yield event if masked is data or masked == data else Event.from_parameters(masked)
            else:
                yield event
        if isinstance(event, SlotSet) and event.key == "requested_slot":
            requested = event.value
