"""Matching the bot's replies against domain.yml responses."""
import re
from typing import Any, List

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


def said(texts: List[str], response: str, **values: Any) -> bool:
    regex = pattern(response, **values)
    return any(regex.match(text) for text in texts)


def assert_said(texts: List[str], response: str, **values: Any) -> None:
    assert said(texts, response, **values), f"expected {response} {values}, got {texts}"
