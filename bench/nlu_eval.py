"""Scores one trained model on a held-out NLU file, on the prediction a user actually gets
(after FallbackClassifier and any later component), the same way for every configuration.

    .venv/bin/python bench/nlu_eval.py --model models/lakala.tar.gz --nlu tests/nlu_test.yml --out nlu.json

Metrics:
- intent accuracy: retrieval intents count by base name (gold faq/x -> faq); for gold
  out_of_scope a prediction of out_of_scope or nlu_fallback is right, for any other gold
  intent nlu_fallback is wrong;
- macro F1 over the gold labels, with nlu_fallback scored as out_of_scope;
- out_of_scope rejection: share of gold out_of_scope examples predicted out_of_scope or nlu_fallback;
- terminal_id F1: micro F1 of exact (start, end) spans of terminal_id entities over the file;
- faq selection accuracy: the response selector's intent_response_key equals the gold faq/x.
"""
import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OUT_OF_SCOPE = "out_of_scope"
FALLBACK = "nlu_fallback"
ENTITY = "terminal_id"
RETRIEVAL_INTENT = "faq"

Span = Tuple[int, int, int]  # example index, start, end


def base_intent(name: Optional[str]) -> str:
    """faq/deposit -> faq; nlu_fallback -> out_of_scope; None -> 'none'."""
    if not name:
        return "none"
    name = name.split("/", 1)[0]
    return OUT_OF_SCOPE if name == FALLBACK else name


def load_examples(path: Path) -> List[Dict[str, Any]]:
    """Rasa NLU YAML, or a TSV of `message<TAB>label` lines (label an intent or faq/<key>;
    lines starting with '#' are comments) such as the blind set."""
    from rasa.shared.nlu.training_data.loading import load_data

    if path.suffix == ".tsv":
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
        return [{"text": text.strip(), "intent": label.strip(), "spans": []} for text, label in rows]
    examples = []
    for message in load_data(str(path)).intent_examples:
        spans = [(e["start"], e["end"]) for e in message.get("entities") or [] if e.get("entity") == ENTITY]
        examples.append({"text": message.get("text"), "intent": message.get_full_intent(), "spans": spans})
    return examples


def selected_response(parse: Dict[str, Any]) -> Optional[str]:
    """The faq response key the response selector picked (the 'faq' selector, else 'default')."""
    selectors = parse.get("response_selector") or {}
    selector = selectors.get(RETRIEVAL_INTENT) or selectors.get("default") or {}
    return (selector.get("response") or {}).get("intent_response_key")


async def predict(model: Path, texts: List[str]) -> List[Dict[str, Any]]:
    from rasa.core.agent import Agent

    agent = Agent.load(str(model))
    return [await agent.parse_message(text) for text in texts]


def micro_f1(gold: Set[Span], predicted: Set[Span]) -> Dict[str, float]:
    hits = len(gold & predicted)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "gold": len(gold), "predicted": len(predicted)}


def score(examples: List[Dict[str, Any]], parses: List[Dict[str, Any]]) -> Dict[str, Any]:
    from sklearn.metrics import f1_score

    gold = [base_intent(e["intent"]) for e in examples]
    predicted = [base_intent((p.get("intent") or {}).get("name")) for p in parses]
    correct = [g == p for g, p in zip(gold, predicted, strict=True)]
    oos = [c for c, g in zip(correct, gold, strict=True) if g == OUT_OF_SCOPE]
    faq = [(e["intent"], selected_response(p)) for e, p in zip(examples, parses, strict=True) if gold_is_faq(e)]
    gold_spans = {(i, *s) for i, e in enumerate(examples) for s in e["spans"]}
    predicted_spans = {
        (i, ent["start"], ent["end"])
        for i, p in enumerate(parses) for ent in p.get("entities") or [] if ent.get("entity") == ENTITY
    }
    # Which intents were confused, without the utterances: the test file stays held out.
    confusions = Counter(
        f'{e["intent"]} -> {(p.get("intent") or {}).get("name")}'
        for e, p, ok in zip(examples, parses, correct, strict=True) if not ok
    )
    entities = micro_f1(gold_spans, predicted_spans)
    # The label a user is answered by: the intent, and for faq/<key> also the selected key.
    labels_right = [
        ok and (not gold_is_faq(e) or selected_response(p) == e["intent"])
        for e, p, ok in zip(examples, parses, correct, strict=True)
    ]
    # Confident errors: a wrong label given with confidence at or above the fallback
    # threshold, i.e. answered without any "did you mean" or apology.
    confident_errors = [
        not right and (p.get("intent") or {}).get("name") != FALLBACK
        for p, right in zip(parses, labels_right, strict=True)
    ]
    return {
        "examples": len(examples),
        "intent_accuracy": sum(correct) / len(correct),
        "label_accuracy": sum(labels_right) / len(labels_right),
        "confident_error_rate": sum(confident_errors) / len(confident_errors),
        "macro_f1": float(f1_score(gold, predicted, labels=sorted(set(gold)), average="macro", zero_division=0)),
        "oos_rejection": sum(oos) / len(oos) if oos else None,
        "oos_examples": len(oos),
        "terminal_id_f1": entities["f1"],
        "terminal_id": entities,
        "faq_selection_accuracy": sum(g == s for g, s in faq) / len(faq) if faq else None,
        "faq_examples": len(faq),
        "intent_confusions": dict(confusions.most_common()),
    }


def gold_is_faq(example: Dict[str, Any]) -> bool:
    return example["intent"].startswith(RETRIEVAL_INTENT + "/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--nlu", type=Path, default=ROOT / "tests" / "nlu_test.yml")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    parser.add_argument("--min-intent-accuracy", type=float, default=0.0,
                        help="exit 1 when the intent accuracy is below this")
    parser.add_argument("--show-errors", action="store_true", help="print each wrong label")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    examples = load_examples(args.nlu)
    started = time.monotonic()
    parses = asyncio.run(predict(args.model, [e["text"] for e in examples]))
    result = score(examples, parses)
    result["seconds"] = round(time.monotonic() - started, 1)
    if args.show_errors:
        for example, parse in zip(examples, parses, strict=True):
            intent = (parse.get("intent") or {}).get("name")
            label = selected_response(parse) if intent == RETRIEVAL_INTENT else intent
            if label != example["intent"] and not (example["intent"] == OUT_OF_SCOPE and label == FALLBACK):
                confidence = (parse.get("intent") or {}).get("confidence") or 0.0
                print(f"  {example['intent']:>28} -> {label} ({confidence:.2f})  {example['text']}", file=sys.stderr)
    text = json.dumps(result, ensure_ascii=False, indent=2)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        print(text)
    summary = (f"{args.nlu.name}: {result['examples']} utterances, intent accuracy {result['intent_accuracy']:.3f}, "
               f"label accuracy (intent and FAQ key) {result['label_accuracy']:.3f}, "
               f"confident errors {result['confident_error_rate']:.3f}")
    print(summary, file=sys.stderr)
    if result["intent_accuracy"] < args.min_intent_accuracy:
        print(f"intent accuracy {result['intent_accuracy']:.3f} < {args.min_intent_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
