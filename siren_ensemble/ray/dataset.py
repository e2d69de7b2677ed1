"""Scoring a Ray Dataset: ``map_batches`` over an actor pool, each actor loading the ensemble once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.data

from ..config import EnsembleConfig, RayDataConfig, load_config
from ..decision import DecisionPath
from ..ensemble import Ensemble, EnsembleResult
from ..errors import SirenError
from ..members import validate_plan
from .rows import ID_COLUMN, check_input_schema, results_table, row_texts


def score_dataset(ds: ray.data.Dataset, config: EnsembleConfig | str | Path, options: RayDataConfig | None = None,
                  threshold: float | None = None) -> ray.data.Dataset:
    """One output row per input row, in the input's order: its ``id`` (when the input has one) and the fields of
    ``siren-ensemble score`` (``rows.results_table``). A row without a text to score is answered by the
    failure policy with the reason under ``errors``; it never stops the others.

    ``options`` (default: the config's ``ray.data``) sizes the actor pool. Sets ``preserve_order`` on the
    dataset's context, which the datasets read with it share.
    """
    if not isinstance(config, EnsembleConfig):
        config = load_config(config)
    DecisionPath.from_config(config, validate_plan(config)[0])  # a bad config stops here, not in every actor
    options = options or config.ray.data
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        check_input_schema(schema.names, schema.types, "input")
    ds.context.execution_options.preserve_order = True
    low, high = (options.concurrency, options.concurrency) if isinstance(options.concurrency, int) else options.concurrency
    return ds.map_batches(
        EnsembleScorer, fn_constructor_kwargs={"config": config, "threshold": threshold}, batch_format="pyarrow",
        batch_size=options.batch_size, compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        num_cpus=options.num_cpus, num_gpus=options.num_gpus,
    )


class EnsembleScorer:
    """The callable class of ``map_batches``: one ensemble per actor, a table of results per batch."""

    def __init__(self, config: EnsembleConfig, threshold: float | None):
        self.ensemble = Ensemble.from_config(config)
        self.threshold = threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(ID_COLUMN) if ID_COLUMN in batch.column_names else None
        try:
            results = score_rows(self.ensemble, row_texts(batch), self.threshold)
        except SirenError as error:  # on_member_error: raise
            shown = ids.to_pylist() if ids is not None else []
            where = f"rows with ids {shown[0]!r} to {shown[-1]!r}" if shown else "a batch of rows"
            raise type(error)(f"{where}: {error}") from None
        staged = self.ensemble.decision.staged
        return results_table(ids, results, self.ensemble.member_names, staged)


def score_rows(ensemble: Ensemble, rows: list[tuple[str | None, str | None]], threshold: float | None) -> list[EnsembleResult]:
    """Per row ``(text, None)`` its score, per row ``(None, reason)`` the failure policy's answer; in order."""
    scored = [row for row, (_text, problem) in enumerate(rows) if problem is None]
    failed = [row for row, (_text, problem) in enumerate(rows) if problem is not None]
    results: list[Any] = [None] * len(rows)
    for row, result in zip(scored, ensemble.score_batch([rows[row][0] for row in scored], threshold=threshold)):
        results[row] = result
    for row, result in zip(failed, ensemble.unscorable([rows[row][1] for row in failed], threshold=threshold)):
        results[row] = result
    return results
