"""PNG plots: ROC and precision-recall curves of every scorer, and per-layer probe F1 of trained heads."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def curves(labels: np.ndarray, scores_by_name: Mapping[str, np.ndarray], directory: str | Path, title: str) -> list[Path]:
    plt = _pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in ("roc", "pr"):
        figure, axes = plt.subplots(figsize=(7, 6))
        for name, scores in scores_by_name.items():
            if kind == "roc":
                x, y, _ = roc_curve(labels, scores)
            else:
                y, x, _ = precision_recall_curve(labels, scores)
            axes.plot(x, y, label=name, linewidth=1.2)
        axes.set_xlabel("false-positive rate" if kind == "roc" else "recall")
        axes.set_ylabel("true-positive rate" if kind == "roc" else "precision")
        axes.set_title(f"{'ROC' if kind == 'roc' else 'Precision-recall'}: {title}")
        axes.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
        axes.grid(alpha=0.3)
        path = directory / f"{kind}.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def layer_f1(reports: Mapping[str, dict], path: str | Path) -> Path:
    """Validation F1 of each layer's probe, one line per trained head (from ``training_report.json``)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, report in reports.items():
        layers = [entry["layer"] for entry in report["layers"]]
        axes.plot(layers, [entry["validation_f1"] for entry in report["layers"]], marker="o", markersize=3, label=name)
    axes.set_xlabel("layer (block output)")
    axes.set_ylabel("probe validation F1")
    axes.set_title("Per-layer linear probe F1")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
