"""Recall and FPR per language of an evaluated split, as the heads score it and as the runtime decides it (the
config's ``languages`` rule applied on top: text in an unvalidated language is flagged under ``unvalidated: flag``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..config import LanguagesConfig
from ..data.records import SafetyRecord
from ..language import LanguagePolicy
from .metrics import binary_metrics

#: The row of texts the language-ID model was not sure of (short, or mixed).
UNDETERMINED = "undetermined"


def language_report(languages: LanguagesConfig, records: Sequence[SafetyRecord], labels: np.ndarray, scores: np.ndarray,
                    threshold: float) -> dict:
    policy = LanguagePolicy.from_config(languages)
    readings = policy.read([record.scored_text for record in records])
    # Grouped by the language a record was written in when the data says so (translations), else as read.
    detected = np.array([record.language or reading.language or UNDETERMINED for record, reading in zip(records, readings)])
    flagged = np.array([reading.unvalidated and policy.flag_unvalidated for reading in readings], dtype=bool)
    decided = np.where(flagged, 1.0, scores)  # what the runtime answers: flagged whatever the heads' score
    by_language = {}
    for language in sorted(set(detected.tolist()), key=lambda code: (-(detected == code).sum(), code)):
        rows = detected == language
        by_language[language] = {
            "validated": language in policy.validated if language != UNDETERMINED else None,
            "heads": binary_metrics(labels[rows], scores[rows], threshold).to_dict(),
            "runtime": binary_metrics(labels[rows], decided[rows], threshold).to_dict(),
        }
    return {"validated": sorted(policy.validated), "unvalidated": languages.unvalidated,
            "flagged_by_language": int(flagged.sum()),
            "runtime_overall": binary_metrics(labels, decided, threshold).to_dict(), "by_language": by_language}


def language_table(report: dict) -> str:
    header = "| language | harmful/benign | recall (heads) | FPR (heads) | recall (runtime) | FPR (runtime) |"
    lines = [header, "|---|---|---|---|---|---|"]
    for language, entry in report["by_language"].items():
        heads, runtime = entry["heads"], entry["runtime"]
        mark = "" if entry["validated"] in (True, None) else " (unvalidated)"
        cells = [_rate(heads["recall"]), _rate(heads["fpr"]), _rate(runtime["recall"]), _rate(runtime["fpr"])]
        lines.append(f"| {language}{mark} | {heads['harmful']}/{heads['benign']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
