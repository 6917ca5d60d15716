"""Shared sparse features for the linear classifiers, and Rasa's logistic regression
intent classifier reading them.

Rasa's LogisticRegressionClassifier stacks each message's sparse and dense sentence
features with scipy on every call, and the FAQ selector needs the same matrix again:
together a large share of the time per message under load. Both now take
the combined sparse sentence features once per message; the model and its
predictions are the same (this pipeline has no dense features).
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from rasa.engine.graph import ExecutionContext
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.classifiers.logistic_regression_classifier import LogisticRegressionClassifier
from rasa.shared.nlu.constants import FEATURE_TYPE_SENTENCE, TEXT
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData
from rasa.utils.tensorflow.constants import RANKING_LENGTH
from scipy.sparse import csr_matrix, hstack, vstack

_CACHE = "_lakala_sentence_features"
IDF_FILE = "idf.npy"
LINEAR_FILE = "linear.npz"


def sentence_row(message: Message, width: Optional[int]) -> csr_matrix:
    """The message's sparse sentence features (all featurizers combined), computed once.
    A message without features (an empty one) gets a row of zeros `width` wide."""
    row = getattr(message, _CACHE, None)
    if row is None:
        # What Message.get_sparse_features(TEXT) combines for the sentence, in the same
        # order, without also combining the sequence features (unused here).
        parts = [
            feature.features
            for feature in message.features
            if feature.is_sparse() and feature.type == FEATURE_TYPE_SENTENCE and feature.attribute == TEXT
        ]
        if not parts:
            return csr_matrix((1, width or 0))
        row = side_by_side(parts)
        setattr(message, _CACHE, row)
    return row


def side_by_side(parts: List[Any]) -> csr_matrix:
    """scipy's hstack of one-row sparse matrices, as CSR, without its general block
    assembly (which cost four times as much for a single row)."""
    if any(part.shape[0] != 1 for part in parts):
        return csr_matrix(hstack(parts))
    coo = [part.tocoo() for part in parts]
    offsets = np.cumsum([0] + [part.shape[1] for part in coo])
    columns = np.concatenate([part.col + offset for part, offset in zip(coo, offsets, strict=False)])
    data = np.concatenate([part.data for part in coo])
    order = np.argsort(columns, kind="stable")
    row = csr_matrix((data[order], columns[order], np.array([0, len(columns)])), shape=(1, int(offsets[-1])))
    row.sum_duplicates()
    return row


def sentence_features(messages: List[Message], width: Optional[int] = None) -> csr_matrix:
    """One row per message; `width` is the fitted model's number of features, if known."""
    rows = [sentence_row(message, width) for message in messages]
    return (rows[0] if len(rows) == 1 else vstack(rows)).tocsr()


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER, is_trainable=True)
class SparseLogisticRegressionClassifier(LogisticRegressionClassifier):
    """Rasa's LogisticRegressionClassifier on the shared sparse sentence features, with its
    regularisation strength `C` configurable (bench/tune_nlu.py picks it by cross-validation).

    With `tfidf`, the counts are weighted as scikit-learn's TfidfTransformer does (sublinear
    term frequency, inverse document frequency learnt from the training examples, each row
    scaled to unit length) before the regression sees them. A short message and a long one
    then weigh alike, and n-grams that every intent shares (的, 吗, 怎么) count for less.
    """

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {**LogisticRegressionClassifier.get_default_config(), "C": 1.0, "fit_intercept": True, "tfidf": False}

    def __init__(self, config: Dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.clf.set_params(C=self.config["C"], fit_intercept=self.config["fit_intercept"])
        self.tfidf: Optional[Any] = None
        self.idf: Optional[np.ndarray] = None  # tfidf.idf_, which scikit-learn recomputes on each read

    def _create_X(self, messages: List[Message]) -> csr_matrix:
        for message in messages:
            _, dense = message.get_dense_features(TEXT)
            if dense is not None:
                raise ValueError(f"{type(self).__name__} uses sparse features only; remove the dense featurizer")
        X = sentence_features(messages, getattr(self.clf, "n_features_in_", None))
        return tfidf_transform(self.tfidf, self.idf, X) if self.tfidf is not None else X

    def process(self, messages: List[Message]) -> List[Message]:
        """Rasa's `process`, with the probabilities from `predict_proba` below."""
        probabilities = predict_proba(self.clf, self._create_X(messages))
        for message, row in zip(messages, probabilities, strict=True):
            ranking = sorted(
                ({"name": name, "confidence": value} for name, value in zip(self.clf.classes_, row, strict=True)),
                key=lambda entry: -entry["confidence"],
            )
            message.set("intent", ranking[0], add_to_output=True)
            if self.config[RANKING_LENGTH] > 0:
                ranking = ranking[: self.config[RANKING_LENGTH]]
            message.set("intent_ranking", ranking, add_to_output=True)
        return messages

    def _create_training_matrix(self, training_data: TrainingData) -> Tuple[csr_matrix, List[str]]:
        self.tfidf, self.idf = None, None
        X, y = super()._create_training_matrix(training_data)
        if self.config["tfidf"] and X.shape[0]:
            self.tfidf = new_tfidf().fit(X)
            self.idf = self.tfidf.idf_
            X = self.tfidf.transform(X)
        return X, y

    def persist(self) -> None:
        """The fitted regression as plain arrays (`save_linear`) instead of Rasa's skops file."""
        with self._model_storage.write_to(self._resource) as model_dir:
            if hasattr(self.clf, "coef_"):
                save_linear(self.clf, model_dir / LINEAR_FILE)
            if self.tfidf is not None:
                np.save(model_dir / IDF_FILE, self.idf, allow_pickle=False)

    @classmethod
    def load(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
        **kwargs: Any,
    ) -> "SparseLogisticRegressionClassifier":
        clf, idf = None, None
        try:
            with model_storage.read_from(resource) as model_dir:  # one read for both files
                if (model_dir / LINEAR_FILE).exists():
                    clf = load_linear(model_dir / LINEAR_FILE)
                if (model_dir / IDF_FILE).exists():
                    idf = np.load(model_dir / IDF_FILE, allow_pickle=False)
        except ValueError:  # no such resource: Rasa's load below makes an untrained classifier
            pass
        if clf is not None:
            component = cls(config, execution_context.node_name, model_storage, resource)
            component.clf = clf
        else:  # persisted by Rasa's own classifier, or not at all: Rasa's load
            component = super().load(config, model_storage, resource, execution_context, **kwargs)
        if component.config["tfidf"] and idf is not None:
            component.tfidf, component.idf = new_tfidf(), idf
            component.tfidf.idf_ = idf
        return component


def save_linear(clf: Any, path: Path) -> None:
    """A fitted scikit-learn LogisticRegression as numpy arrays plus its parameters as JSON.

    Rasa stores it with skops, whose import dominated the server's start-up:
    it builds its list of trusted types by searching every loaded module (TensorFlow's
    thousands among them) for each numpy and scipy function. Plain arrays load without
    skops and without unpickling anything."""
    np.savez(
        path,
        coef=clf.coef_,
        intercept=clf.intercept_,
        classes=np.asarray(clf.classes_),
        params=np.array(json.dumps(clf.get_params())),
    )


def load_linear(path: Path) -> Any:
    """The LogisticRegression `save_linear` wrote, ready to predict."""
    from sklearn.linear_model import LogisticRegression

    with np.load(path, allow_pickle=False) as saved:
        clf = LogisticRegression(**json.loads(str(saved["params"])))
        clf.coef_, clf.intercept_, clf.classes_ = saved["coef"], saved["intercept"], saved["classes"]
    clf.n_features_in_ = clf.coef_.shape[1]
    return clf


def predict_proba(clf: Any, X: csr_matrix) -> np.ndarray:
    """`clf.predict_proba(X)` of a fitted scikit-learn LogisticRegression. For one sparse row
    and a multinomial model (softmax over the classes' scores), the scores are computed on
    the row's non-zero columns alone: scikit-learn's input checks and general sparse product
    cost about ten times as much as the arithmetic for one message. Anything else goes to
    scikit-learn."""
    from sklearn.utils.extmath import softmax

    multinomial = clf.multi_class == "multinomial" or (
        clf.multi_class == "auto" and clf.classes_.size > 2 and clf.solver != "liblinear"
    )
    if not (multinomial and X.shape == (1, clf.coef_.shape[1]) and isinstance(X, csr_matrix)):
        return clf.predict_proba(X)
    scores = clf.coef_[:, X.indices] @ X.data + clf.intercept_
    return softmax(scores[np.newaxis, :], copy=False)


def tfidf_transform(tfidf: Any, idf: np.ndarray, X: csr_matrix) -> csr_matrix:
    """`tfidf.transform(X)` of a fitted TfidfTransformer made by `new_tfidf`, whose `idf_` is
    `idf`. For one sparse row, the same arithmetic on the row's stored counts: 1 + log(count),
    times the idf, scaled to unit length."""
    if not (X.shape == (1, idf.shape[0]) and isinstance(X, csr_matrix) and tfidf.sublinear_tf
            and tfidf.use_idf and tfidf.norm == "l2" and bool(np.all(X.data > 0))):
        return tfidf.transform(X)
    data = np.log(X.data.astype(np.float64)) + 1.0
    data *= idf[X.indices]
    length = np.sqrt(data @ data)
    if length > 0:
        data /= length
    return csr_matrix((data, X.indices.copy(), X.indptr.copy()), shape=X.shape)


def new_tfidf() -> Any:
    from sklearn.feature_extraction.text import TfidfTransformer

    return TfidfTransformer(sublinear_tf=True)
