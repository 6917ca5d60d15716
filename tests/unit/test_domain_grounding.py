"""Every sentence a user reads comes from domain.yml, is Chinese, fits a phone screen,
and says nothing the article (or the policy numbers) does not."""
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ARTICLE = (ROOT.parent / "shared" / "seed" / "000_1eb54a90050f3e3c.txt").read_text(encoding="utf-8")
DOMAIN = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
RESPONSES = DOMAIN["responses"]
POLICY_SLOTS = {
    name: str(slot["initial_value"])
    for name, slot in DOMAIN["slots"].items()
    if name.startswith("policy_")
}
MAX_CHARS = 240  # about one phone screen of Chinese text
# Facts fixed by CONTRACT.md section 3 rather than the article: the terminal number's
# length, the phone tail's length, and the demo number used as an example.
CONTRACT_NUMBERS = {"8", "4", "30091254"}
ACTIONS_SOURCE = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "actions").glob("*.py"))
ACTION_VALUES = set(re.findall(r'"(\w+)":', ACTIONS_SOURCE)) | set(re.findall(r"\b(\w+)=", ACTIONS_SOURCE))
CJK = re.compile(r"[\u4e00-\u9fff]")


def _texts():
    for name, variations in RESPONSES.items():
        for variation in variations:
            if "text" in variation:
                yield name, variation["text"]


def _filled(text):
    return re.sub(r"\{(\w+)\}", lambda m: POLICY_SLOTS.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("name, text", list(_texts()))
def test_responses_are_short_chinese(name, text):
    assert CJK.search(text), name
    assert len(_filled(text)) <= MAX_CHARS, f"{name} is {len(_filled(text))} characters"


@pytest.mark.parametrize("name, text", list(_texts()))
def test_every_number_in_a_response_is_in_the_article(name, text):
    body = re.sub(r"(^|\n)\d+\. ", r"\1", _filled(text))  # list numbering is not a fact
    body = re.sub(r"\d+位号码", "", body) if "11位号码" in ARTICLE else body
    for number in re.findall(r"\d+", body):
        assert number in ARTICLE or number in CONTRACT_NUMBERS, (
            f"{name} says {number}, which neither the article nor the contract does"
        )


def test_policy_numbers_live_only_in_the_policy_slots():
    for name, text in _texts():
        assert not re.search(r"\d+\s*(个月|个工作日|天)", text), (
            f"{name} hard-codes a policy number; use the policy_* slots"
        )


def test_policy_numbers_match_the_article():
    assert POLICY_SLOTS["policy_dormant_months"] == "3" and "连续三个月不使用" in ARTICLE
    assert POLICY_SLOTS["policy_auto_deregister_months"] == "6" and "连续6个月没有使用" in ARTICLE
    assert POLICY_SLOTS["policy_deregistration_working_days"] == "15" and "15 个工作日" in ARTICLE


def test_no_response_gives_cash_out_advice():
    for name, text in _texts():
        if "套现" in text or "养卡" in text:
            assert name == "utter_decline_cash_out"
            assert "不能" in text


def test_every_placeholder_is_a_slot_or_a_value_the_actions_pass():
    known = set(DOMAIN["slots"]) | ACTION_VALUES
    for name, text in _texts():
        for placeholder in re.findall(r"\{(\w+)\}", text):
            assert placeholder in known, f"{name} uses unknown {{{placeholder}}}"


def test_button_intents_exist():
    intents = {i if isinstance(i, str) else next(iter(i)) for i in DOMAIN["intents"]}
    for name, variations in RESPONSES.items():
        for variation in variations:
            for button in variation.get("buttons", []):
                payload = button["payload"]
                assert CJK.search(button["title"]), name
                if payload.startswith("/"):
                    assert payload[1:].split("{")[0] in intents, f"{name}: {payload}"


def test_every_faq_intent_has_an_answer_and_a_clarify_label():
    nlu = ""
    for path in (ROOT / "data" / "nlu").glob("*.yml"):
        nlu += path.read_text(encoding="utf-8")
    keys = set(re.findall(r"intent:\s*faq/(\w+)", nlu))
    assert keys, "no faq/ intents in the training data"
    answers = {name.split("/", 1)[1] for name in RESPONSES if name.startswith("utter_faq/")}
    assert keys == answers
    options = RESPONSES["utter_clarify_options"][0]["custom"]["options"]
    assert {k.split("/", 1)[1] for k in options if k.startswith("faq/")} == keys
