"""What the NLU pipeline asks of a message's text: its length, whether it says anything, whether
it is Chinese. The normalisation itself (half-width, simplified) is lakala_common/text.py,
shared with the actions, typed buttons and WeChat options; it is imported from here too.
"""
import re
from typing import Optional

from lakala_common.text import normalize, to_simplified  # noqa: F401  (the one normaliser)

MAX_MESSAGE_CHARS = 300

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_MEANINGFUL = re.compile(r"[0-9A-Za-z\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text or ""))


def is_meaningless(text: Optional[str]) -> bool:
    """True for empty messages and messages of only emoji, punctuation or spaces."""
    return not _MEANINGFUL.search(text or "")


def is_too_long(text: Optional[str]) -> bool:
    return len(text or "") > MAX_MESSAGE_CHARS


def is_foreign_sentence(text: Optional[str]) -> bool:
    """A Latin-script sentence of three or more words with no Chinese in it, most of them
    neither pinyin ("pos ji zen me zhu xiao") nor words of the English lexicon ("deposit")."""
    text = text or ""
    if has_cjk(text):
        return False
    words = _LATIN_WORD.findall(text[:MAX_MESSAGE_CHARS])
    if len(words) < 3:
        return False
    from lakala_nlu.pinyin import is_pinyin_or_known

    unknown = sum(not is_pinyin_or_known(word) for word in words)
    return unknown * 2 > len(words)


def input_issue(text: Optional[str]) -> Optional[str]:
    """Names what is wrong with a message before any model looks at it."""
    if is_meaningless(text):
        return "empty"
    if is_too_long(text):
        return "too_long"
    if is_foreign_sentence(text):
        return "foreign"
    return None


def within_distance(a: str, b: str, limit: int) -> bool:
    """Levenshtein distance of a and b <= limit, in O(len * limit)."""
    if abs(len(a) - len(b)) > limit:
        return False
    if a == b:
        return True
    if limit == 0:
        return False
    if len(a) > len(b):
        a, b = b, a
    big = limit + 1
    previous = [j if j <= limit else big for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        low, high = max(1, i - limit), min(len(b), i + limit)
        current = [big] * (len(b) + 1)
        current[0] = i if i <= limit else big
        best = current[0]
        char = a[i - 1]
        for j in range(low, high + 1):
            cost = previous[j - 1] + (char != b[j - 1])
            cost = min(cost, previous[j] + 1, current[j - 1] + 1)
            current[j] = cost if cost <= limit else big
            best = min(best, current[j])
        if best > limit:
            return False
        previous = current
    return previous[len(b)] <= limit
