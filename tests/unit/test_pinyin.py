"""Reading messages as pinyin: homophone typos, pinyin input and English domain words meet
the Chinese words they stand for; other Latin words stay as they are."""
from lakala_nlu.augment import homophone_table, pinyin_variant, typo_variant
from lakala_nlu.pinyin import split_pinyin, to_pinyin
from lakala_nlu.text import input_issue


def test_homophone_typos_read_like_the_right_words():
    assert to_pinyin("注消") == to_pinyin("注销") == ["zhu", "xiao"]
    assert to_pinyin("押进") == to_pinyin("押金")
    assert to_pinyin("激火码") == to_pinyin("激活码")


def test_pinyin_input_with_or_without_spaces():
    assert to_pinyin("pos ji zen me zhu xiao")[-2:] == to_pinyin("注销")
    assert to_pinyin("taoxian") == to_pinyin("套现")
    assert to_pinyin("怎么zhuxiao") == to_pinyin("怎么注销")


def test_english_domain_words_read_as_their_chinese():
    assert to_pinyin("deposit") == to_pinyin("押金")
    assert to_pinyin("cancel") == to_pinyin("注销")


def test_other_latin_words_stay_words():
    assert to_pinyin("pos app") == ["pos", "app"]
    assert split_pinyin("login") is None
    assert split_pinyin("x" * 100) is None  # bounded work on long runs


def test_pinyin_is_not_refused_as_foreign_but_english_chat_is():
    assert input_issue("pos ji zen me zhu xiao") is None
    assert input_issue("how to cancel my deposit") is None
    assert input_issue("what is the weather like today") == "foreign"


def test_augmented_copies():
    import random

    table = homophone_table(["注销要多久", "怎么消费", "押金能退吗", "合金"])
    typo = typo_variant("注销要多久", table, random.Random(1))
    assert typo != "注销要多久" and to_pinyin(typo) == to_pinyin("注销要多久")
    assert pinyin_variant("押金能退吗", random.Random(1)).replace(" ", "") == "yajinnengtuima"
    assert pinyin_variant("ok", random.Random(1)) is None
