"""Connecting to Ray: a cluster's address, or a local instance started (and stopped) for the run."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import ray

from ..errors import SirenError


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connect to ``address`` (``ray://host:10001``, ``host:6379``, ``auto``), else start a local instance
    (or join the one ``RAY_ADDRESS`` names); disconnect at the end. A session already open is reused."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise SirenError(f"--address {address}: cannot connect to Ray ({error})") from None
    try:
        yield
    finally:
        ray.shutdown()


def siren_error_in(error: BaseException) -> SirenError | None:
    """The SirenError a Ray error carries (a bad input row in a task, a bad file on a node), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):  # a RayTaskError: the task's own exception (the error itself prints a traceback)
            current = cause
            continue
        if isinstance(current, SirenError):
            return current
        current = current.__cause__ or current.__context__
    return None
