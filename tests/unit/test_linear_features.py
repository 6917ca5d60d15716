"""The linear classifiers' sentence row is what Rasa combines for a message's sentence."""
import numpy as np
import pytest
from rasa.shared.nlu.constants import FEATURE_TYPE_SENTENCE, FEATURE_TYPE_SEQUENCE, INTENT, TEXT
from rasa.shared.nlu.training_data.features import Features
from rasa.shared.nlu.training_data.message import Message
from scipy.sparse import coo_matrix

from lakala_nlu.linear import sentence_features, sentence_row


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
