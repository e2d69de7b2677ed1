"""``siren-ensemble score --engine ray``: read a corpus, score it on an actor pool, write the scores, summarise."""

from __future__ import annotations

import io
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow.parquet as pq
import ray.data

from ..config import EnsembleConfig, RayDataConfig
from .cluster import siren_error_in
from .dataset import score_dataset
from .jsonl import ScoreInputDatasource, ScoreLinesDatasink
from .parquet import ScoreParquetDatasource
from .paths import Format, check_output_free, data_files, format_of_name, input_format
from .rows import ID_COLUMN, check_input_schema
from .summary import CorpusSummary, summarise


#: CPUs reserved by a read or write task: none, so that actors given every CPU (4 actors x 4 CPUs on 16 cores) leave
#: Ray Data room to read and write; the I/O is light beside the scoring it feeds.
IO_TASK_CPUS = 0

#: Ray Data logs a failed task's traceback before raising it; the CLI prints the error itself, on one line.
RAY_DATA_ERROR_LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")


@dataclass(frozen=True)
class CorpusJob:
    input: str
    output: str
    #: None: from the output's name (``.jsonl`` or ``.parquet``), else Parquet.
    output_format: Format | None = None
    threshold: float | None = None
    #: Chat ``messages``: turns of context before the judged ones (default: the config's).
    window: int | None = None


def score_corpus(config: EnsembleConfig, job: CorpusJob, options: RayDataConfig) -> CorpusSummary:
    """Run ``job`` on the connected Ray cluster (``cluster.ray_session``)."""
    output_format = job.output_format or format_of_name(job.output.rstrip("/")) or "parquet"
    check_output_free(job.output)
    corpus = read_corpus(job.input)
    # The UDF's own error (a SirenError naming the row) reaches the driver, not Ray Data's wrapper of it.
    corpus.context.raise_original_map_exception = True
    scored = score_dataset(corpus, config, options, job.threshold, job.window)
    start = time.perf_counter()
    try:
        with _quiet(*RAY_DATA_ERROR_LOGGERS):
            write_scores(scored, job.output, output_format)
    except Exception as error:
        found = siren_error_in(error)
        if found is None:
            raise
        raise type(found)(str(found).split("\n", 1)[0]) from None  # Ray appends its retry advice
    seconds = time.perf_counter() - start
    return summarise(written_rows(job.output, output_format), job.output, seconds)


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def read_corpus(location: str) -> ray.data.Dataset:
    """JSONL (each line as ``score --input`` reads it) or Parquet (columns ``text``, ``prompt``/``response`` or
    ``messages``, and ``id``)."""
    if input_format(location) == "jsonl":
        return ray.data.read_datasource(ScoreInputDatasource(location), num_cpus=IO_TASK_CPUS)
    filesystem, paths = data_files(location)
    schema = pq.read_schema(paths[0], filesystem=filesystem)
    check_input_schema(schema.names, schema.types, paths[0])
    return ray.data.read_datasource(ScoreParquetDatasource(location), num_cpus=IO_TASK_CPUS)


def write_scores(ds: ray.data.Dataset, location: str, output_format: Format) -> None:
    io_task = {"num_cpus": IO_TASK_CPUS}
    if output_format == "jsonl":
        ds.write_datasink(ScoreLinesDatasink(location), ray_remote_args=io_task)
    else:
        ds.write_parquet(location, ray_remote_args=io_task)


def written_rows(location: str, output_format: Format) -> Iterator[tuple[Any, bool, dict[str, str] | None]]:
    """``(id, is_harmful, errors)`` of each row written, read back from ``location`` here, on the driver: the
    score files are small (no texts), and reading them is what proves each row was written once."""
    filesystem, paths = data_files(location)
    for path in paths:
        if format_of_name(path) != output_format:
            continue
        if output_format == "jsonl":
            with filesystem.open_input_stream(path) as stream:
                for line in io.TextIOWrapper(io.BufferedReader(stream), encoding="utf-8"):
                    row = json.loads(line)
                    yield row.get(ID_COLUMN), row["is_harmful"], row.get("errors")
            continue
        table = pq.read_table(path, filesystem=filesystem)
        ids = table.column(ID_COLUMN).to_pylist() if ID_COLUMN in table.column_names else [None] * table.num_rows
        for row_id, is_harmful, errors in zip(ids, table.column("is_harmful").to_pylist(), table.column("errors").to_pylist()):
            yield row_id, is_harmful, dict(errors) if errors else None
