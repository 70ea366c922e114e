"""The aiohttp front end: OpenAI images API, models listing, health and metrics.

:func:`create_app` builds the application (:mod:`ovms_graph.serve` runs it as ``ovms-graph serve``). A
handler decodes the HTTP request into an :class:`~ovms_graph.packets.HttpPayload`, hands it to the
graph the ``model`` field names (see :mod:`ovms_graph.serving`) and encodes what the graph answers:
one ``HttpResponse``, or ``ServerSentEvent`` packets streamed as ``text/event-stream``. Handlers only
raise :class:`~ovms_graph.errors.RequestError` subclasses; one middleware renders them OpenAI-shaped
through ``ERROR_TABLE``. No traceback ever reaches a client.

Routes::

    POST /v3/images/generations, /v1/images/generations   application/json
    POST /v3/images/edits, /v1/images/edits               multipart/form-data
    GET  /v3/models, /v1/models, /v3/models/{id}, /v1/models/{id}
    GET  /v2/health/live, /v2/health/ready, /v2/models/{name}/ready
    GET  /metrics                                         only with --metrics_enable
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ovms_graph.calculator import RequestContext
from ovms_graph.config import GraphEntry
from ovms_graph.errors import (
    BadRequest,
    ConfigError,
    GenerationError,
    NotFound,
    PayloadTooLarge,
    Problem,
    RequestError,
    ServiceUnavailable,
    Unauthorized,
    error_body,
    error_kind,
)
from ovms_graph.json_body import json_type, parse_json_object
from ovms_graph.metrics import Metrics
from ovms_graph.multipart_body import multipart_model, parse_multipart
from ovms_graph.packets import HttpPayload, HttpResponse, MultipartView, ServerSentEvent
from ovms_graph.registry import Registry
from ovms_graph.serving import REQUEST_TAG, Serving
from ovms_graph.settings import ServerOptions

log = logging.getLogger("ovms_graph.server")
access_log = logging.getLogger("ovms_graph.access")

GENERATIONS = "images/generations"
EDITS = "images/edits"
API_PREFIXES = ("/v3/", "/v1/")
#: Bodies from this size on are parsed off the event loop.
LARGE_BODY = 256 * 1024
#: Seconds cancelled graph runs get to finish at shutdown before their graph is left unclosed.
CANCEL_GRACE = 10.0
#: Status logged (never sent) for a request whose client went away.
CLIENT_GONE = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVING = web.AppKey("serving", Serving)
METRICS = web.AppKey("metrics", Metrics)
OPTIONS = web.AppKey("options", ServerOptions)
API_KEY = web.AppKey("api_key", str)  # absent when no --api_key_file
REQUEST_ID = web.RequestKey("request_id", str)
GRAPH = web.RequestKey("graph", str)
OUTCOME = web.RequestKey("outcome", int)  # status to log when it differs from the response's
CONTEXT = web.RequestKey("context", RequestContext)  # the graph run's context, once there is one


# ----- application -----
def create_app(entries: Sequence[GraphEntry], options: ServerOptions | None = None, *,
               registry: Registry | Callable[[], Registry] | None = None) -> web.Application:
    """The application serving ``entries``.

    Graphs load in the background once the app starts (live answers at once, ready when loaded);
    ``registry`` defaults to the installed calculators (``Registry.from_entry_points``).
    Raises ConfigError when the API key file cannot be used.
    """
    options = options or ServerOptions()
    if registry is None:
        factory: Callable[[], Registry] = Registry.from_entry_points
    elif isinstance(registry, Registry):
        fixed = registry
        factory = lambda: fixed  # noqa: E731 - a one-line factory reads best here
    else:
        factory = registry
    metrics = Metrics()
    app = web.Application(middlewares=[_access_middleware, _error_middleware, _auth_middleware],
                          client_max_size=options.max_request_size,
                          handler_args={"handler_cancellation": True})
    app[OPTIONS] = options
    app[METRICS] = metrics
    app[SERVING] = Serving(entries, registry_factory=factory, max_queued=options.max_queued_requests,
                           metrics=metrics, cache_dir=options.cache_dir)
    if options.api_key_file is not None:
        app[API_KEY] = read_api_key(options.api_key_file)
    routes = [
        web.post("/v3/images/generations", _generations, expect_handler=_expect_continue),
        web.post("/v1/images/generations", _generations, expect_handler=_expect_continue),
        web.post("/v3/images/edits", _edits, expect_handler=_expect_continue),
        web.post("/v1/images/edits", _edits, expect_handler=_expect_continue),
        web.get("/v3/models", _list_models),
        web.get("/v1/models", _list_models),
        web.get("/v3/models/{id:.+}", _get_model),
        web.get("/v1/models/{id:.+}", _get_model),
        web.get("/v2/health/live", _live),
        web.get("/v2/health/ready", _ready),
        web.get("/v2/models/{name:.+}/ready", _model_ready),
    ]
    if options.metrics_enable:
        routes.append(web.get("/metrics", _metrics))
    app.add_routes(routes)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    app.on_response_prepare.append(_close_in_lame_duck)
    return app


def read_api_key(path: Path) -> str:
    """The key in ``path``, surrounding whitespace stripped; ConfigError when unreadable or empty."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(Problem(f"cannot read the API key file: {reason}", file=str(path),
                                  field="--api_key_file")) from exc
    if not key:
        raise ConfigError(Problem("the API key file is empty", file=str(path), field="--api_key_file"))
    return key


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    serving = app[SERVING]
    loading = asyncio.create_task(serving.load(), name="load-graphs")
    yield
    # The front end has already waited up to --shutdown_timeout for running requests and cancelled
    # the rest; give cancelled runs a short grace to reach their next cancellation check.
    await serving.close(grace=min(app[OPTIONS].shutdown_timeout, CANCEL_GRACE))
    await loading


