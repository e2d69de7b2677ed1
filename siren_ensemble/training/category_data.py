"""Multi-label targets from records' categories, and per-category metrics (training and evaluation share them).

A benign record is a negative for every category. A harmful record without categories says nothing
about them, so it is left out (``rows`` are the records that count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.records import SafetyRecord
from ..evaluation.metrics import binary_metrics, rounded_fields


@dataclass(frozen=True)
class CategoryTargets:
    #: Indices of the records that count: benign ones and harmful ones with categories.
    rows: np.ndarray
    #: rows x categories, 0/1.
    labels: np.ndarray


def category_targets(records: Sequence[SafetyRecord], categories: Sequence[str]) -> CategoryTargets:
    rows = [index for index, record in enumerate(records) if record.label == 0 or record.categories]
    labels = np.zeros((len(rows), len(categories)), dtype=np.float32)
    column = {key: position for position, key in enumerate(categories)}
    for row, index in enumerate(rows):
        for key in records[index].categories or ():
            if key in column:
                labels[row, column[key]] = 1.0
    return CategoryTargets(np.asarray(rows, dtype=int), labels)


def positives_per_category(records: Sequence[SafetyRecord], categories: Sequence[str]) -> dict[str, int]:
    return {key: sum(1 for record in records if record.label == 1 and key in (record.categories or ())) for key in categories}


@dataclass(frozen=True)
class CategoryMetrics:
    positives: int
    threshold: float
    precision: float | None
    recall: float | None
    f1: float | None
    auroc: float | None

    def to_dict(self) -> dict:
        return rounded_fields(self)


def per_category_metrics(labels: np.ndarray, scores: np.ndarray, categories: Sequence[str],
                         thresholds: dict[str, float]) -> dict[str, CategoryMetrics]:
    """One-vs-rest metrics of each category's score at its threshold; None where a class is missing."""
    metrics = {}
    for column, key in enumerate(categories):
        column_metrics = binary_metrics(labels[:, column] == 1, scores[:, column], thresholds[key])
        metrics[key] = CategoryMetrics(
            positives=column_metrics.harmful, threshold=column_metrics.threshold, precision=column_metrics.precision,
            recall=column_metrics.recall, f1=column_metrics.f1, auroc=column_metrics.auroc,
        )
    return metrics


def macro_f1(metrics: dict[str, CategoryMetrics], min_positives: int = 1) -> float | None:
    """Mean F1 over the categories with at least ``min_positives`` positive records."""
    values = [m.f1 for m in metrics.values() if m.positives >= min_positives and m.f1 is not None]
    return float(np.mean(values)) if values else None


def mean_auroc(metrics: dict[str, CategoryMetrics], min_positives: int = 1) -> float | None:
    values = [m.auroc for m in metrics.values() if m.positives >= min_positives and m.auroc is not None]
    return float(np.mean(values)) if values else None
