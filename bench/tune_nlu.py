"""Chooses the intent classifier's regularisation (C) and the FallbackClassifier threshold by
k-fold cross-validation on the training data only (data/), never on tests/nlu_test.yml.

    .venv/bin/python bench/tune_nlu.py            # 5 folds, prints a table and the best pair

For each C the NLU is trained on k-1 folds with config.yml (only C changed) and every held-out
example is parsed; the fallback decision is then replayed for each threshold from the intent
ranking, and scored like bench/nlu_eval.py: a held-out out_of_scope example is right when
rejected (out_of_scope or below the threshold), any other one when its intent is top and above
the threshold and ahead of the next intent by config.yml's ambiguity_threshold. The pair with
the best mean of accuracy and macro F1 is printed last.
"""
import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# nlu_eval's import sets up the environment (repo on sys.path, telemetry off) for both scripts.
from bench.nlu_eval import OUT_OF_SCOPE, ROOT  # noqa: E402

CLASSIFIER = "lakala_nlu.linear.SparseLogisticRegressionClassifier"
EXTRA: Dict[str, Any] = {}  # other classifier settings under test, from --set key=value
AUGMENTER = "lakala_nlu.augment.TrainingAugmenter"
AUGMENT = {"on": True}  # --no-augment drops the TrainingAugmenter from config.yml


def config_with(c: float) -> Dict[str, Any]:
    config = yaml.safe_load((ROOT / "config.yml").read_text(encoding="utf-8"))
    if not AUGMENT["on"]:
        config["pipeline"] = [c for c in config["pipeline"] if c["name"] != AUGMENTER]
    for component in config["pipeline"]:
        if component["name"] == CLASSIFIER:
            component["C"] = c
            component.update(EXTRA)
        if component["name"] == "FallbackClassifier":
            component["threshold"] = 0.0  # replayed below for every threshold
            component["ambiguity_threshold"] = 0.0
    return config


def fold_predictions(
    c: float, folds: int, workdir: Path, extra: Optional[Path] = None
) -> List[Tuple[str, List[Tuple[str, float]]]]:
    """(gold intent, [(intent, confidence), ...]) for every example of data/nlu, held out
    once. `extra` (a file or folder of NLU data) joins every training fold and is never
    scored: new examples can be judged by what they do for the examples already there,
    on the same folds."""
    from rasa.core.agent import Agent
    from rasa.model_training import train_nlu
    from rasa.nlu.test import generate_folds
    from rasa.shared.nlu.training_data.loading import load_data

    config_path = workdir / f"config-{c}.yml"
    config_path.write_text(yaml.safe_dump(config_with(c), allow_unicode=True), encoding="utf-8")
    data = load_data(str(ROOT / "data" / "nlu"))
    added = load_data(str(extra)) if extra else None
    results = []
    for index, (train, test) in enumerate(generate_folds(folds, data)):
        if added is not None:
            train = train.merge(added)
        train_path = workdir / f"train-{index}.yml"
        train_path.write_text(train.nlu_as_yaml(), encoding="utf-8")
        model = train_nlu(str(config_path), str(train_path), str(workdir), fixed_model_name=f"c{c}-{index}")
        agent = Agent.load(model)
        for example in test.intent_examples:
            parse = asyncio.run(agent.parse_message(example.get("text")))
            ranking = [(r["name"], r["confidence"]) for r in parse.get("intent_ranking") or []
                       if r["name"] != "nlu_fallback"]
            results.append((example.get("intent"), ranking))
    return results


def ambiguity_threshold() -> float:
    config = yaml.safe_load((ROOT / "config.yml").read_text(encoding="utf-8"))
    fallback = [c for c in config["pipeline"] if c["name"] == "FallbackClassifier"]
    return float(fallback[0].get("ambiguity_threshold", 0.1)) if fallback else 0.0