async def _on_shutdown(app: web.Application) -> None:
    app[SERVING].begin_shutdown()


async def _close_in_lame_duck(request: web.Request, response: web.StreamResponse) -> None:
    """In the lame duck every answer closes its connection, so a proxy's kept-alive connections are gone
    before intake stops and its next request opens a connection to a ready replica."""
    if request.app[SERVING].lame_duck:
        response.force_close()
        response.headers["Connection"] = "close"


# ----- middlewares -----
@web.middleware
async def _access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id (also in ``x-request-id``), one log line and the request metrics."""
    request_id = uuid.uuid4().hex[:16]
    request[REQUEST_ID] = request_id
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = request.get(OUTCOME, response.status)
        if not response.prepared:
            response.headers["x-request-id"] = request_id
        return response
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    finally:
        seconds = time.monotonic() - started
        _observe(request, status, seconds)
        _log_access(request, status, seconds)


def _observe(request: web.Request, status: int, seconds: float) -> None:
    """The request metrics (``/metrics`` itself is not counted) and the cancellation counter."""
    graph = request.get(GRAPH, "")
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    if request.path != "/metrics":
        request.app[METRICS].observe_request(graph, route, status, seconds)
    if status == CLIENT_GONE and graph:
        request.app[METRICS].cancellations.labels(graph).inc()


def _log_access(request: web.Request, status: int, seconds: float) -> None:
    """The request's one access log line (DEBUG for health checks and scrapes)."""
    level = logging.DEBUG if request.path.startswith(("/v2/health", "/metrics")) else logging.INFO
    ctx = request.get(CONTEXT)
    end_user = f" user={json.dumps(ctx.end_user)}" if ctx is not None and ctx.end_user is not None else ""
    access_log.log(level, "request %s %s %s graph=%s status=%d duration=%.3fs%s", request[REQUEST_ID],
                   request.method, request.path, request.get(GRAPH, "") or "-", status, seconds, end_user)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an OpenAI-shaped error body; only the log sees tracebacks."""
    try:
        return await handler(request)
    except RequestError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_exception_response(request, exc)
    except Exception:
        request_id = request.get(REQUEST_ID, "?")
        log.exception("request %s %s %s failed", request_id, request.method, request.path)
        return _error_response(GenerationError(f"internal server error (request {request_id}); see the server log"))


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With ``--api_key_file``, every /v3 and /v1 route needs ``Authorization: Bearer <key>``."""
    key = request.app.get(API_KEY)
    if key is not None and request.path.startswith(API_PREFIXES):
        header = request.headers.get("Authorization")
        if header is None:
            raise Unauthorized("missing API key: send the header Authorization: Bearer <key>")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise Unauthorized("invalid API key")
    return await handler(request)


