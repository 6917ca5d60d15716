"""The input guard's confidence rules on parsed messages: an FAQ answer needs P(faq) x P(key)
above the configured bar, an unsure guess of cash-out is refused, and a foreign-script
sentence keeps a confident intent but falls back when unsure."""
from rasa.nlu.constants import RESPONSE_SELECTOR_PROPERTY_NAME
from rasa.shared.nlu.training_data.message import Message

from lakala_nlu.components import INPUT_ISSUE, InputGuard

GUARD = InputGuard({"faq_min_confidence": 0.35, "cash_out_min_confidence": 0.3})


def parsed(intent, confidence, ranking, key_confidence=None, issue=None):
    message = Message(data={"text": "x"})
    message.set("intent", {"name": intent, "confidence": confidence})
    message.set("intent_ranking", [{"name": n, "confidence": c} for n, c in ranking])
    if key_confidence is not None:
        message.set(RESPONSE_SELECTOR_PROPERTY_NAME, {
            "faq": {"response": {"confidence": key_confidence, "intent_response_key": "faq/sim_card"}}})
    if issue:
        message.set(INPUT_ISSUE, issue)
    return GUARD.process([message])[0].get("intent")["name"]


def test_a_sure_faq_answer_stands():
    assert parsed("faq", 0.9, [("faq", 0.9), ("ask_deposit", 0.1)], key_confidence=0.8) == "faq"


def test_an_faq_answer_unsure_of_its_section_asks_what_was_meant():
    # 0.76 x 0.4 = 0.30 < 0.35: an unrelated section is worse than "did you mean".
    assert parsed("faq", 0.76, [("faq", 0.76), ("ask_deposit", 0.2)], key_confidence=0.4) == "nlu_fallback"


def test_an_unsure_guess_of_cash_out_is_refused():
    ranking = [("nlu_fallback", 1.0), ("ask_cash_out", 0.48), ("faq", 0.45)]
    assert parsed("nlu_fallback", 1.0, ranking) == "ask_cash_out"


def test_a_faint_guess_of_cash_out_stays_a_fallback():
    ranking = [("nlu_fallback", 1.0), ("ask_cash_out", 0.2), ("faq", 0.19)]
    assert parsed("nlu_fallback", 1.0, ranking) == "nlu_fallback"


def test_other_fallbacks_stay_fallbacks():
    ranking = [("nlu_fallback", 1.0), ("ask_deposit", 0.48), ("ask_termination_fee", 0.45)]
    assert parsed("nlu_fallback", 1.0, ranking) == "nlu_fallback"


def test_a_foreign_sentence_keeps_a_confident_intent():
    ranking = [("deregister_account", 0.9), ("deregister_terminal", 0.1)]
    assert parsed("deregister_account", 0.9, ranking, issue="foreign") == "deregister_account"


def test_a_foreign_sentence_without_a_confident_intent_falls_back():
    ranking = [("greet", 0.4), ("bot_challenge", 0.3)]
    assert parsed("greet", 0.4, ranking, issue="foreign") == "nlu_fallback"


def test_empty_and_too_long_always_fall_back():
    for issue in ("empty", "too_long"):
        assert parsed("ask_deposit", 0.99, [("ask_deposit", 0.99)], issue=issue) == "nlu_fallback"


def test_a_phone_number_holds_no_terminal_number_or_tail():
    from lakala_nlu.components import without_pieces_of_longer_numbers

    def spans(text, found):
        return [text[e["start"]:e["end"]] for e in without_pieces_of_longer_numbers(text, found)]

    phone = "我的手机是 138 0013 8000"
    assert spans(phone, [{"entity": "terminal_id", "start": 10, "end": 19},
                         {"entity": "phone_tail", "start": 15, "end": 19}]) == []
    assert spans("+86 139 0000 1111", [{"entity": "phone_tail", "start": 13, "end": 17}]) == []
    # A terminal number and its tail typed together are two entities, not one long number.
    together = "30091254 6721"
    assert spans(together, [{"entity": "terminal_id", "start": 0, "end": 8},
                            {"entity": "phone_tail", "start": 9, "end": 13}]) == ["30091254", "6721"]
    assert spans("终端K730 6118", [{"entity": "terminal_id", "start": 2, "end": 11}]) == ["K730 6118"]
