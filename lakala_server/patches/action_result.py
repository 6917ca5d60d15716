"""Replaces `RemoteAction._validate_action_result` (rasa/core/actions/action.py).

Why: Rasa checks every action-server response with `jsonschema.validate`, which first
validates the *schema* against the JSON Schema meta-schema, on every call; under load that
dominated the server's CPU time when profiled (bench/HISTORY.md). Here validators are built once. The schema says each
event is `oneOf` about twenty shapes, each fixing a different `event` name, so each event is
checked against the shape it names alone. A valid response passes as before; an invalid one
is handed to Rasa's own method, so the error is the same.

Proved by: tests/unit/test_patches.py::test_valid_action_responses_pass,
::test_invalid_action_responses_fail_with_rasas_message and
::test_fast_check_agrees_with_the_full_schema (every shape, against Rasa's full schema).
"""
import copy
import functools
from typing import Any, Dict, Optional, Tuple

from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from rasa.core.actions.action import RemoteAction

RASA_VALIDATE = RemoteAction._validate_action_result


@functools.lru_cache(maxsize=1)
def action_response_validator() -> Validator:
    schema = RemoteAction.action_response_format_spec()
    cls = validator_for(schema)
    cls.check_schema(schema)  # once, instead of once per response
    return cls(schema)


@functools.lru_cache(maxsize=1)
def event_validators() -> Optional[Tuple[Validator, Dict[str, Validator]]]:
    """(validator for the response without the events' oneOf, one validator per event
    name for that name's shape), or None if the schema is not shaped that way."""
    schema = copy.deepcopy(RemoteAction.action_response_format_spec())
    items = schema.get("properties", {}).get("events", {}).get("items", {})
    shapes = items.pop("oneOf", None)
    if not isinstance(shapes, list):
        return None
    names = [shape.get("properties", {}).get("event", {}).get("const") for shape in shapes]
    if any(not isinstance(name, str) for name in names) or len(set(names)) != len(names):
        return None
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema), {name: cls({**items, "allOf": [shape]}) for name, shape in zip(names, shapes, strict=True)}


def is_valid_action_result(result: Any) -> bool:
    validators = event_validators()
    if validators is None:
        return best_match(action_response_validator().iter_errors(result)) is None
    outer, shapes = validators
    if not outer.is_valid(result):
        return False
    for event in result.get("events") or []:
        shape = shapes.get(event.get("event"))
        if shape is None or not shape.is_valid(event):
            return False
    return True


def _validate_action_result(self: RemoteAction, result: Dict[str, Any]) -> bool:
    if is_valid_action_result(result):
        return True
    return RASA_VALIDATE(self, result)  # raises Rasa's ValidationError


def install() -> None:
    RemoteAction._validate_action_result = _validate_action_result  # type: ignore[method-assign]

