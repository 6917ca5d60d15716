"""Choosing what to say when the NLU is unsure: the user's best-guess intents as buttons."""
from typing import Any, Dict, List, Optional

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType
from rasa_sdk.executor import CollectingDispatcher

OPTIONS_RESPONSE = "utter_clarify_options"
ISSUE_RESPONSES = {
    "empty": "utter_empty_input",
    "too_long": "utter_too_long",
    "foreign": "utter_chinese_only",
}
MAX_GUESSES = 3
MIN_GUESS_CONFIDENCE = 0.05
RETRIEVAL_INTENT = "faq"


def clarify_options(domain: Dict[str, Any]) -> Dict[str, str]:
    """The intents that may be offered as guesses, with their Chinese labels from the domain."""
    variations = domain.get("responses", {}).get(OPTIONS_RESPONSE) or [{}]
    return dict(variations[0].get("custom", {}).get("options", {}))


def _ranked_keys(message: Dict[str, Any]) -> List[tuple]:
    keys = []
    for entry in message.get("intent_ranking") or []:
        name, confidence = entry.get("name"), entry.get("confidence") or 0.0
        if name == RETRIEVAL_INTENT:
            selector = (message.get("response_selector") or {}).get(RETRIEVAL_INTENT, {})
            ranking = selector.get("ranking") or []
            if ranking:
                key = ranking[0].get("intent_response_key")
                keys.append((key, confidence * (ranking[0].get("confidence") or 0.0)))
            continue
        keys.append((name, confidence))
    return keys


def best_guesses(
    message: Dict[str, Any], options: Dict[str, str], limit: int = MAX_GUESSES
) -> List[str]:
    """Offerable intent keys, most likely first."""
    ranked = sorted(_ranked_keys(message), key=lambda pair: pair[1], reverse=True)
    guesses = [
        key
        for key, confidence in ranked
        if key in options and confidence >= MIN_GUESS_CONFIDENCE
    ]
    return guesses[:limit]


def button_for(key: str, label: str) -> Dict[str, str]:
    # Retrieval sub-intents cannot be triggered by "/intent" payloads, so their
    # button sends the question itself.
    payload = label if "/" in key else f"/{key}"
    return {"title": label, "payload": payload}


class ActionClarify(Action):
    """Asks the user to pick among the likeliest meanings, or to rephrase."""

    def name(self) -> str:
        return "action_clarify"

    async def run(
        self,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: Dict[str, Any],
    ) -> List[EventType]:
        message = tracker.latest_message or {}
        issue: Optional[str] = message.get("input_issue")
        if issue in ISSUE_RESPONSES:
            dispatcher.utter_message(response=ISSUE_RESPONSES[issue])
            return []
        options = clarify_options(domain)
        guesses = best_guesses(message, options)
        if not guesses:
            dispatcher.utter_message(response="utter_ask_rephrase")
            return []
        buttons = [button_for(key, options[key]) for key in guesses]
        buttons.append(button_for("request_human", options.get("request_human", "")))
        dispatcher.utter_message(response="utter_clarify", buttons=_unique(buttons))
        return []


def _unique(buttons: List[Dict[str, str]]) -> List[Dict[str, str]]:
    seen, result = set(), []
    for button in buttons:
        if button["payload"] not in seen and button["title"]:
            seen.add(button["payload"])
            result.append(button)
    return result
