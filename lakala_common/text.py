"""The one text normaliser of the project, shared by the NLU, typed buttons, WeChat options
and the actions (the action server imports this, not the NLU package).

`normalize` keeps one output character per input character, so entity offsets annotated on
the original text stay valid after normalisation. `normalized` is the form in which a typed
answer is compared with a button title, an option or a short yes/no. `compact_code` is the
form of a typed terminal number or phone tail.
"""
import functools
import re
import unicodedata
from typing import Optional

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_TRAILING_PUNCTUATION = "。.!?~～"  # after normalize, which makes full-width marks half-width
_SPACES = re.compile(r"\s+")
_CODE_SEPARATORS = re.compile(r"[\s\-_]")


@functools.lru_cache(maxsize=1)
def _t2s():
    from opencc import OpenCC

    return OpenCC("t2s")


def _to_halfwidth(char: str) -> str:
    folded = unicodedata.normalize("NFKC", char)
    return folded if len(folded) == 1 else char


@functools.lru_cache(maxsize=8192)
def _simplify_char(char: str) -> str:
    converted = _t2s().convert(char)
    return converted if len(converted) == 1 else char


def to_simplified(text: str) -> str:
    """Traditional -> simplified Chinese, phrase-aware where lengths allow."""
    if not _CJK.search(text):
        return text
    converted = _t2s().convert(text)
    if len(converted) == len(text):
        return converted
    return "".join(_simplify_char(c) for c in text)


def normalize(text: Optional[str]) -> str:
    """Full-width -> half-width and traditional -> simplified, same length."""
    if not text:
        return ""
    return to_simplified("".join(_to_halfwidth(c) for c in text))


def normalized(text: Optional[str]) -> str:
    """The form in which a typed answer and a button title are compared: normalised, without
    spaces or final punctuation."""
    return _SPACES.sub("", normalize(text)).rstrip(_TRAILING_PUNCTUATION)


def compact_code(text: Optional[str]) -> str:
    """A typed code (terminal number, phone tail): normalised, upper-case, without spaces, dashes
    or underscores."""
    return _CODE_SEPARATORS.sub("", normalize(text)).upper()
