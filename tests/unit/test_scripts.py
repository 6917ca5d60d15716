"""The gates of `make validate` and `make nlu-test` (scripts/validate.py, scripts/nlu_gate.py)."""
import json

from scripts import nlu_gate, validate

UNUSED = "UserWarning: The utterance 'utter_backend_failed' is not used in any story or rule."
DUPLICATED = "UserWarning: The following duplicated intents have been found across multiple domain files: faq"
ALLOWED, RETRIEVAL = {"utter_backend_failed"}, {"faq"}


def test_rasas_failure_stands_even_with_accepted_false_positives():
    output = "\n".join([DUPLICATED, UNUSED, "Project validation completed with errors."])
    code, report = validate.verdict(1, output, ALLOWED, RETRIEVAL)
    assert code == 1 and "exit code 1" in report
    assert validate.verdict(2, "", ALLOWED, RETRIEVAL)[0] == 2


def test_only_the_known_false_positives_are_accepted():
    assert validate.verdict(0, f"{DUPLICATED}\n{UNUSED}", ALLOWED, RETRIEVAL) == (
        0, "rasa data validate: no warnings (2 known false positives accepted)")
    other = "UserWarning: The utterance 'utter_forgotten' is not used in any story or rule."
    code, report = validate.verdict(0, f"{UNUSED}\n{other}", ALLOWED, RETRIEVAL)
    assert code == 1 and "utter_forgotten" in report and "utter_backend_failed" not in report
    duplicated = DUPLICATED.replace(": faq", ": faq, greet")
    assert validate.verdict(0, duplicated, ALLOWED, RETRIEVAL)[0] == 1


def test_the_nlu_gate_prints_counts_and_confusions_not_utterances(tmp_path, capsys):
    report = {"accuracy": 0.96, "macro avg": {"f1-score": 0.95}, "out_of_scope": {"support": 10}}
    errors = [
        {"text": "押金咋退", "intent": "ask_deposit", "intent_prediction": {"name": "ask_termination_fee",
                                                                          "confidence": 0.6}},
        {"text": "保证金能拿回来不", "intent": "ask_deposit", "intent_prediction": {"name": "ask_termination_fee",
                                                                                "confidence": 0.5}},
        {"text": "今天天气咋样", "intent": "out_of_scope", "intent_prediction": {"name": "greet", "confidence": 0.4}},
    ]
    (tmp_path / "intent_report.json").write_text(json.dumps(report))
    (tmp_path / "intent_errors.json").write_text(json.dumps(errors, ensure_ascii=False))
    (tmp_path / "response_selection_report.json").write_text(json.dumps({"accuracy": 0.97}))
    assert nlu_gate.main(tmp_path, tmp_path / "nlu_test.yml") == 0
    printed = capsys.readouterr().out
    assert "3 misclassified test utterances" in printed
    assert "ask_deposit -> ask_termination_fee: 2" in printed and "out_of_scope -> greet: 1" in printed
    assert not any(error["text"] in printed for error in errors)
