"""``siren-ensemble score --engine ray``: read a corpus, score it on an actor pool, write the scores, summarise."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import ray.data

from ..config import EnsembleConfig, RayDataConfig
from .cluster import siren_error_in
from .dataset import score_dataset
from .jsonl import ScoreInputDatasource, ScoreLinesDatasink
from .paths import Format, check_output_free, format_of_name, input_format
from .rows import ID_COLUMN, check_input_schema
from .summary import CorpusSummary, summarise


@dataclass(frozen=True)
class CorpusJob:
    input: str
    output: str
    #: None: from the output's name (``.jsonl`` or ``.parquet``), else Parquet.
    output_format: Format | None = None
    threshold: float | None = None


def score_corpus(config: EnsembleConfig, job: CorpusJob, options: RayDataConfig) -> CorpusSummary:
    """Run ``job`` on the connected Ray cluster (``cluster.ray_session``)."""
    output_format = job.output_format or format_of_name(job.output.rstrip("/")) or "parquet"
    check_output_free(job.output)
    scored = score_dataset(read_corpus(job.input), config, options, job.threshold)
    start = time.perf_counter()
    try:
        write_scores(scored, job.output, output_format)
    except Exception as error:
        found = siren_error_in(error)
        if found is None:
            raise
        raise found from None
    seconds = time.perf_counter() - start
    return summarise(written_rows(job.output, output_format), job.output, seconds)


def read_corpus(location: str) -> ray.data.Dataset:
    """JSONL (each line as ``score --input`` reads it) or Parquet (``text`` or ``prompt``/``response``, ``id``)."""
    if input_format(location) == "jsonl":
        return ray.data.read_datasource(ScoreInputDatasource(location))
    ds = ray.data.read_parquet(location)
    check_input_schema(ds.schema().names, ds.schema().types, location)
    return ds


def write_scores(ds: ray.data.Dataset, location: str, output_format: Format) -> None:
    if output_format == "jsonl":
        ds.write_datasink(ScoreLinesDatasink(location))
    else:
        ds.write_parquet(location)


def written_rows(location: str, output_format: Format):
    """``(id, is_harmful, errors)`` of each row written, read back from ``location``."""
    if output_format == "jsonl":
        for batch in ray.data.read_text(location).iter_batches(batch_format="pyarrow"):
            for line in batch.column("text").to_pylist():
                row = json.loads(line)
                yield row.get(ID_COLUMN), row["is_harmful"], row.get("errors")
        return
    ds = ray.data.read_parquet(location)
    columns = [name for name in (ID_COLUMN, "is_harmful", "errors") if name in ds.schema().names]
    for batch in ds.select_columns(columns).iter_batches(batch_format="pyarrow"):
        ids = batch.column(ID_COLUMN).to_pylist() if ID_COLUMN in columns else [None] * batch.num_rows
        for row_id, is_harmful, errors in zip(ids, batch.column("is_harmful").to_pylist(), batch.column("errors").to_pylist()):
            yield row_id, is_harmful, dict(errors) if errors else None

