"""The HTTP service: ``siren-ensemble serve`` (needs the ``serve`` extra: FastAPI, uvicorn, websockets).

``app.create_app`` builds the ASGI app, ``server.build_server`` the uvicorn server, and
``settings.ServeSettings`` holds the limits; this package imports nothing heavy by itself.
"""
