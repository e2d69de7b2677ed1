"""The ASGI app: OpenAI-compatible moderation, our /v1/score and /v1/rank, WebSocket streaming, health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..ensemble import Ensemble
from ..errors import InputError
from ..input_kinds import PromptResponse
from .auth import is_authorized
from .metrics import ServiceMetrics
from .middleware import BodySizeLimit, HeaderSizeLimit, RequestMetrics
from .schemas import (ErrorResponse, ModerationRequest, ModerationResponse, RankRequest, RankResponse, ScoreRequest, StreamChunk,
                      StreamStart, error_body, moderation_result)
from .scoring import MakeBatcher, Scorer, micro_batcher
from .settings import ServeSettings

log = logging.getLogger("siren_ensemble.serve")

DEFAULT_MODEL_NAME = "siren-ensemble"
#: WebSocket close codes (RFC 6455): policy violation, message too big, try again later.
WS_POLICY_VIOLATION, WS_TOO_BIG, WS_TRY_AGAIN_LATER = 1008, 1009, 1013
#: Stream chunks that arrived while earlier ones were scored are fed together, at most this many at once.
MAX_COALESCED_CHUNKS = 64

#: The error answers the OpenAPI schema documents (FastAPI's own 422 is never sent: invalid bodies get 400).
_DOCUMENTED_ERRORS = {
    400: "malformed request; the message names the field",
    401: "missing or wrong API key (only when the service has one)",
    413: "body over the size limit",
    431: "headers over the size limit",
    503: "models not loaded yet (or failed to load)",
}
_API_ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in _DOCUMENTED_ERRORS.items()}

_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
                503: "service_unavailable"}


class _Service:
    """What the routes need: the scorer once models are loaded, or why they are not."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.scorer: Scorer | None = None
        self.load_error: str | None = None
        self.open_streams = 0

    def ready_scorer(self) -> Scorer:
        if self.scorer is None:
            raise HTTPException(503, f"models failed to load: {self.load_error}" if self.load_error else "models are loading")
        return self.scorer


