"""The Chinese building blocks: jieba with the domain dictionary, the spaCy pipeline's
entity patterns, and traditional / full-width input."""
from pathlib import Path

import pytest
import spacy

from lakala_nlu import spacy_zh
from lakala_nlu.text import input_issue, normalize

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "build" / "spacy" / "zh_lakala"


@pytest.fixture(scope="module")
def nlp():
    path = BUILT if (BUILT / "meta.json").exists() else spacy_zh.build(BUILT)
    return spacy.load(path)


@pytest.mark.parametrize(
    "word",
    ["拉卡拉", "收款宝", "POS机", "刷卡机", "押金", "违约金", "沉睡", "激活码", "终端号",
     "签购单", "日终处理", "预授权", "一清", "二清", "流量卡", "注销"],
)
def test_domain_terms_are_single_tokens(word):
    assert word in spacy_zh.segment(f"请问{word}是什么意思")


def test_lakala_is_not_split_into_la_and_kala():
    tokens = spacy_zh.segment("拉卡拉的刷卡机不用了怎么注销")
    assert tokens[:2] == ["拉卡拉", "的"]
    assert "卡拉" not in tokens


def test_spacy_pipeline_uses_the_domain_dictionary(nlp):
    assert [t.text for t in nlp("拉卡拉收款宝押金")] == ["拉卡拉", "收款宝", "押金"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("帮我查终端30091254", [("30091254", "terminal_id")]),
        ("终端号K7306118", [("K7306118", "terminal_id")]),
        ("我的是k730-6118", [("k730-6118", "terminal_id")]),
        ("终端 8800 4521 手机尾号1456", [("8800 4521", "terminal_id"), ("1456", "phone_tail")]),
        ("A0012345", [("A0012345", "terminal_id")]),
        ("尾号是0839", [("0839", "phone_tail")]),
    ],
)
def test_entity_ruler_finds_ids_and_tails(nlp, text, expected):
    assert [(e.text, e.label_) for e in nlp(text).ents] == expected


@pytest.mark.parametrize(
    "text",
    ["我的手机号13812345678", "POSMACHINE", "注销要多久", "123", "1234567", "ABCDEFGH"],
)
def test_entity_ruler_ignores_lookalikes(nlp, text):
    assert [e for e in nlp(text).ents if e.label_ == "terminal_id"] == []


@pytest.mark.parametrize("text", ["886", "88", "好的886"])
def test_number_slang_for_bye_gets_a_word_lemma(nlp, text):
    # Rasa's featurizer maps every number to __NUMBER__; the lemma keeps "886" (bye)
    # apart from phone tails and amounts.
    assert "拜拜" in [token.lemma_ for token in nlp(text)]


@pytest.mark.parametrize("text", ["0886", "尾号8886", "30088612", "押金99元"])
def test_other_numbers_keep_their_own_lemma(nlp, text):
    assert "拜拜" not in [token.lemma_ for token in nlp(text)]


def test_a_phone_tail_ending_in_886_stays_a_phone_tail(nlp):
    assert nlp("0886").ents[0].label_ == "phone_tail"


@pytest.mark.parametrize(
    "traditional, simplified",
    [
        ("押金能退嗎", "押金能退吗"),
        ("終端怎麼註銷", "终端怎么注销"),
        ("拉卡拉帳戶註銷要多久", "拉卡拉帐户注销要多久"),
        ("ＰＯＳ機", "POS机"),
        ("終端號３００９１２５４", "终端号30091254"),
    ],
)
def test_traditional_and_full_width_fold_to_simplified(traditional, simplified):
    assert normalize(traditional) == simplified


def test_normalisation_keeps_offsets():
    text = "請問終端Ｋ７３０６１１８的押金？😀"
    assert len(normalize(text)) == len(text)


@pytest.mark.parametrize(
    "text, issue",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("😀😀👍", "empty"),
        ("？？？！！。。。", "empty"),
        ("押" * 5000, "too_long"),
        ("How do I cancel my POS machine?", "foreign"),
        ("押金能退吗", None),
        ("30091254", None),
        ("hi", None),
        ("POS机 how to 注销", None),
    ],
)
def test_input_issues(text, issue):
    assert input_issue(text) == issue
