"""The sentence features the linear classifiers read are the ones Rasa would give them."""
import numpy as np
import pytest
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
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