def _error_response(exc: RequestError) -> web.Response:
    kind = error_kind(exc)
    response = web.json_response(error_body(exc), status=kind.status)
    if isinstance(exc, ServiceUnavailable):
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _http_exception_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, wrong method, body too large) in the OpenAI shape."""
    if exc.status == 404:
        return _error_response(NotFound(f"no route for {request.method} {request.path}"))
    if exc.status == 413:
        return _error_response(_too_large(request.app[OPTIONS].max_request_size))
    message = exc.reason
    error_type = "invalid_request_error"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"method {request.method} is not allowed for {request.path} (allowed: {allowed})"
    elif exc.status >= 500:
        error_type = "server_error"
    body = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    response = web.json_response(body, status=exc.status)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse an announced oversize body before the client sends it."""
    limit = request.app[OPTIONS].max_request_size
    if request.content_length is not None and request.content_length > limit:
        response = _error_response(_too_large(limit))
        response.force_close()
        return response
    if request.version >= (1, 1):
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get('Expect')}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes (--max_request_size)")


# ----- images -----
async def _generations(request: web.Request) -> web.StreamResponse:
    return await _images(request, GENERATIONS)


async def _edits(request: web.Request) -> web.StreamResponse:
    return await _images(request, EDITS)


class _Client:
    """The connection a request came on; ``is_disconnected`` may be called from any thread."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.gone = False

    def is_disconnected(self) -> bool:
        if self.gone:
            return True
        transport = self._request.transport
        return transport is None or transport.is_closing()


async def _images(request: web.Request, route: str) -> web.StreamResponse:
    serving = request.app[SERVING]
    serving.check_available()
    _require_content_type(request, "application/json" if route == GENERATIONS else "multipart/form-data")
    body = await read_body(request, request.app[OPTIONS].max_request_size)
    parsed: Any = None
    multipart: MultipartView | None = None
    if route == GENERATIONS:
        # A large body would hold the event loop while it is parsed; parse it in a thread instead.
        parsed = parse_json_object(body) if len(body) < LARGE_BODY else await asyncio.to_thread(
            parse_json_object, body)
        model = _json_model(parsed)
    else:
        multipart = await parse_multipart(request.headers, body)
        model = multipart_model(multipart)
    slot, model_name = serving.resolve(model)
    request[GRAPH] = slot.name
    client = _Client(request)
    ctx = RequestContext(request[REQUEST_ID], client_gone=client.is_disconnected)
    request[CONTEXT] = ctx
    headers = CIMultiDictProxy(CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() != "authorization"))
    payload = HttpPayload(uri=str(request.rel_url), method=request.method, headers=headers, body=body,
                          route=route, model=model_name, parsed_json=parsed, multipart=multipart, client=client)
    try:
        async with aclosing(serving.execute(slot, {REQUEST_TAG: payload}, ctx)) as packets:
            return await _respond(request, packets, ctx)
    except asyncio.CancelledError:
        client.gone = True
        ctx.cancel()
        raise


async def _respond(request: web.Request, packets: AsyncIterator[Any], ctx: RequestContext) -> web.StreamResponse:
    """One HttpResponse becomes the response; ServerSentEvents become a text/event-stream."""
    answer = _Answer(request, ctx)
    try:
        async for packet in packets:
            await answer.take(packet)
    except RequestError as exc:
        if answer.stream is None:
            raise
        request[OUTCOME] = error_kind(exc).status
        log.warning("request %s failed after streaming began: %s", ctx.request_id, exc.message)
        await answer.stream.write(ServerSentEvent(json.dumps(error_body(exc)), event="error").encode())
    except ConnectionResetError:
        ctx.cancel()
        request[OUTCOME] = CLIENT_GONE
        log.info("request %s: client went away while streaming", ctx.request_id)
        assert answer.stream is not None
        return answer.stream
    return await answer.finish()


class _Answer:
    """What a graph answered so far: the one HttpResponse it sent, or the event stream already begun."""

    def __init__(self, request: web.Request, ctx: RequestContext) -> None:
        self.request = request
        self.ctx = ctx
        self.stream: web.StreamResponse | None = None
        self.single: HttpResponse | None = None

    async def take(self, packet: Any) -> None:
        """Write an event (the first one starts the stream) or keep the first HttpResponse; any other
        packet, or one of the other kind, is logged and ignored."""
        if isinstance(packet, ServerSentEvent) and self.single is None:
            if self.stream is None:
                self.stream = web.StreamResponse(headers={
                    "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                    "x-request-id": self.request[REQUEST_ID]})
                await self.stream.prepare(self.request)
            await self.stream.write(packet.encode())
        elif isinstance(packet, HttpResponse) and self.single is None and self.stream is None:
            self.single = packet
        else:
            log.warning("request %s: graph answered with an extra %s packet; ignored", self.ctx.request_id,
                        type(packet).__name__)

    async def finish(self) -> web.StreamResponse:
        """The ended stream, or the HttpResponse as a response; 500 when the graph answered nothing."""
        if self.stream is not None:
            await self.stream.write_eof()
            return self.stream
        if self.single is None:
            log.error("request %s: graph produced nothing on HTTP_RESPONSE_PAYLOAD", self.ctx.request_id)
            raise GenerationError(f"the model produced no response (request {self.ctx.request_id})")
        response = web.Response(body=self.single.body, status=self.single.status)
        response.headers["Content-Type"] = self.single.content_type
        return response


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` bytes: from
    Content-Length before reading, or while reading a chunked body."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _require_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        got = request.headers.get("Content-Type") or "none"
        raise BadRequest(f"{request.path} expects Content-Type: {expected}, got {got}")


def _json_model(parsed: dict[str, Any]) -> str | None:
    model = parsed.get("model")
    if model is None:  # absent, or null as some OpenAI clients send for "not given"
        return None
    if not isinstance(model, str):
        raise BadRequest(f"model must be a string, got {json_type(model)}", param="model")
    if not model:
        raise BadRequest("model must not be empty", param="model")
    return model


# ----- models and health -----
def _model_object(serving: Serving, model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": serving.created, "owned_by": "ovms-graph"}


async def _list_models(request: web.Request) -> web.Response:
    serving = request.app[SERVING]
    serving.check_available()
    data = [_model_object(serving, n.id) for n in serving.listed()]
    return web.json_response({"object": "list", "data": data})


async def _get_model(request: web.Request) -> web.Response:
    serving = request.app[SERVING]
    serving.check_available()
    model_id = request.match_info["id"]
    if model_id not in serving.names:
        shown = model_id if len(model_id) <= 200 else model_id[:200] + "..."
        raise NotFound(f'model "{shown}" does not exist; GET /v3/models lists the models served here',
                       param="model", code="model_not_found")
    return web.json_response(_model_object(serving, model_id))


async def _live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if request.app[SERVING].ready else 503)


async def _model_ready(request: web.Request) -> web.Response:
    serving = request.app[SERVING]
    if not serving.ready:
        return web.Response(status=503)
    name = request.match_info["name"]
    return web.Response(status=200 if name in serving.names or name in serving.slots else 404)


async def _metrics(request: web.Request) -> web.Response:
    text, content_type = request.app[METRICS].render()
    response = web.Response(body=text)
    response.headers["Content-Type"] = content_type
    return response
