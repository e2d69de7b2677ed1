"""Markdown tables of an evaluation report: overall, per source, leave-one-source-out."""

from __future__ import annotations

OVERALL_COLUMNS = (("f1", "F1"), ("macro_f1", "macro F1"), ("precision", "precision"), ("recall", "recall"),
                   ("fpr", "FPR"), ("auroc", "AUROC"), ("auprc", "AUPRC"), ("tpr_at_1pct_fpr", "TPR@1%FPR"),
                   ("tpr_at_5pct_fpr", "TPR@5%FPR"), ("threshold", "threshold"))


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def headline(metrics: dict) -> tuple[str, float | None]:
    """The number that matters for a source: recall if it is all harmful, FPR if all benign, else F1."""
    if metrics["benign"] == 0:
        return "recall", metrics["recall"]
    if metrics["harmful"] == 0:
        return "FPR", metrics["fpr"]
    return "F1", metrics["f1"]


def overall_table(report: dict) -> str:
    rows = [[name] + [_cell(result["overall"][key]) for key, _ in OVERALL_COLUMNS] for name, result in report["scorers"].items()]
    return _table(["scorer"] + [label for _, label in OVERALL_COLUMNS], rows)


def source_table(by_scorer: dict[str, dict[str, dict]]) -> str:
    """Rows are sources, columns scorers; each cell is the source's headline metric."""
    scorers = list(by_scorer)
    sources = sorted({source for per_source in by_scorer.values() for source in per_source})
    rows = []
    for source in sources:
        first = next(per_source[source] for per_source in by_scorer.values() if source in per_source)
        metric, _ = headline(first)
        cells = [_cell(headline(by_scorer[name][source])[1]) if source in by_scorer[name] else "-" for name in scorers]
        rows.append([source, f"{first['harmful']}/{first['benign']}", metric] + cells)
    return _table(["source", "harmful/benign", "metric"] + scorers, rows)


KIND_COLUMNS = (("auroc", "AUROC"), ("recall", "recall"), ("fpr", "FPR"))


def by_kind_table(by_kind: dict[str, dict[str, dict]]) -> str:
    """Rows are scorers; per kind of input, its AUROC, recall and FPR (at the scorer's threshold)."""
    kinds = list(by_kind)
    scorers = list(next(iter(by_kind.values()), {}))
    rows = [[name] + [_cell(by_kind[kind][name][key]) for kind in kinds for key, _ in KIND_COLUMNS] for name in scorers]
    return _table(["scorer"] + [f"{kind} {label}" for kind in kinds for _, label in KIND_COLUMNS], rows)


def _by_scorer(held_out: dict[str, dict]) -> dict[str, dict]:
    """A held-out table (group -> scorer -> metrics) turned scorer -> group -> metrics."""
    by_scorer: dict[str, dict] = {}
    for group, results in held_out.items():
        if group == "_misclassified":
            continue
        for name, metrics in results.items():
            by_scorer.setdefault(name, {})[group] = metrics
    return by_scorer


def render(report: dict) -> str:
    parts = [f"## Overall ({report.get('split') or 'data'})", overall_table(report), "",
             f"## Per source ({report.get('split') or 'data'})",
             source_table({name: result["per_source"] for name, result in report["scorers"].items()})]
    if report.get("by_kind"):
        parts += ["", f"## By kind of input ({report.get('split') or 'data'}: prompts alone, prompt and response)",
                  by_kind_table(report["by_kind"])]
    if report.get("cascade"):
        parts += ["", f"## Cascade ({report.get('split') or 'data'})", cascade_table(report["cascade"])]
    if report.get("languages"):
        from .languages import language_table

        parts += ["", f"## Languages ({report.get('split') or 'data'}; runtime: the `languages` rule applied)",
                  language_table(report["languages"])]
    loso = report.get("leave_one_source_out")
    for key, title in (("leave_one_source_out", "Leave one source out (each source scored by members refitted without it)"),
                       ("leave_one_language_out", "Leave one language out (each translated language scored by members "
                                                  "refitted without it)")):
        if report.get(key):
            parts += ["", f"## {title}", source_table(_by_scorer(report[key]))]
    if report.get("categories"):
        parts += ["", f"## Harm categories ({report.get('split') or 'data'}, ensemble)", category_table(report["categories"])]
        if report["categories"].get("leave_one_source_out"):
            parts += ["", "## Harm categories, leave one source out (category heads refitted without it)",
                      category_loso_table(report["categories"]["leave_one_source_out"])]
    if report.get("misclassified"):
        shown = report["misclassified"]
        parts += ["", f"## Misclassified examples ({report.get('split') or 'data'}, {shown['scorer']})",
                  examples_list(shown)]
    if loso and loso.get("_misclassified"):
        parts += ["", "## Misclassified examples, leave one source out (ensemble (config))"]
        for source, shown in loso["_misclassified"].items():
            parts += [f"### {source}", examples_list(shown)]
    return "\n".join(parts) + "\n"


CATEGORY_COLUMNS = (("positives", "positives"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
                    ("auroc", "AUROC"), ("threshold", "threshold"))


def category_table(section: dict) -> str:
    rows = [[key] + [_cell(metrics[field]) for field, _ in CATEGORY_COLUMNS] for key, metrics in section["metrics"].items()]
    minimum = next(key for key in section if key.startswith("macro_f1_min"))
    return (f"{_table(['category'] + [label for _, label in CATEGORY_COLUMNS], rows)}\n\n"
            f"Macro-F1: {_cell(section['macro_f1'])} over every category with positives, {_cell(section[minimum])} over "
            f"those with at least {minimum.removeprefix('macro_f1_min')}; mean AUROC {_cell(section['mean_auroc'])}. "
            f"{section['records']} records (benign, and harmful with categories); "
            f"{section['uncategorised_harmful']} harmful records without categories left out.")


def category_loso_table(by_source: dict) -> str:
    rows = [[source, str(row["records"]), _cell(row["macro_f1"]), _cell(row["mean_auroc"]),
             ", ".join(f"{key} {metrics['f1']:.2f}" for key, metrics in row["metrics"].items() if metrics["positives"])]
            for source, row in by_source.items()]
    return _table(["held-out source", "records", "macro-F1", "mean AUROC", "F1 per category present"], rows)


def examples_list(found: dict, width: int = 160) -> str:
    lines = []
    for kind, label in (("missed_harmful", "missed harmful"), ("flagged_benign", "flagged benign")):
        for source, examples in sorted(found.get(kind, {}).items()):
            for example in examples:
                text = " ".join(example["text"].split())
                text = text if len(text) <= width else text[: width - 1] + "…"
                lines.append(f"- {label} ({source}, score {example['score']:.3f}): {text}")
    return "\n".join(lines) if lines else "- none"


def cascade_table(cascade: dict) -> str:
    """One row per stage: its members, its bands and the share of texts it decided."""
    band_cell = lambda value: "-" if value is None else f"{value:.4g}"  # noqa: E731
    rows = [[str(index), ", ".join(members), band_cell(band["low"]), band_cell(band["high"]), _cell(share)]
            for index, (members, band, share) in enumerate(zip(cascade["stages"], cascade["bands"], cascade["decided_share"]))]
    table = _table(["stage", "members", "low", "high", "decided"], rows)
    return (f"{table}\n\nVerdicts equal to every member's (at the cascade's threshold): "
            f"{_cell(cascade['agreement_with_every_member'])}; recall {_cell(cascade['recall'])} "
            f"(every member: {_cell(cascade['recall_every_member'])}).")
