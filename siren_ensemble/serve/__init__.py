"""The HTTP service: ``siren-ensemble serve`` (needs the ``serve`` extra: FastAPI, uvicorn, websockets)."""

from .app import create_app
from .server import build_server
from .settings import API_KEY_ENV, ServeSettings

__all__ = ["API_KEY_ENV", "ServeSettings", "build_server", "create_app"]
