"""PNG plots: ROC and precision-recall curves of every scorer, per-layer probe F1 of trained heads, the layer
analysis (probe F1 and cosine gap per layer), category confusion, steering sweeps and ranker comparisons."""

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


def _save(plt, figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


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
    return _save(plt, figure, path)


def category_confusion(confusion: dict, path: str | Path, title: str) -> Path:
    """Rows: true categories (share of each row), columns: the category scored highest; counts written in."""
    plt = _pyplot()
    labels, counts = confusion["labels"], np.asarray(confusion["counts"], dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 1.0 + 0.55 * len(labels)))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    for row in range(len(labels)):
        for column in range(len(labels)):
            if counts[row, column]:
                axes.text(column, row, int(counts[row, column]), ha="center", va="center", fontsize=7,
                          color="white" if shares[row, column] > 0.5 else "black")
    axes.set_xlabel("category scored highest")
    axes.set_ylabel("true category")
    axes.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def layer_analysis(report: dict, path: str | Path) -> Path:
    """Probe F1 and the cosine-gap curve per layer (``layers.json``), the gap's range shaded, the cut dashed."""
    plt = _pyplot()
    rows = report["layers"]
    layers = [row["layer"] for row in rows]
    figure, (probes, cosines) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    probes.plot(layers, [row["probe_f1"] for row in rows], marker="o", markersize=3, label="probe F1 (validation)")
    probes.plot(layers, [row["probe_auroc"] for row in rows], linestyle=":", label="probe AUROC (validation)")
    probes.set_ylabel("probe score")
    probes.set_title(f"{Path(report['backbone']['model']).name}: where harm becomes readable")
    cosines.plot(layers, [row["cos_benign_benign"] for row in rows], label="benign-benign")
    cosines.plot(layers, [row["cos_benign_harmful"] for row in rows], label="benign-harmful")
    cosines.set_ylabel("mean cosine (mean-pooled states)")
    cosines.set_xlabel("layer (block output)")
    gap_axes = cosines.twinx()
    gap_axes.plot(layers, [row["gap"] for row in rows], color="black", linewidth=1.5, label="gap")
    gap_axes.set_ylabel("gap")
    gap = report["gap"]
    cut = report["recommended"]["max_layer"]
    for axes in (probes, cosines):
        if gap["opens"] is not None:
            axes.axvspan(gap["opens"], gap["stabilises"], color="tab:orange", alpha=0.15)
        axes.axvline(cut, color="tab:red", linestyle="--", linewidth=1)
        axes.grid(alpha=0.3)
    probes.legend(fontsize=8, loc="lower right")
    handles = cosines.get_legend_handles_labels()
    gap_handles = gap_axes.get_legend_handles_labels()
    cosines.legend(handles[0] + gap_handles[0], handles[1] + gap_handles[1], fontsize=8, loc="best")
    figure.text(0.01, 0.005, f"shaded: gap opens to stabilises; dashed: recommended cut (layer {cut})", fontsize=7)
    return _save(plt, figure, path)


def steering_tradeoff(report: dict, path: str | Path) -> Path:
    """A steering sweep (``steering.json``): refusal on harmful vs benign prompts, and fluency, per layer set and lambda."""
    plt = _pyplot()
    settings = report["settings"]
    unsteered = settings[0]
    by_layers: dict[str, list[dict]] = {}
    for setting in settings[1:]:
        by_layers.setdefault(",".join(map(str, setting["layers"])), []).append(setting)
    figure, (tradeoff, fluency) = plt.subplots(1, 2, figsize=(12, 5))
    for layers, rows in by_layers.items():
        rows = [unsteered, *sorted(rows, key=lambda row: row["lambda"])]
        x = [row["benign_prompts"]["refusal_rate_phrases"] for row in rows]
        y = [row["harmful_prompts"]["refusal_rate_phrases"] for row in rows]
        tradeoff.plot(x, y, marker="o", label=f"layers {layers}")
        for row, x_value, y_value in zip(rows, x, y):
            tradeoff.annotate(f"{row['lambda']:g}", (x_value, y_value), fontsize=7, xytext=(3, 3), textcoords="offset points")
        fluency.plot([row["lambda"] for row in rows], [row["perplexity"]["median"] for row in rows], marker="o",
                     label=f"layers {layers}")
    tradeoff.set_xlabel("benign prompts refused (over-refusal, phrase check)")
    tradeoff.set_ylabel("harmful prompts refused (phrase check)")
    tradeoff.set_title(f"Steering trade-off ({report['options']['direction']} direction; points: lambda)")
    fluency.set_xlabel(f"lambda ({report['options']['lambda_unit']})")
    fluency.set_ylabel("median perplexity under the unsteered model")
    fluency.set_title("Fluency of the answers")
    for axes in (tradeoff, fluency):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return _save(plt, figure, path)


#: The rankers a ranking plot shows, in this order, where the report has them.
RANKING_METHODS = ("random", "siren", "srr", "guarded")


def ranking_bars(report: dict, path: str | Path) -> Path:
    """An ``evaluate-ranker`` report: each ranker's pairwise accuracy on every subset, as grouped bars."""
    plt = _pyplot()
    methods = [name for name in RANKING_METHODS if name in report["methods"]]
    subsets = list(report["methods"]["siren"])
    figure, axes = plt.subplots(figsize=(max(8, 1.1 * len(subsets)), 4.5))
    width = 0.8 / len(methods)
    positions = np.arange(len(subsets))
    for number, name in enumerate(methods):
        values = [report["methods"][name][subset]["pairwise_accuracy"] or 0.0 for subset in subsets]
        axes.bar(positions + (number - (len(methods) - 1) / 2) * width, values, width, label=name)
    held_out = set(report.get("held_out_sources", ()))
    axes.set_xticks(positions, [f"{subset}\n(held out)" if subset.removeprefix("source:") in held_out else subset
                                for subset in subsets], rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("pairwise accuracy")
    axes.set_title(f"Rankers on {report['groups']} groups of the {report['split']} split")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, ncols=len(methods))
    return _save(plt, figure, path)
