"""``evaluate-conversations``: recall and FPR of conversations judged in context, by their last turns alone,
and by either.

In context: ``score_conversation``'s context view (``judge="context"``: the window, each backbone's chat
template). Alone: the last user turn and its answer as one plain text, the way ``score`` reads a
prompt/response pair, which is how a chat is judged without conversation support. Either: the higher of
the two scores, as ``judge="either"`` (the default) answers; computed from the two, not scored again.
All at the config's threshold. This runs the backbones (rendered conversations are not in the feature cache).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.conversations import KINDS, read_conversations
from ..ensemble import Ensemble
from .metrics import ROUTED_THRESHOLD, binary_metrics, onto_shared_scale


def evaluate_conversations(config_path: str | Path, data: str | Path, window: int | None = None,
                           progress: bool = False) -> dict:
    records = read_conversations(data)
    ensemble = Ensemble.from_config(config_path)
    window = ensemble.config.conversation.window if window is None else window
    in_context = ensemble.score_batch([ensemble.conversation_input(r.conversation, window, judge="context") for r in records],
                                      progress=progress)
    alone = ensemble.score_batch([ensemble.conversation_input(r.conversation, window, judge="last_turns") for r in records],
                                 progress=progress)
    labels = np.array([r.label for r in records])
    kinds = np.array([r.kind for r in records])
    views = (("in_context", in_context), ("last_turns_alone", alone))
    if ensemble.routes.routed:  # each score on the scale where its own route's threshold is the shared one
        scores = {way: onto_shared_scale([r.score for r in results], [r.threshold for r in results]) for way, results in views}
        threshold = ROUTED_THRESHOLD
    else:
        scores = {way: np.array([r.score for r in results]) for way, results in views}
        threshold = ensemble.threshold
    scores["either"] = np.maximum(scores["in_context"], scores["last_turns_alone"])

    def summary(rows: np.ndarray) -> dict:
        return {way: binary_metrics(labels[rows], values[rows], threshold).to_dict() for way, values in scores.items()}

    return {
        "config": str(config_path), "data": str(data), "window": window,
        "threshold": ensemble.threshold if not ensemble.routes.routed else ensemble.routes.thresholds(),
        "overall": summary(np.ones(len(records), dtype=bool)),
        "per_kind": {kind: summary(kinds == kind) for kind in KINDS if (kinds == kind).any()},
        "context_turns_read": float(np.mean([r.conversation.context_turns for r in in_context if r.conversation])),
        "dropped_turns": int(sum(r.conversation.dropped_turns for r in in_context if r.conversation)),
        "judged_turns_truncated": int(sum(r.truncated for r in in_context)),
        "failed": {"in_context": int(sum(bool(r.errors) for r in in_context)),
                   "last_turns_alone": int(sum(bool(r.errors) for r in alone)),
                   "either": int(sum(bool(a.errors or b.errors) for a, b in zip(in_context, alone)))},
    }


def conversation_table(report: dict) -> str:
    """Markdown: per kind, the headline metric (recall of a harmful kind, FPR of a benign one) each way."""
    lines = ["| kind | conversations | metric | in context | last turns alone | either |", "|---|---|---|---|---|---|"]
    for kind, ways in report["per_kind"].items():
        first = ways["in_context"]
        metric = "recall" if first["benign"] == 0 else "FPR"
        key = "recall" if metric == "recall" else "fpr"
        lines.append(f"| {kind} | {first['count']} | {metric} | {ways['in_context'][key]:.3f} | "
                     f"{ways['last_turns_alone'][key]:.3f} | {ways['either'][key]:.3f} |")
    overall = report["overall"]
    lines.append(f"| all | {overall['in_context']['count']} | F1 | {_f1(overall['in_context'])} | "
                 f"{_f1(overall['last_turns_alone'])} | {_f1(overall['either'])} |")
    return "\n".join(lines) + (f"\n\nWindow {report['window']}, threshold {report['threshold']:.4f}; context turns read "
                               f"{report['context_turns_read']:.2f} on average, {report['dropped_turns']} turns dropped, "
                               f"{report['judged_turns_truncated']} conversations with the judged turns cut.")


def _f1(metrics: dict) -> str:
    return "-" if metrics["f1"] is None else f"{metrics['f1']:.3f}"
