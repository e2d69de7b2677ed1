"""Parquet on Ray Data, read as plain files: each row group in blocks, each task reserving the CPUs asked.

Ray's own ``read_parquet`` lists files in a task that takes a CPU whatever ``num_cpus`` says, so an actor
pool given every CPU would leave it waiting forever; this reader lists nothing in a task.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from .rows import ROWS_PER_BLOCK


class ScoreParquetDatasource(FileBasedDatasource):
    def __init__(self, paths: str | list[str], **file_based_datasource_kwargs):
        super().__init__(paths, file_extensions=["parquet"], **file_based_datasource_kwargs)

    def _open_input_source(self, filesystem, path: str, **open_args) -> "pa.NativeFile":
        return filesystem.open_input_file(path)  # Parquet is read by random access (its footer first)

    def _read_stream(self, f: "pa.NativeFile", path: str) -> Iterator[pa.Table]:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_BLOCK):
            yield pa.Table.from_batches([batch])
