"""The sentence features the linear classifiers read are the ones Rasa would give them."""
import numpy as np
import pytest
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.nlu.classifiers.logistic_regression_classifier import LogisticRegressionClassifier
from rasa.nlu.constants import TOKENS_NAMES
from rasa.nlu.featurizers.sparse_featurizer.count_vectors_featurizer import CountVectorsFeaturizer
from rasa.nlu.tokenizers.tokenizer import Token
from rasa.shared.nlu.constants import FEATURE_TYPE_SENTENCE, FEATURE_TYPE_SEQUENCE, INTENT, TEXT
from rasa.shared.nlu.training_data.features import Features
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData
from scipy.sparse import coo_matrix, csr_matrix, hstack

from lakala_nlu.featurizers import SentenceCountVectorsFeaturizer
from lakala_nlu.linear import sentence_features, sentence_row, side_by_side


def sparse(rows: int, values: list) -> coo_matrix:
    return coo_matrix(np.array([values] * rows, dtype=float))


def featurized(text: str, words: list, chars: list) -> Message:
    message = Message(data={TEXT: text})
    message.features += [
        Features(sparse(len(text), [1, 0, 2]), FEATURE_TYPE_SEQUENCE, TEXT, "words"),
        Features(sparse(1, words), FEATURE_TYPE_SENTENCE, TEXT, "words"),
        Features(sparse(1, [9, 9]), FEATURE_TYPE_SENTENCE, INTENT, "intents"),
        Features(sparse(len(text), [0, 3]), FEATURE_TYPE_SEQUENCE, TEXT, "chars"),
        Features(sparse(1, chars), FEATURE_TYPE_SENTENCE, TEXT, "chars"),
    ]
    return message


@pytest.mark.parametrize("words,chars", [([1, 0, 3], [0, 2]), ([0, 0, 0], [5, 1])])
def test_sentence_row_matches_rasas_combination(words: list, chars: list) -> None:
    message = featurized("押金能退吗", words, chars)
    _, rasas = message.get_sparse_features(TEXT)
    ours = sentence_row(message, width=5)
    assert ours.shape == (1, 5)
    assert np.array_equal(ours.toarray(), rasas.features.toarray())
    assert np.array_equal(ours.toarray(), [words + chars])


