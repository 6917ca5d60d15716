"""When the NLU is unsure, the user is offered its best guesses as Chinese buttons."""
import asyncio
from pathlib import Path

import yaml
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher

from actions.clarify import ActionClarify

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
OPTIONS = DOMAIN["responses"]["utter_clarify_options"][0]["custom"]["options"]


def run(latest_message):
    tracker = Tracker("u", {}, latest_message, [], False, None, {}, "action_listen")
    dispatcher = CollectingDispatcher()
    asyncio.run(ActionClarify().run(dispatcher, tracker, DOMAIN))
    return dispatcher.messages


def test_best_guesses_become_buttons_with_a_human_option_last():
    messages = run({
        "text": "那个钱的事",
        "intent": {"name": "nlu_fallback", "confidence": 0.4},
        "intent_ranking": [
            {"name": "nlu_fallback", "confidence": 0.4},
            {"name": "ask_deposit", "confidence": 0.35},
            {"name": "faq", "confidence": 0.30},
            {"name": "ask_termination_fee", "confidence": 0.2},
            {"name": "greet", "confidence": 0.1},
        ],
        "response_selector": {"faq": {"ranking": [
            {"intent_response_key": "faq/phone_loss", "confidence": 0.9}]}},
    })
    assert len(messages) == 1
    assert messages[0]["response"] == "utter_clarify"
    buttons = messages[0]["buttons"]
    assert buttons[0] == {"title": OPTIONS["ask_deposit"], "payload": "/ask_deposit"}
    assert {"title": OPTIONS["faq/phone_loss"], "payload": OPTIONS["faq/phone_loss"]} in buttons
    assert buttons[-1] == {"title": OPTIONS["request_human"], "payload": "/request_human"}
    assert all(b["payload"] != "/greet" for b in buttons)


def test_no_plausible_guess_asks_to_rephrase():
    messages = run({"text": "嗯", "intent": {"name": "nlu_fallback", "confidence": 0.3},
                    "intent_ranking": [{"name": "nlu_fallback", "confidence": 0.3},
                                       {"name": "out_of_scope", "confidence": 0.2}]})
    assert [m["response"] for m in messages] == ["utter_ask_rephrase"]


def test_flagged_input_gets_its_own_answer():
    for issue, response in [("empty", "utter_empty_input"), ("too_long", "utter_too_long"),
                            ("foreign", "utter_chinese_only")]:
        messages = run({"text": "x", "input_issue": issue, "intent": {"name": "nlu_fallback"}})
        assert [m["response"] for m in messages] == [response]


def test_every_option_label_is_an_offerable_intent():
    intents = set(DOMAIN["intents"])
    for key in OPTIONS:
        assert key.split("/")[0] in intents
