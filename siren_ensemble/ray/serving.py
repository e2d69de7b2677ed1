"""``siren-ensemble serve --engine ray``: the service's FastAPI app (``serve.app``) as a Ray Serve deployment.

Each replica builds the same app as the one-process server, with its routes, auth, limits, failure policy and
error shapes, and only the batcher swapped for ``@serve.batch`` (``serve_batcher``). What uvicorn's protocol
guards in one process (header and body deadlines, the connection cap) is the Serve proxy's business here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ray import serve
from ray.serve import Application

from ..config import EnsembleConfig, RayServeConfig, load_config
from ..routing import Routes
from ..ensemble import Ensemble
from ..members import validate_plan
from ..serve.app import create_app
from ..serve.settings import ServeSettings
from .cluster import ray_session
from .serve_batcher import serve_batcher

APP_NAME = "siren-ensemble"


@serve.deployment(name=APP_NAME)
@serve.ingress()
class SirenService:
    def __init__(self, config: EnsembleConfig, settings: ServeSettings):
        self._config = config
        self._settings = settings

    def __serve_build_asgi_app__(self):
        # Models load in the app's startup, in the background, as in one process: /readyz says when.
        return create_app(lambda: Ensemble.from_config(self._config), self._settings, serve_batcher)

    def check_health(self) -> None:
        """Models that failed to load make the replica unhealthy: Ray Serve replaces it (one process: /healthz 503)."""
        error = self.app.state.service.load_error
        if error is not None:
            raise RuntimeError(f"models failed to load: {error}")


def serve_app(config: EnsembleConfig | str | Path, settings: ServeSettings = ServeSettings(),
              options: RayServeConfig | None = None) -> Application:
    """The application to ``serve.run``: ``options`` (default: the config's ``ray.serve``) sets the replicas."""
    if not isinstance(config, EnsembleConfig):
        config = load_config(config)
    Routes.from_config(config, validate_plan(config)[0])  # a bad config stops here, before any replica starts
    return SirenService.options(**deployment_options(options or config.ray.serve)).bind(config, settings)


def deployment_options(options: RayServeConfig) -> dict[str, Any]:
    replicas: dict[str, Any]
    if isinstance(options.replicas, int):
        replicas = {"num_replicas": options.replicas}
    else:
        low, high = options.replicas
        replicas = {"autoscaling_config": {"min_replicas": low, "max_replicas": high,
                                           "target_ongoing_requests": options.target_ongoing_requests}}
    return {"ray_actor_options": {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
            "max_ongoing_requests": options.max_ongoing_requests, **replicas}


def run_service(config: EnsembleConfig, settings: ServeSettings, options: RayServeConfig, address: str | None,
                announce: Callable[[str], None] = print) -> None:
    """Deploy on the cluster at ``address`` (or a local instance) and serve until interrupted."""
    with ray_session(address):
        serve.start(http_options={"host": settings.host, "port": settings.port, "keep_alive_timeout_s": settings.keep_alive_s})
        serve.run(serve_app(config, settings, options), name=APP_NAME, route_prefix="/")
        announce(f"serving on http://{settings.host}:{settings.port} (Ray Serve; Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.delete(APP_NAME)
