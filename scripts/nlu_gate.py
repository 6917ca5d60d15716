"""Reads `rasa test nlu` results and fails unless the NLU meets the project's bar:
intent accuracy >= 0.95, at least 90 % of out_of_scope examples rejected (not
classified as any domain intent) and FAQ answers selected with accuracy >= 0.95.
It prints the scores and how often each intent was taken for each other, not the utterances."""
import json
import sys
from collections import Counter
from pathlib import Path

MIN_ACCURACY = 0.95
MIN_OOS_REJECTION = 0.90
MIN_FAQ_ACCURACY = 0.95
REJECTED = {"out_of_scope", "nlu_fallback"}


def main(results: Path, test_file: Path) -> int:
    report = json.loads((results / "intent_report.json").read_text())
    errors_path = results / "intent_errors.json"
    errors = json.loads(errors_path.read_text()) if errors_path.exists() else []
    accuracy = report["accuracy"]
    macro_f1 = report["macro avg"]["f1-score"]
    oos_total = report.get("out_of_scope", {}).get("support", 0)
    oos_leaked = [
        e for e in errors
        if e["intent"] == "out_of_scope"
        and (e.get("intent_prediction") or {}).get("name") not in REJECTED
    ]
    rejection = 1 - len(oos_leaked) / oos_total if oos_total else 0.0
    selection_path = results / "response_selection_report.json"
    faq_accuracy = json.loads(selection_path.read_text())["accuracy"] if selection_path.exists() else 0.0
    print(f"intent accuracy {accuracy:.3f}, macro F1 {macro_f1:.3f}, "
          f"out_of_scope rejected {rejection:.3f} ({oos_total - len(oos_leaked)}/{oos_total}), "
          f"FAQ answer accuracy {faq_accuracy:.3f}")
    # How many of each confusion, never which utterances: printing the misread test sentences
    # on every run invites tuning the training data to them, and the test set stops measuring.
    confusions = Counter((e["intent"], (e.get("intent_prediction") or {}).get("name")) for e in errors)
    print(f"{len(errors)} misclassified test utterances" + (", as:" if errors else ""))
    for (intent, predicted), count in sorted(confusions.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {intent:>24} -> {predicted}: {count}")
    failed = []
    if accuracy < MIN_ACCURACY:
        failed.append(f"intent accuracy {accuracy:.3f} < {MIN_ACCURACY}")
    if rejection < MIN_OOS_REJECTION:
        failed.append(f"out_of_scope rejection {rejection:.3f} < {MIN_OOS_REJECTION}")
    if faq_accuracy < MIN_FAQ_ACCURACY:
        failed.append(f"FAQ answer accuracy {faq_accuracy:.3f} < {MIN_FAQ_ACCURACY}")
    if failed:
        print("NLU gate failed: " + "; ".join(failed))
        return 1
    print("NLU gate passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
