"""The baselines SIREN is measured against, fitted on the same training data.

- ``last_layer_probe``: logistic regression on one mean-pooled layer: the last one (the terminal-layer
  guard the paper argues internal layers beat), or the head's best stage-1 layer (what the head's
  aggregation over layers must beat).
- ``tfidf``: TF-IDF word n-grams and logistic regression on the raw text, no LLM at all.
Both pick C on the validation split by harmful-class F1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

C_GRID = (0.01, 0.1, 1.0, 10.0)


def _best_on_validation(make_model, train_x, train_y, val_x, val_y):
    best, best_f1 = None, -1.0
    for C in C_GRID:
        model = make_model(C).fit(train_x, train_y)
        f1 = f1_score(val_y, model.predict(val_x), zero_division=0.0)
        if f1 > best_f1:
            best, best_f1 = model, f1
    return best


def last_layer_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray):
    """A fitted model with ``predict_proba``; ``*_x`` are last-layer pooled features."""
    def make(C):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=2000))

    return _best_on_validation(make, train_x, train_y, val_x, val_y)


def tfidf_classifier(train_texts: Sequence[str], train_y: np.ndarray, val_texts: Sequence[str], val_y: np.ndarray):
    def make(C):
        return make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
            LogisticRegression(C=C, class_weight="balanced", max_iter=2000),
        )

    return _best_on_validation(make, list(train_texts), train_y, list(val_texts), val_y)


def harmful_probability(model, x) -> np.ndarray:
    return model.predict_proba(x)[:, 1]
