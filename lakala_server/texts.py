"""What the channels themselves say (the apology for a failed turn, the rate-limit notice, a
refused web session, WeChat's own texts): responses of the domain, like everything a user
reads. In the running server they come from the Domain Rasa loaded with the model (`use`, at
start); outside it (tools, unit tests) from the repository's domain files, loaded by Rasa's
own loader (lakala_common/settings.py `domain_path`), never from the working directory.
"""
import copy
import functools
from typing import Any, Dict, List, Optional

from rasa.shared.core.domain import Domain

from lakala_common.settings import domain_path

_loaded: Optional[Domain] = None


def use(domain: Optional[Domain]) -> None:
    """The server's start hook hands over the Domain of the model it loaded."""
    global _loaded
    if domain is not None and domain.responses:
        _loaded = domain


@functools.lru_cache(maxsize=1)
def _domain_from_files() -> Domain:
    return Domain.load(str(domain_path()))


def domain() -> Domain:
    return _loaded or _domain_from_files()


def responses() -> Dict[str, List[Dict[str, Any]]]:
    return domain().responses


def response(name: str) -> Dict[str, Any]:
    """The first variation of response `name`, without its condition; a copy the caller may change."""
    found = responses().get(name)
    if found is None:  # a channel's own text, newer than the model the server loaded
        found = _domain_from_files().responses[name]
    variation = copy.deepcopy(found[0])
    variation.pop("condition", None)
    return variation
