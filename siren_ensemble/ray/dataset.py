"""Scoring a Ray Dataset: ``map_batches`` over an actor pool, each actor loading the ensemble once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.data

from ..config import EnsembleConfig, RayDataConfig, load_config
from ..routing import Routes
from ..ensemble import Ensemble, EnsembleResult
from ..errors import InputError, SirenError
from ..inputs import InputRecord
from ..members import validate_plan
from .rows import ID_COLUMN, check_input_schema, results_table, row_records


def score_dataset(ds: ray.data.Dataset, config: EnsembleConfig | str | Path, options: RayDataConfig | None = None,
                  threshold: float | None = None, window: int | None = None) -> ray.data.Dataset:
    """One output row per input row, in the input's order: its ``id`` (when the input has one) and the fields of
    ``siren-ensemble score`` (``rows.output_schema``). Rows hold ``text``, ``prompt``/``response`` or chat
    ``messages`` (``window``: turns of context, default the config's). A row with nothing to score is answered
    by the failure policy with the reason under ``errors``; it never stops the others.

    ``options`` (default: the config's ``ray.data``) sizes the actor pool. Sets ``preserve_order`` on the
    dataset's context, which the datasets read with it share. Actors given every CPU leave none to the tasks
    that read ``ds`` and write the result: read and write with ``num_cpus=0`` then, as the CLI does.
    """
    if not isinstance(config, EnsembleConfig):
        config = load_config(config)
    Routes.from_config(config, validate_plan(config)[0])  # a bad config stops here, not in every actor
    options = options or config.ray.data
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        check_input_schema(schema.names, schema.types, "input")
    ds.context.execution_options.preserve_order = True
    low, high = (options.concurrency, options.concurrency) if isinstance(options.concurrency, int) else options.concurrency
    return ds.map_batches(
        EnsembleScorer, fn_constructor_kwargs={"config": config, "threshold": threshold, "window": window},
        batch_format="pyarrow", batch_size=options.batch_size, compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        num_cpus=options.num_cpus, num_gpus=options.num_gpus,
    )


class EnsembleScorer:
    """The callable class of ``map_batches``: one ensemble per actor, a table of results per batch."""

    def __init__(self, config: EnsembleConfig, threshold: float | None, window: int | None):
        self.ensemble = Ensemble.from_config(config)
        self.threshold = threshold
        self.window = window

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(ID_COLUMN).to_pylist() if ID_COLUMN in batch.column_names else [None] * batch.num_rows
        records = row_records(batch)
        raises = self.ensemble.config.on_member_error == "raise"
        for row_id, record in zip(ids, records):
            if raises and isinstance(record, str):
                raise InputError(f"row with id {row_id!r}: {record} (on_member_error is raise: the first bad row stops the run)")
        try:
            results = score_records(self.ensemble, records, self.threshold, self.window)
        except SirenError as error:  # on_member_error: raise, on a text or a member's failure
            raise type(error)(f"rows with ids {ids[0]!r} to {ids[-1]!r}: {error}") from None
        return results_table(batch.column(ID_COLUMN) if ID_COLUMN in batch.column_names else None, results, self.ensemble)


def score_records(ensemble: Ensemble, records: list[InputRecord | str], threshold: float | None,
                  window: int | None) -> list[EnsembleResult]:
    """Each record's result, in order; a reason (a row with nothing to score) gets the failure policy's answer."""
    inputs = [row for row, record in enumerate(records) if isinstance(record, InputRecord)]
    failed = [row for row, record in enumerate(records) if not isinstance(record, InputRecord)]
    scored = [ensemble.conversation_input(records[row].conversation, window) if records[row].conversation else records[row].scored
              for row in inputs]
    results: list[Any] = [None] * len(records)
    for row, result in zip(inputs, ensemble.score_batch(scored, threshold=threshold)):
        results[row] = result
    for row, result in zip(failed, ensemble.unscorable([records[row] for row in failed], threshold=threshold)):
        results[row] = result
    return results
