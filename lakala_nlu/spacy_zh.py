"""The project's Chinese spaCy pipeline: blank `zh`, jieba with the domain dictionary,
an EntityRuler for terminal numbers and phone tails, and lemmas for number slang.

`build()` writes the pipeline to a folder that Rasa's SpacyNLP loads by path. The
tokenizer is registered here under `lakala.jieba_tokenizer.v1`; importing
`lakala_nlu.components` (which Rasa does before loading SpacyNLP) registers it.
"""
import functools
import json
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import spacy
from spacy.lang.zh import ChineseTokenizer
from spacy.language import Language

USER_DICT = Path(__file__).with_name("userdict.txt")
TOKENIZER_NAME = "lakala.jieba_tokenizer.v1"
ENTITY_LABELS = ("terminal_id", "phone_tail")
TERMINAL_ID_LENGTH = 8
# Chat slang written in digits. Rasa's CountVectorsFeaturizer turns every number into
# one __NUMBER__ feature, so "886" (bye) looked exactly like a phone tail or an amount;
# a word lemma lets the intent model tell them apart. Four-digit slang is left out on
# purpose: four digits are a phone tail.
NUMBER_SLANG = {"88": "拜拜", "886": "拜拜"}

_jieba_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def domain_jieba():
    """A private jieba tokenizer with the domain dictionary, so the global one stays untouched."""
    import jieba

    with _jieba_lock:
        tokenizer = jieba.Tokenizer()
        tokenizer.initialize()
        tokenizer.load_userdict(str(USER_DICT))
    return tokenizer


def segment(text: str) -> List[str]:
    return [word for word in domain_jieba().cut(text, HMM=True) if word.strip()]


@spacy.registry.tokenizers(TOKENIZER_NAME)
def create_tokenizer():
    def make(nlp: Language) -> ChineseTokenizer:
        tokenizer = ChineseTokenizer(nlp.vocab, segmenter="jieba")
        tokenizer.jieba_seg = domain_jieba()
        return tokenizer

    return make


def _alnum(length: int) -> Dict[str, Any]:
    return {"TEXT": {"REGEX": f"^[0-9A-Za-z]{{{length}}}$"}}


def entity_patterns() -> Iterator[Dict[str, Any]]:
    """Token patterns: an 8-character id in one piece or split once by a space or dash."""
    whole = {"TEXT": {"REGEX": r"^(?=(?:[^0-9]*[0-9]){4})[0-9A-Za-z]{8}$"}}
    yield {"label": "terminal_id", "pattern": [whole]}
    for head in range(2, TERMINAL_ID_LENGTH - 1):
        tail = TERMINAL_ID_LENGTH - head
        first = {"TEXT": {"REGEX": f"^(?=.*[0-9])[0-9A-Za-z]{{{head}}}$"}}
        last = {"TEXT": {"REGEX": f"^[0-9]{{{tail}}}$"}} if tail <= 4 else _alnum(tail)
        yield {"label": "terminal_id", "pattern": [first, last]}
        yield {"label": "terminal_id", "pattern": [first, {"ORTH": "-"}, last]}
    yield {"label": "phone_tail", "pattern": [{"TEXT": {"REGEX": r"^[0-9]{4}$"}}]}


def blank() -> Language:
    nlp = spacy.blank("zh", config={"nlp": {"tokenizer": {"@tokenizers": TOKENIZER_NAME}}})
    ruler = nlp.add_pipe("entity_ruler", config={"overwrite_ents": True})
    ruler.add_patterns(list(entity_patterns()))
    lemmas = nlp.add_pipe("attribute_ruler")
    for slang, lemma in NUMBER_SLANG.items():
        lemmas.add(patterns=[[{"ORTH": slang}]], attrs={"LEMMA": lemma})
    return nlp


def build(output: Path) -> Path:
    nlp = blank()
    nlp.meta.update(
        {
            "name": "lakala_zh",
            "version": "1.0.0",
            "description": "blank zh + jieba with the Lakala dictionary + EntityRuler",
        }
    )
    output.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(output)
    (output / "fingerprint.json").write_text(
        json.dumps(
            {"patterns": list(entity_patterns()), "lemmas": NUMBER_SLANG},
            ensure_ascii=False,
            sort_keys=True,
        )
    )
    return output


if __name__ == "__main__":
    import sys

    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "build/spacy/zh_lakala")))
