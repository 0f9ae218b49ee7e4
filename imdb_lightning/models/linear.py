"""Linear references: logistic regression over word uni- and bigrams, with scikit-learn.

- `tfidf`: TF-IDF weighted counts (sublinear tf), the classic strong baseline.
- `nbsvm`: binarized counts scaled by naive-Bayes log-count ratios (Wang & Manning 2012,
  "Baselines and Bigrams"), fitted here with logistic regression rather than an SVM.

They train in well under a minute on the 25,000 training reviews and show what the recurrent
models buy over reading a review as a bag of word pairs. `ngrams=3` adds word triples (Mesnil et
al. 2014's NBSVM-uni+bi+tri): about 4.6M features instead of 1.2M; under a minute alone here, 2-3 beside a training run.

`Stack` weighs a linear reference's logit with recurrent classifiers' logits (`linear --combine`).
Both save as plain arrays (`save`/`load`, numpy without pickle), so `predict` can use them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..data.tokenizer import python_normalize
from ..errors import UserError
from ..runs import atomic_write

# Words and single punctuation marks, as tokens. On two film-grouped splits of the training reviews
# NBSVM reached 90.66% with these, 90.52% with words alone and 90.44% with words and "!?" only;
# C = 0.1 (NBSVM) and 30 (TF-IDF) were the best of 0.03-1 and 3-100.
TOKEN_PATTERN = r"(?u)\b\w+\b|[^\w\s]"
DEFAULT_C = {"tfidf": 30.0, "nbsvm": 0.1}
LINEAR_FILE = "linear.npz"  # in a `linear` run folder


@dataclass
class LinearReference:
    kind: str = "nbsvm"
    C: float = 0.0  # inverse regularisation strength; 0 takes the kind's default (DEFAULT_C)
    ngrams: int = 2
    lowercase: bool = True

    def __post_init__(self):
        if self.kind not in DEFAULT_C:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(DEFAULT_C)}")
        self.C = self.C or DEFAULT_C[self.kind]
        self._normalize = python_normalize(self.lowercase)
        self.vectorizer, self.weights, self.intercept = None, None, 0.0

    def _vectorizer(self, vocabulary: Optional[dict] = None):
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

        if self.kind == "tfidf":
            return TfidfVectorizer(ngram_range=(1, self.ngrams), min_df=2, sublinear_tf=True,
                                   token_pattern=TOKEN_PATTERN, lowercase=False, vocabulary=vocabulary)
        return CountVectorizer(ngram_range=(1, self.ngrams), binary=True, token_pattern=TOKEN_PATTERN,
                               lowercase=False, vocabulary=vocabulary)

    def _texts(self, texts: list[str]) -> list[str]:
        return [self._normalize(t) for t in texts]

    def fit(self, texts: list[str], labels: np.ndarray) -> LinearReference:
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        self.vectorizer = self._vectorizer()
        try:
            features = self.vectorizer.fit_transform(self._texts(texts))  # (reviews, n-grams), sparse
        except ValueError as err:  # scikit-learn's "no terms remain": too few reviews, or reviews of one word each
            raise UserError(f"linear {self.kind}: the {len(texts)} training reviews give it no features ({err})") from err
        scale = 1.0
        if self.kind == "nbsvm":  # features are 0/1 counts; the classifier sees them scaled by
            # the log-count ratio r = log((p / |p|_1) / (q / |q|_1)), with add-one smoothing
            p = 1 + np.asarray(features[labels == 1].sum(0)).ravel()
            q = 1 + np.asarray(features[labels == 0].sum(0)).ravel()
            scale = np.log(p / p.sum()) - np.log(q / q.sum())
            features = features.multiply(scale).tocsr()
        classifier = LogisticRegression(C=self.C, solver="liblinear", max_iter=2000).fit(features, labels)
        # one weight per n-gram with the scale folded in: a logit is one sparse dot product
        self.weights, self.intercept = classifier.coef_[0] * scale, float(classifier.intercept_[0])
        return self

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.vectorizer.transform(self._texts(texts)) @ self.weights + self.intercept  # (texts,)

    @property
    def parameters(self) -> int:
        return int(self.weights.size + 1)

    def save(self, path: Path | str) -> None:
        """Plain arrays in one .npz: the n-grams (newline-joined UTF-8: tokens hold no whitespace), their weights."""
        names = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        arrays = {"vocabulary": np.frombuffer("\n".join(names).encode(), dtype=np.uint8),
                  "weights": self.weights.astype(np.float32), "intercept": np.float64(self.intercept),
                  "settings": np.array(json.dumps({"kind": self.kind, "C": self.C, "ngrams": self.ngrams,
                                                   "lowercase": self.lowercase, "token_pattern": TOKEN_PATTERN}))}
        if self.kind == "tfidf":
            arrays["idf"] = self.vectorizer.idf_

        def write(tmp: str):
            with open(tmp, "wb") as handle:  # a handle: savez would add .npz to a temporary name
                np.savez_compressed(handle, **arrays)
        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path | str) -> LinearReference:
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {k: saved[k] for k in saved.files}
            settings = json.loads(str(arrays["settings"]))
            model = cls(settings["kind"], settings["C"], settings["ngrams"], settings["lowercase"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}: not a saved linear model ({type(err).__name__}: {err})") from err
        if settings["token_pattern"] != TOKEN_PATTERN:
            raise UserError(f"{path}: saved with another tokenization ({settings['token_pattern']!r}); refit it")
        names = arrays["vocabulary"].tobytes().decode().split("\n")
        model.vectorizer = model._vectorizer({name: i for i, name in enumerate(names)})
        if model.kind == "tfidf":
            model.vectorizer.idf_ = arrays["idf"]
        model.weights, model.intercept = arrays["weights"].astype(np.float64), float(arrays["intercept"])
        return model


class Stack:
    """A linear reference and recurrent classifiers voting together: a logistic regression on their
    logits (stacking). Its weights are fitted on the validation reviews, so the validation figure
    comes from cross-fitting: each review scored by a stacker fitted without its film.
    `predictors` are anything with `logits(texts)` (serve's Predictor)."""

    def __init__(self, linear: LinearReference, predictors: list, weights: Optional[list[float]] = None):
        self.linear, self.predictors, self.weights = linear, predictors, weights  # [linear, *recurrent, bias]

    def features(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.linear.logits(texts), *(p.logits(texts) for p in self.predictors)], axis=1)  # (texts, 1 + runs)

    def fit(self, texts: list[str], labels: np.ndarray, films: np.ndarray, folds: int = 5) -> np.ndarray:
        """Fit the weights on these (validation) reviews; return their cross-fitted logits (texts,)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold

        x = self.features(texts)
        out = np.empty(len(texts))
        for fit_rows, held in GroupKFold(min(folds, len(np.unique(films)))).split(x, labels, films):
            out[held] = LogisticRegression().fit(x[fit_rows], labels[fit_rows]).decision_function(x[held])
        stacker = LogisticRegression().fit(x, labels)
        self.weights = [*map(float, stacker.coef_[0]), float(stacker.intercept_[0])]
        return out

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.features(texts) @ np.array(self.weights[:-1]) + self.weights[-1]