def create_app(ensemble: Ensemble | Callable[[], Ensemble], settings: ServeSettings = ServeSettings(),
               make_batcher: MakeBatcher = micro_batcher) -> FastAPI:
    """``ensemble`` is a loaded Ensemble, or a loader called on a thread at startup (``/readyz`` waits for it).
    ``make_batcher`` gathers requests into batches: the micro-batcher, or Ray Serve's (``siren_ensemble.ray``)."""
    service = _Service(settings)

    async def load() -> None:
        try:
            loaded = ensemble if isinstance(ensemble, Ensemble) else await asyncio.to_thread(ensemble)
        except Exception as error:
            service.load_error = f"{type(error).__name__}: {error}"
            log.error("models failed to load: %s", service.load_error)
            return
        scorer = Scorer(loaded, settings, service.metrics, make_batcher)
        scorer.start()
        service.scorer = scorer
        log.info("models loaded: %s", ", ".join(f"{name} ({choice.describe()})" for name, choice in loaded.precision.items()))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(load())
        yield
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        if service.scorer is not None:
            await service.scorer.stop()

    def require_key(request: Request) -> None:
        if not is_authorized(request.headers, settings.api_key):
            raise HTTPException(401, "missing or wrong API key (send `Authorization: Bearer <key>`)")

    app = FastAPI(title="siren-ensemble", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeaderSizeLimit, max_bytes=settings.max_header_bytes)
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    _add_error_handlers(app)

    @app.get("/healthz", responses={503: {"description": "the models failed to load: restart the service"}})
    async def healthz():
        if service.load_error is not None:  # alive but useless: let the orchestrator restart it
            return JSONResponse({"status": "failed"}, status_code=503)
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "models loading, or failed to load (`status`, `error`)"}})
    async def readyz(request: Request):
        if service.scorer is None:
            status = "failed" if service.load_error else "loading"
            # The load error names files and paths: shown only to a client with the key, when there is one.
            error = service.load_error if is_authorized(request.headers, settings.api_key) else (
                "models failed to load; see the server log, or send the API key for the reason" if service.load_error else None)
            return JSONResponse({"status": status, "error": error}, status_code=503)
        ensemble = service.scorer.ensemble
        dtypes = {name: choice.to_dict() for name, choice in ensemble.precision.items()}
        return {"status": "ready", "members": ensemble.member_names, "dtypes": dtypes}

    @app.get("/metrics", dependencies=[Depends(require_key)], response_class=PlainTextResponse,
             responses={status: _API_ERRORS[status] for status in (401, 431)})
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post("/v1/moderations", dependencies=[Depends(require_key)], response_model=ModerationResponse, responses=_API_ERRORS)
    async def moderations(body: ModerationRequest):
        scorer = service.ready_scorer()
        texts = body.texts
        _check_limits(texts, settings, "input")
        results = await scorer.score(texts)
        return ModerationResponse(id=f"modr-{uuid.uuid4().hex}", model=body.model or DEFAULT_MODEL_NAME,
                                  results=[moderation_result(result) for result in results])

    @app.post("/v1/score", dependencies=[Depends(require_key)], responses=_API_ERRORS)
    async def score(body: ScoreRequest):
        scorer = service.ready_scorer()
        if body.messages is not None:
            try:
                text = scorer.ensemble.conversation_input(body.messages, body.window, body.judge)
            except InputError as error:
                raise HTTPException(400, str(error)) from None
            for index, message in enumerate(text.messages):
                _check_limits([message.content], settings, f"messages[{index + text.dropped_by_window}].content", single=True)
        else:
            text = body.text if body.text is not None else PromptResponse(body.prompt, body.response)
        for field in ("text", "prompt", "response"):
            value = getattr(body, field)
            if value is not None:
                _check_limits([value], settings, field, single=True)
        (result,) = await scorer.score([text], body.threshold)
        return result.to_dict()

    @app.post("/v1/rank", dependencies=[Depends(require_key)], response_model=RankResponse, response_model_exclude_defaults=True,
              responses=_API_ERRORS)
    async def rank(body: RankRequest):
        scorer = service.ready_scorer()
        _check_limits([body.prompt], settings, "prompt", single=True)
        _check_limits(body.candidates, settings, "candidates")
        work = scorer.batcher.run_on_model_thread(scorer.ensemble.rank, body.prompt, body.candidates, body.method)
        try:
            result = await asyncio.wait_for(work, settings.request_timeout_s)
        except InputError as error:
            raise HTTPException(400, str(error)) from None
        except TimeoutError:
            raise HTTPException(503, f"no ranking within {settings.request_timeout_s:g} s; retry later") from None
        return result.to_dict()

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket):
        if not is_authorized(websocket.headers, settings.api_key):
            await websocket.close(WS_POLICY_VIOLATION)  # before accept: the handshake is refused (403)
            return
        await websocket.accept()
        if service.scorer is None:
            await _ws_fail(websocket, WS_TRY_AGAIN_LATER, "models are not loaded yet")
            return
        if service.open_streams >= settings.max_streams:
            await _ws_fail(websocket, WS_TRY_AGAIN_LATER, f"too many open streams (limit {settings.max_streams}); retry later")
            return
        service.open_streams += 1
        try:
            await _stream_session(websocket, service.scorer, settings)
        finally:
            service.open_streams -= 1

    _document_400_not_422(app)
    return app


def _document_400_not_422(app: FastAPI) -> None:
    """FastAPI documents a 422 for every body; the service answers invalid bodies with 400 (documented instead)."""
    build = app.openapi

    def openapi() -> dict:
        schema = build()  # cached by FastAPI after the first call; the edit below is idempotent
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi


async def _stream_session(websocket: WebSocket, scorer: Scorer, settings: ServeSettings) -> None:
    """First message ``{"prompt"?, "threshold"?}``; then each ``{"chunk": ...}`` is answered with a score."""
    try:
        start = await _ws_receive(websocket, StreamStart, settings)
        if start is None:
            return
        if start.prompt is not None and len(start.prompt) > settings.max_chars:
            await _ws_fail(websocket, WS_TOO_BIG, f"prompt: {len(start.prompt)} characters, over the limit of {settings.max_chars}")
            return
        session = await scorer.open_stream(start.prompt, start.threshold)
        inbox: "asyncio.Queue[str | _BinaryFrame | None]" = asyncio.Queue(maxsize=MAX_COALESCED_CHUNKS)
        pump = asyncio.create_task(_pump(websocket, inbox))
        try:
            await _answer_chunks(websocket, session, inbox, settings)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await session.close()
    except WebSocketDisconnect:
        return


async def _pump(websocket: WebSocket, inbox: "asyncio.Queue[str | _BinaryFrame | None]") -> None:
    """Each message as it arrives, so that those sent while a feed is scored wait together; None once disconnected.

    The bounded queue keeps the back-pressure of reading one message at a time.
    """
    try:
        while True:
            await inbox.put(await _receive_text(websocket))
    except (WebSocketDisconnect, RuntimeError):  # RuntimeError: the socket is already closed
        await inbox.put(None)


