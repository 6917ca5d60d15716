"""Replaces `Domain.is_empty` (rasa/shared/core/domain.py).

Why: before each message's NLU result is used, Rasa asks whether the domain is empty by
building an empty domain and comparing both as dicts, a cost paid on every message. A domain
with responses is not empty (its dict differs in that key); only a domain without any is
compared Rasa's way.

Proved by: tests/unit/test_patches.py::test_domain_emptiness_is_rasas_answer.
"""
from rasa.shared.core.domain import Domain

RASA_IS_EMPTY = Domain.is_empty


def _is_empty(self: Domain) -> bool:
    if self.responses:
        return False  # Domain.empty() has none, so the dicts Rasa compares differ
    return RASA_IS_EMPTY(self)


def install() -> None:
    Domain.is_empty = _is_empty  # type: ignore[method-assign]
