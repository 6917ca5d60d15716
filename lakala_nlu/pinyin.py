"""A message read as toneless pinyin syllables, so that homophone typos (注消 = 注销,
押进 = 押金), pinyin typed without a Chinese input method ("zhuxiao", "pos ji zen me
zhu xiao") and the Chinese words themselves all give the same features.

- Chinese characters -> pypinyin's toneless reading (注消 -> zhu xiao).
- A Latin-letter run that splits into valid pinyin syllables -> those syllables
  ("taoxian" -> tao xian); the split with the fewest syllables wins.
- A Latin word in the English lexicon (lakala_nlu/english.txt) -> the pinyin of its
  Chinese meaning ("deposit" -> ya jin).
- Anything else Latin stays a lower-case word ("pos", "app"); digits and punctuation
  are dropped (terminal numbers come from the entity ruler, not from here).
"""
import functools
import re
import unicodedata
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional

ENGLISH_LEXICON = Path(__file__).with_name("english.txt")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[A-Za-z]+")
MAX_SYLLABLE = 6  # zhuang, shuang, chuang
MAX_LATIN_RUN = 40  # longer runs are not split (bounded work per word)


@functools.lru_cache(maxsize=1)
def syllables() -> FrozenSet[str]:
    """Every toneless pinyin syllable pypinyin knows, with ü written as v."""
    from pypinyin.pinyin_dict import pinyin_dict

    found = set()
    for readings in pinyin_dict.values():
        for reading in readings.split(","):
            plain = "".join(
                c for c in unicodedata.normalize("NFD", reading.replace("ü", "v")) if not unicodedata.combining(c)
            )
            if plain.isascii() and plain.isalpha():
                found.add(plain.lower())
    # Interjections pypinyin lists (m, n, ng, hm, hng) would split English words into noise.
    return frozenset(s for s in found if any(v in s for v in "aeiouv"))


@functools.lru_cache(maxsize=1)
def english_lexicon() -> Dict[str, str]:
    """English word -> Chinese word, from lakala_nlu/english.txt ('word<space>中文' lines)."""
    lexicon = {}
    for line in ENGLISH_LEXICON.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, chinese = line.split(maxsplit=1)
            lexicon[word.lower()] = chinese.strip()
    return lexicon


@functools.lru_cache(maxsize=4096)
def split_pinyin(word: str) -> Optional[List[str]]:
    """The word as pinyin syllables with the fewest syllables, or None if it is not pinyin."""
    word = word.lower()
    if not word or len(word) > MAX_LATIN_RUN:
        return None
    valid = syllables()
    best: List[Optional[List[str]]] = [[]] + [None] * len(word)
    for end in range(1, len(word) + 1):
        for start in range(max(0, end - MAX_SYLLABLE), end):
            head = best[start]
            if head is not None and word[start:end] in valid:
                if best[end] is None or len(head) + 1 < len(best[end]):
                    best[end] = head + [word[start:end]]
    return best[len(word)]


@functools.lru_cache(maxsize=8192)
def _hanzi_reading(run: str) -> List[str]:
    from pypinyin import Style, lazy_pinyin

    return [s.replace("ü", "v") for s in lazy_pinyin(run, style=Style.NORMAL, errors="ignore")]


def is_pinyin_or_known(word: str) -> bool:
    """True for a Latin word that is pinyin or in the English lexicon."""
    return word.lower() in english_lexicon() or split_pinyin(word) is not None


def to_pinyin(text: str) -> List[str]:
    """The text as a list of toneless syllables and lower-case Latin words."""
    out: List[str] = []
    for token in _TOKEN.findall(text or ""):
        if _CJK_RUN.fullmatch(token):
            out.extend(_hanzi_reading(token))
            continue
        lower = token.lower()
        chinese = english_lexicon().get(lower)
        if chinese:
            out.extend(_hanzi_reading(chinese))
            continue
        split = split_pinyin(lower)
        out.extend(split if split else [lower])
    return out