async def _answer_chunks(websocket: WebSocket, session, inbox: "asyncio.Queue[str | _BinaryFrame | None]", settings: ServeSettings) -> None:
    """Answer every chunk with its score, in order; chunks waiting together are scored in one feed."""
    index = 0
    response_chars = 0
    while True:
        try:
            arrived = [await asyncio.wait_for(inbox.get(), settings.stream_idle_timeout_s)]
        except TimeoutError:
            await _ws_fail(websocket, WS_POLICY_VIOLATION, f"no message for {settings.stream_idle_timeout_s:g} s; stream closed")
            return
        while len(arrived) < MAX_COALESCED_CHUNKS and not inbox.empty():
            arrived.append(inbox.get_nowait())
        chunks: list[str] = []
        failure: tuple[int, str] | None = None
        disconnected = False
        for message in arrived:
            if message is None:
                disconnected = True
                break
            parsed = _parse_message(message, StreamChunk)
            if isinstance(parsed, str):
                failure = (WS_POLICY_VIOLATION, parsed)
                break
            response_chars += len(parsed.chunk)
            if response_chars > settings.max_chars:
                failure = (WS_TOO_BIG, f"response: {response_chars} characters, over the limit of {settings.max_chars}")
                break
            chunks.append(parsed.chunk)
        if chunks:  # the chunks before a bad message are answered first, as if read one at a time
            for result in await session.feed_many(chunks):
                await websocket.send_json({"index": index, "flagged": result.is_harmful, **result.to_dict()})
                index += 1
        if session.timed_out:
            failure = (WS_TRY_AGAIN_LATER, f"no score within {settings.request_timeout_s:g} s; stream closed, open a new one")
        if failure is not None:
            await _ws_fail(websocket, *failure)
        if failure is not None or disconnected:
            return


async def _ws_receive(websocket: WebSocket, model, settings: ServeSettings):
    """The next message parsed as ``model``; None (after closing with the reason) when it is invalid or late."""
    try:
        text = await asyncio.wait_for(_receive_text(websocket), settings.stream_idle_timeout_s)
    except TimeoutError:
        await _ws_fail(websocket, WS_POLICY_VIOLATION, f"no message for {settings.stream_idle_timeout_s:g} s; stream closed")
        return None
    parsed = _parse_message(text, model)
    if isinstance(parsed, str):
        await _ws_fail(websocket, WS_POLICY_VIOLATION, parsed)
        return None
    return parsed


class _BinaryFrame:
    """Stands for a binary WebSocket frame: the protocol is JSON in text frames, so parsing refuses it."""


BINARY_FRAME = _BinaryFrame()


async def _receive_text(websocket: WebSocket) -> "str | _BinaryFrame":
    """The next text message, or ``BINARY_FRAME`` for a binary one; a close raises WebSocketDisconnect."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    if message.get("text") is not None:
        return message["text"]
    return BINARY_FRAME


def _parse_message(text: "str | _BinaryFrame", model):
    """``text`` parsed as ``model``, or why it cannot be."""
    if text is BINARY_FRAME:
        return "binary frames are not supported: send JSON in text frames"
    try:
        return model.model_validate(json.loads(text))
    except json.JSONDecodeError as error:
        return f"message is not valid JSON: {error.msg} (position {error.pos})"
    except ValidationError as error:
        return _validation_message(error.errors())


async def _ws_fail(websocket: WebSocket, code: int, message: str) -> None:
    await websocket.send_json(error_body(message))
    await websocket.close(code, reason=message[:120])


def _check_limits(texts: list[str], settings: ServeSettings, field: str, single: bool = False) -> None:
    if not texts:
        raise HTTPException(400, f"{field}: must not be empty (give a string or a non-empty list of strings)")
    if len(texts) > settings.max_inputs:
        raise HTTPException(400, f"{field}: {len(texts)} texts, over the limit of {settings.max_inputs} per request")
    for index, text in enumerate(texts):
        if len(text) > settings.max_chars:
            where = field if single else f"{field}[{index}]"
            raise HTTPException(400, f"{where}: {len(text)} characters, over the limit of {settings.max_chars}")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        if "json" not in request.headers.get("content-type", ""):
            message = "the request body must be JSON, sent with `Content-Type: application/json`"
        else:
            message = _validation_message(error.errors())
        return JSONResponse(error_body(message), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        body = error_body(str(error.detail), _ERROR_TYPES.get(error.status_code, "invalid_request_error"))
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # logged by the server; the client gets no internals
        return JSONResponse(error_body("internal error; see the server log", "server_error"), status_code=500)


def _validation_message(errors) -> str:
    """``input[2]: Input should be a valid string`` from pydantic's error list (the first error, and how many more)."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    path = ""
    for part in first["loc"]:
        if part == "body" and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{path or 'request body'}: {message}{more}"
