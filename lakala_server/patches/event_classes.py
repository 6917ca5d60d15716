"""Replaces `Event.resolve_by_type` (rasa/shared/core/events.py).

Why: reading a conversation turns every stored event back into an object, and Rasa finds each
event's class by walking all subclasses of Event, every time. The class found for a type name
is remembered.

Proved by: tests/unit/test_patches.py::test_event_classes_resolve_as_in_rasa.
"""
from typing import Dict, Optional

from rasa.shared.core.events import Event

RASA_RESOLVE_BY_TYPE = Event.resolve_by_type
_event_classes: Dict[str, type] = {}


def _cached_resolve_by_type(type_name: str, default: Optional[type] = None) -> Optional[type]:
    cls = _event_classes.get(type_name)
    if cls is None:
        cls = RASA_RESOLVE_BY_TYPE(type_name, default)
        if cls is not None and cls is not default:
            _event_classes[type_name] = cls
    return cls


def install() -> None:
    Event.resolve_by_type = staticmethod(_cached_resolve_by_type)  # type: ignore[method-assign]
