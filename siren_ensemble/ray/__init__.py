"""Scale-out on Ray (the ``ray`` extra): score a corpus with Ray Data, serve traffic with Ray Serve.

``score_dataset(ds, config)`` scores a ``ray.data.Dataset`` with the same fields as ``siren-ensemble score``;
``serve_app(config)`` is the ``siren-ensemble serve`` app as a Ray Serve application. Only this package
imports ray (``import siren_ensemble`` never does), and each name below imports only what it needs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["score_dataset", "serve_app"]


def __getattr__(name: str) -> Any:
    if name == "score_dataset":
        from .dataset import score_dataset

        return score_dataset
    if name == "serve_app":
        from .serving import serve_app

        return serve_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
