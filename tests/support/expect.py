"""Matching the bot's replies against domain.yml responses.

A turn is checked whole: `assert_said(texts, "utter_x")` passes only when the turn said exactly
that one message, and `assert_turn(texts, reply("utter_a"), reply("utter_b", fee=200))` only
when it said exactly those messages, in that order. An extra, missing or different message
in the same turn fails."""
import re
from typing import Any, Dict, List, NamedTuple

from tests.support.servers import DOMAIN, POLICY_VALUES


def pattern(response: str, **values: Any) -> "re.Pattern[str]":
    """A regex for a response: given values must appear as given, others are any text."""
    template = DOMAIN["responses"][response][0]["text"]
    merged = {**POLICY_VALUES, **{k: str(v) for k, v in values.items()}}
    parts, last = [], 0
    for match in re.finditer(r"\{(\w+)\}", template):
        parts.append(re.escape(template[last:match.start()]))
        name = match.group(1)
        parts.append(re.escape(merged[name]) if name in merged else r".+?")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("^" + "".join(parts) + "$", re.S)


class Reply(NamedTuple):
    """One message a turn should say: a domain response and the values it must carry."""

    response: str
    values: Dict[str, Any]


def reply(response: str, **values: Any) -> Reply:
    return Reply(response, values)


def says(texts: List[str], *expected: Reply) -> bool:
    """Whether the turn's messages are exactly `expected`, in order."""
    return len(texts) == len(expected) and all(
        pattern(response, **values).match(text) for text, (response, values) in zip(texts, expected, strict=False)
    )


def said(texts: List[str], response: str, **values: Any) -> bool:
    """Whether the turn said exactly one message, this response."""
    return says(texts, reply(response, **values))


def assert_turn(texts: List[str], *expected: Reply) -> None:
    assert says(texts, *expected), f"expected exactly {list(expected)}, got {texts}"


def assert_said(texts: List[str], response: str, **values: Any) -> None:
    assert_turn(texts, reply(response, **values))
