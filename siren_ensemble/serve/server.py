"""The uvicorn server for an app, with the settings that live at the protocol level."""

from __future__ import annotations

import uvicorn

from .settings import ServeSettings


def build_server(app, settings: ServeSettings, log_level: str = "info", access_log: bool = True) -> uvicorn.Server:
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=access_log,
        ws="websockets-sansio", ws_max_size=settings.max_body_bytes,
        # The service itself is the place for limits; the server only stops idle or oversized connections.
        timeout_keep_alive=5, lifespan="on",
    )
    return uvicorn.Server(config)
