"""Near copies between training data and an evaluation set.

Two utterances are near copies when, after the pipeline's normalisation (full-width,
traditional script), lower case and without punctuation or spaces:
- they are within 2 edits (insertions, deletions, substitutions) of each other, and
  fewer edits than the shorter one's length (so 88/886 and 转人工/转接人工 are near
  copies, while two different two-character words such as 押金/注销 are not); or
- one contains the other and is at least half as long (thx/thx啦).
"""
import re
from typing import Dict, Iterable, List, Tuple

from lakala_nlu.text import normalize, within_distance

_IGNORED = re.compile(r"[\s\W_]+")
MAX_EDITS = 2


def key(text: str) -> str:
    return _IGNORED.sub("", normalize(text).lower())


def near_copy(a: str, b: str) -> bool:
    """Whether two normalised keys are near copies (see the module's docstring)."""
    if not a or not b:
        return False
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    if short in long_ and 2 * len(short) >= len(long_):
        return True
    return within_distance(a, b, min(MAX_EDITS, len(short) - 1))


def near_copies(evaluation: Iterable[str], training: Iterable[str]) -> List[Tuple[str, str]]:
    """(evaluation utterance, training utterance) pairs that are near copies."""
    by_length: Dict[int, List[Tuple[str, str]]] = {}
    for text in training:
        k = key(text)
        if k:
            by_length.setdefault(len(k), []).append((k, text))
    found = []
    for text in evaluation:
        k = key(text)
        if not k:
            continue
        lengths = range(max(1, (len(k) + 1) // 2), 2 * len(k) + 1)
        for length in lengths:
            for other_key, other in by_length.get(length, ()):
                if near_copy(k, other_key):
                    found.append((text, other))
                    break
            else:
                continue
            break
    return found