def test_a_message_without_features_is_a_row_of_zeros() -> None:
    matrix = sentence_features([featurized("沉睡", [1, 1, 1], [2, 2]), Message(data={TEXT: ""})], width=5)
    assert matrix.toarray().tolist() == [[1, 1, 1, 2, 2], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize("seed", range(5))
def test_side_by_side_is_scipys_hstack(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = []
    for width in rng.integers(1, 40, size=rng.integers(1, 4)):
        columns = rng.integers(0, width, size=rng.integers(0, 6))  # repeated columns included
        parts.append(coo_matrix((rng.integers(1, 5, size=len(columns)), (np.zeros(len(columns)), columns)),
                                shape=(1, width)))
    expected = csr_matrix(hstack(parts))
    ours = side_by_side(parts)
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    assert np.array_equal(ours.toarray(), expected.toarray())
    assert ours.has_canonical_format


def trained_featurizers(tmp_path, analyzer: str) -> tuple:
    storage = LocalModelStorage(tmp_path)
    context = ExecutionContext(GraphSchema({}), "test")
    config = {**CountVectorsFeaturizer.get_default_config(), "analyzer": analyzer, "min_ngram": 1, "max_ngram": 3}
    examples = ["押金 能 退 吗", "POS机 怎么 注销", "沉睡 了 怎么 激活", "违约金 多少 钱"]
    featurizers = []
    for cls in (CountVectorsFeaturizer, SentenceCountVectorsFeaturizer):
        featurizer = cls.create(config, storage, Resource(f"{cls.__name__}-{analyzer}"), context)
        data = TrainingData([tokenized(text, intent="x") for text in examples])
        featurizer.train(data)
        featurizers.append(featurizer)
    return tuple(featurizers)


def tokenized(text: str, intent: str = "") -> Message:
    message = Message(data={TEXT: text.replace(" ", ""), **({INTENT: intent} if intent else {})})
    tokens, start = [], 0
    for word in text.split():
        tokens.append(Token(word, start))
        start += len(word)
    message.set(TOKENS_NAMES[TEXT], tokens)
    return message


@pytest.mark.parametrize("analyzer", ["word", "char_wb"])
@pytest.mark.parametrize("text", ["押金 怎么 退", "新 词语 全是 生词", "注销"])
def test_sentence_featurizer_gives_rasas_sentence_features(tmp_path, analyzer: str, text: str) -> None:
    rasas, ours = trained_featurizers(tmp_path, analyzer)
    expected, message = tokenized(text), tokenized(text)
    rasas.process([expected])
    ours.process([message])
    _, rasas_sentence = expected.get_sparse_features(TEXT)
    sequence, sentence = message.get_sparse_features(TEXT)
    assert sequence is None  # not computed: nothing here reads it
    assert np.array_equal(sentence.features.toarray(), rasas_sentence.features.toarray())


def classifier_examples() -> list:
    rng = np.random.default_rng(7)
    examples = []
    for index in range(30):
        intent = ["ask_deposit", "greet", "out_of_scope"][index % 3]
        words = (rng.poisson(0.6, size=6) + np.eye(6, dtype=int)[index % 3] * 2).tolist()
        message = featurized(f"例句{index}", words, rng.poisson(0.4, size=4).tolist())
        message.set(INTENT, intent)
        examples.append(message)
    return examples


def trained_classifier(tmp_path, tfidf: bool) -> tuple:
    from lakala_nlu.linear import SparseLogisticRegressionClassifier

    storage = LocalModelStorage(tmp_path)
    resource = Resource(f"intent-{tfidf}")
    context = ExecutionContext(GraphSchema({}), "test")
    config = {**SparseLogisticRegressionClassifier.get_default_config(), "C": 30, "fit_intercept": False,
              "tfidf": tfidf}
    classifier = SparseLogisticRegressionClassifier.create(config, storage, resource, context)
    classifier.train(TrainingData(classifier_examples()))
    loaded = SparseLogisticRegressionClassifier.load(config, storage, resource, context)
    return classifier, loaded


def ranking(classifier, words: list, chars: list) -> dict:
    message = featurized("押金能退吗", words, chars)
    classifier.process([message])
    return {entry["name"]: entry["confidence"] for entry in message.get("intent_ranking")}


@pytest.mark.parametrize("words,chars", [([3, 0, 0, 1, 0, 0], [1, 0, 0, 0]), ([0, 1, 0, 0, 2, 1], [0, 0, 3, 0])])
def test_tfidf_classifier_is_scikit_learns_tfidf_then_regression(tmp_path, words: list, chars: list) -> None:
    from sklearn.base import clone
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.pipeline import make_pipeline

    classifier, loaded = trained_classifier(tmp_path, tfidf=True)
    examples = classifier_examples()
    reference = make_pipeline(TfidfTransformer(sublinear_tf=True), clone(classifier.clf))
    reference.fit(sentence_features(examples), [message.get(INTENT) for message in examples])
    expected = dict(zip(reference.classes_, reference.predict_proba(csr_matrix([words + chars]))[0], strict=True))
    for model in (classifier, loaded):  # as trained, and as loaded from the model storage
        assert ranking(model, words, chars) == pytest.approx(expected, abs=1e-9)


def test_tfidf_changes_the_prediction_and_survives_loading(tmp_path) -> None:
    counts, _ = trained_classifier(tmp_path, tfidf=False)
    weighted, loaded = trained_classifier(tmp_path, tfidf=True)
    assert loaded.tfidf is not None
    assert np.array_equal(loaded.tfidf.idf_, weighted.tfidf.idf_)
    words, chars = [0, 4, 0, 0, 1, 0], [2, 0, 0, 1]
    assert ranking(counts, words, chars) != pytest.approx(ranking(weighted, words, chars), abs=1e-6)


def random_rows(rng, width: int, count: int) -> list:
    rows = []
    for _ in range(count):
        columns = rng.choice(width, size=rng.integers(0, 8), replace=False)
        rows.append(csr_matrix((rng.integers(1, 6, size=len(columns)).astype(float),
                                (np.zeros(len(columns), dtype=int), columns)), shape=(1, width)))
    return rows


@pytest.mark.parametrize("classes,fit_intercept", [(3, False), (5, True), (2, True)])
def test_one_row_probabilities_are_scikit_learns(classes: int, fit_intercept: bool) -> None:
    from sklearn.linear_model import LogisticRegression

    from lakala_nlu.linear import predict_proba

    rng = np.random.default_rng(classes)
    X = csr_matrix(rng.poisson(0.5, size=(60, 12)).astype(float))
    clf = LogisticRegression(C=10, fit_intercept=fit_intercept, max_iter=500).fit(X, np.arange(60) % classes)
    for row in random_rows(rng, 12, 20):  # an empty row included, most likely
        assert np.allclose(predict_proba(clf, row), clf.predict_proba(row), rtol=0, atol=1e-12)
    assert np.allclose(predict_proba(clf, X[:7]), clf.predict_proba(X[:7]), rtol=0, atol=1e-12)


def test_one_row_tfidf_is_scikit_learns() -> None:
    from lakala_nlu.linear import new_tfidf, tfidf_transform

    rng = np.random.default_rng(3)
    tfidf = new_tfidf().fit(csr_matrix(rng.poisson(0.7, size=(40, 15)).astype(float)))
    rows = random_rows(rng, 15, 20) + [csr_matrix((1, 15))]
    for row in rows:
        ours = tfidf_transform(tfidf, tfidf.idf_, row)
        assert np.allclose(ours.toarray(), tfidf.transform(row).toarray(), rtol=0, atol=1e-12)
        assert row.nnz == 0 or not np.allclose(ours.toarray(), row.toarray())  # the input is not changed in place
    several = csr_matrix(np.vstack([row.toarray() for row in rows]))
    assert np.allclose(tfidf_transform(tfidf, tfidf.idf_, several).toarray(), tfidf.transform(several).toarray())


def test_intent_ranking_is_rasas_for_the_same_model(tmp_path) -> None:
    classifier, _ = trained_classifier(tmp_path, tfidf=False)
    classifier.config = {**classifier.config, "ranking_length": 2}
    for words, chars in [([3, 0, 0, 1, 0, 0], [1, 0, 0, 0]), ([0, 0, 0, 0, 0, 0], [0, 0, 0, 0])]:
        ours, rasas = featurized("押金能退吗", words, chars), featurized("押金能退吗", words, chars)
        classifier.process([ours])
        LogisticRegressionClassifier.process(classifier, [rasas])
        assert ours.get("intent")["name"] == rasas.get("intent")["name"]
        assert ours.get("intent")["confidence"] == pytest.approx(rasas.get("intent")["confidence"], abs=1e-12)
        assert [e["name"] for e in ours.get("intent_ranking")] == [e["name"] for e in rasas.get("intent_ranking")]
        assert len(ours.get("intent_ranking")) == 2


def test_saved_regression_predicts_as_the_fitted_one(tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression

    from lakala_nlu.linear import load_linear, save_linear

    rng = np.random.default_rng(11)
    X = csr_matrix(rng.poisson(0.5, size=(50, 9)).astype(float))
    labels = np.array(["faq/deposit", "faq/fee", "faq/sleep", "greet"])[np.arange(50) % 4]
    fitted = LogisticRegression(C=5, class_weight="balanced", max_iter=300).fit(X, labels)
    save_linear(fitted, tmp_path / "clf.npz")
    loaded = load_linear(tmp_path / "clf.npz")
    assert loaded.get_params() == fitted.get_params()
    assert list(loaded.classes_) == list(fitted.classes_)
    assert np.array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    assert list(loaded.predict(X[:10])) == list(fitted.predict(X[:10]))


def test_loading_the_classifier_does_not_import_skops(tmp_path) -> None:
    """skops' import searched every loaded module and took half of the server's start-up."""
    import subprocess
    import sys

    trained_classifier(tmp_path, tfidf=True)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from rasa.engine.graph import ExecutionContext, GraphSchema\n"
        "from rasa.engine.storage.local_model_storage import LocalModelStorage\n"
        "from rasa.engine.storage.resource import Resource\n"
        "from lakala_nlu.linear import SparseLogisticRegressionClassifier as C\n"
        "config = {**C.get_default_config(), 'C': 30, 'fit_intercept': False, 'tfidf': True}\n"
        f"c = C.load(config, LocalModelStorage(Path({str(tmp_path)!r})), Resource('intent-True'),"
        " ExecutionContext(GraphSchema({}), 'test'))\n"
        "assert hasattr(c.clf, 'coef_') and c.tfidf is not None\n"
        "print('skops.io' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