def decisions(
    predictions: List[Tuple[str, List[Tuple[str, float]]]], threshold: float, ambiguity: float
) -> Tuple[List[str], List[str]]:
    """(gold, predicted) intents after the fallback decision, out_of_scope for a rejection."""
    gold, predicted = [], []
    for intent, ranking in predictions:
        top, confidence = ranking[0] if ranking else (OUT_OF_SCOPE, 0.0)
        runner_up = ranking[1][1] if len(ranking) > 1 else 0.0
        rejected = confidence < threshold or confidence - runner_up < ambiguity
        predicted.append(OUT_OF_SCOPE if rejected else top)
        gold.append(intent)
    return gold, predicted


def score(
    predictions: List[Tuple[str, List[Tuple[str, float]]]], threshold: float, ambiguity: float
) -> Tuple[float, float]:
    from sklearn.metrics import f1_score

    gold, predicted = decisions(predictions, threshold, ambiguity)
    accuracy = sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)
    return accuracy, f1_score(gold, predicted, labels=sorted(set(gold)), average="macro", zero_division=0)


def report(predictions: List[Tuple[str, List[Tuple[str, float]]]], threshold: float, ambiguity: float) -> None:
    """Per-intent F1 (weakest first) and the most frequent confusions, to show where the
    training data is thin. Only held-out folds of data/ are read."""
    from collections import Counter

    from sklearn.metrics import f1_score

    gold, predicted = decisions(predictions, threshold, ambiguity)
    labels = sorted(set(gold))
    scores = f1_score(gold, predicted, labels=labels, average=None, zero_division=0)
    print("intent                        F1     n")
    support = Counter(gold)
    for label, value in sorted(zip(labels, scores, strict=True), key=lambda pair: pair[1]):
        print(f"{label:<29} {value:.3f}  {support[label]}")
    confusions = Counter((g, p) for g, p in zip(gold, predicted, strict=True) if g != p)
    print("most frequent confusions (gold -> predicted):")
    for (g, p), count in confusions.most_common(15):
        print(f"  {count:3d}  {g} -> {p}")


def quiet() -> None:
    """Warnings only: Rasa's structlog otherwise prints a debug line per parsed example."""
    import structlog

    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--c", default="1,3,10,30", help="C values to try")
    parser.add_argument("--thresholds", default="0.2,0.25,0.3,0.35,0.4,0.45,0.5")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for the fold split (Rasa's folds are shuffled at random otherwise)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another classifier setting for every run (YAML value), e.g. fit_intercept=false")
    parser.add_argument("--extra", type=Path, default=None,
                        help="NLU data added to every training fold and never scored")
    parser.add_argument("--no-augment", action="store_true",
                        help="train the folds without the TrainingAugmenter (its copies are made from "
                             "each training fold only, so held-out examples never leak into training)")
    parser.add_argument("--report", action="store_true",
                        help="per-intent F1 and the top confusions for the best pair")
    args = parser.parse_args()
    quiet()
    AUGMENT["on"] = not args.no_augment
    for item in args.set:
        key, _, value = item.partition("=")
        EXTRA[key] = yaml.safe_load(value)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if args.seed is not None:
        import numpy

        numpy.random.seed(args.seed)  # rasa.nlu.test.generate_folds shuffles with numpy's global state
    ambiguity = ambiguity_threshold()
    best: Tuple[float, Any, Any, Any] = (-1.0, None, None, None)
    print("C      threshold  accuracy  macro F1")
    with tempfile.TemporaryDirectory() as tmp:
        for c in (float(v) for v in args.c.split(",")):
            predictions = fold_predictions(c, args.folds, Path(tmp), args.extra)
            for threshold in thresholds:
                accuracy, macro_f1 = score(predictions, threshold, ambiguity)
                print(f"{c:<6g} {threshold:<10g} {accuracy:.3f}     {macro_f1:.3f}", flush=True)
                if (accuracy + macro_f1) / 2 > best[0]:
                    best = ((accuracy + macro_f1) / 2, c, threshold, predictions)
    if args.report:
        report(best[3], best[2], ambiguity)
    print(f"best: C={best[1]:g}, FallbackClassifier threshold={best[2]:g} (mean of accuracy and F1 {best[0]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
