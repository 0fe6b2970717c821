"""The app skeleton every service is built on.

``build_app`` gives a FastAPI app with the shared error shape, request IDs,
structured access logs, optional API-key auth, per-client rate limits, body size and read-time
limits, CORS limited to the service's own origin unless configured, a refusal of state-changing
requests from other sites' pages,
``/healthz``, ``/readyz`` and ``/metrics``. It loads the service's model in a
worker thread at start-up, so ``/healthz`` answers at once and ``/readyz`` turns
200 only once the model is loaded (and any upstream check passes).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Awaitable, Callable, Protocol, Sequence
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, error_body, install_error_handlers
from .memory import return_freed_memory
from .inference import InferenceQueue
from .observability import Metrics, configure_logging, request_id_var
from .ratelimit import RateLimiter
from .settings import ServiceSettings
from .streaming import Drain, DrainMiddleware

log = logging.getLogger("rvchat.http")

OPEN_PATHS = {"/healthz", "/readyz"}


class Engine(Protocol):
    """What the skeleton needs of a model engine: a blocking ``load``."""

    def load(self) -> None: ...


ReadyCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else the reason it is not (e.g. 'upstream unreachable')."""


# Label values of the HTTP metrics are bounded: a method outside this set is "OTHER", a path that
# matches no route "unknown" (300 requests with made-up methods and paths once grew /metrics by 80%).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNKNOWN_ROUTE = "unknown"


class _Refused(Exception):
    """The request body broke a limit while the app was reading it; ``response`` says which."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The template of the route ``scope`` matches ('/api/conversations/{cid}'), else 'unknown'."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is not None:
        return path
    probe = {**scope, "method": scope.get("method", "GET")}
    for route in routes:
        try:
            match, _ = route.matches(probe)
        except Exception:  # a route that cannot judge this scope does not match it
            continue
        if match is not Match.NONE:
            return getattr(route, "path", None) or UNKNOWN_ROUTE
    return UNKNOWN_ROUTE


def _origin_of(headers: dict[bytes, bytes]) -> str | None:
    origin = headers.get(b"origin")
    return origin.decode("latin-1").strip().lower() if origin is not None else None


def is_cross_site(scope: Scope, allowed: list[str]) -> bool:
    """Whether a browser sent this request from a page of another origin than ours (or ``allowed``).

    A browser always sends Origin on a WebSocket upgrade and on a cross-origin POST/DELETE; tools
    (curl, the services' own clients) send none and are not browsers, so they pass. Same origin
    means the Origin's host:port is the Host the request was sent to (or X-Forwarded-Host behind a
    proxy). Without Origin, Sec-Fetch-Site: cross-site still gives a browser request away.
    """
    headers = dict(scope["headers"])
    origin = _origin_of(headers)
    if origin is None:
        return headers.get(b"sec-fetch-site", b"").strip().lower() == b"cross-site"
    if "*" in allowed or origin in (a.lower().rstrip("/") for a in allowed):
        return False
    if origin == "null":
        return True  # a sandboxed frame or a file:// page
    host = origin.split("://", 1)[-1].rstrip("/")
    own = {headers.get(b"host", b"").decode("latin-1").strip().lower(),
           headers.get(b"x-forwarded-host", b"").decode("latin-1").split(",")[0].strip().lower()}
    if host in own:
        return False
    # Host without the default port ('localhost') against 'localhost:80' and the like.
    scheme = origin.split("://", 1)[0]
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return not (host.endswith(default) and host[: -len(default)] in own) if default else True


class EdgeMiddleware:
    """Request ID, auth, cross-site check, rate limit, body limits, access log and HTTP metrics in
    one pure-ASGI pass.

    Pure ASGI (not BaseHTTPMiddleware) so streaming responses and WebSockets pass
    through untouched.
    """

    def __init__(self, app: ASGIApp, settings: ServiceSettings, metrics: Metrics,
                 routes: Callable[[], Sequence[BaseRoute]] = lambda: ()) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.routes = routes
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_exempt)

    def _offered_key(self, scope: Scope, cookie: bool = True) -> str | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        offered = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if not offered and scope["type"] == "http" and scope.get("method") == "GET":
            offered = _query_key(scope)
        if not offered and auth.lower().startswith("bearer "):
            offered = auth[7:].strip()
        if not offered and scope["type"] == "websocket":
            offered = _query_key(scope)
        if not offered and cookie:
            offered = _cookie_key(headers.get("cookie", ""))
        return offered or None

    def _authorised(self, scope: Scope) -> bool:
        key = self.settings.api_key
        if not key or scope["path"] in OPEN_PATHS or scope.get("method") == "OPTIONS":
            return True
        offered = self._offered_key(scope)
        return bool(offered) and hmac.compare_digest(offered.encode(), key.encode())

    def _cross_site_refused(self, scope: Scope) -> bool:
        """A state-changing request or a WebSocket from another site's page, without the API key.

        A request that carries the API key itself (header or query, which another site's page
        cannot know) may come from anywhere; the key as a cookie is not enough, since a browser
        sends it from every page of the same site (another port of localhost).
        """
        if scope["type"] == "http" and scope["method"] in SAFE_METHODS:
            return False
        if self.settings.api_key and self._offered_key(scope, cookie=False):
            return False
        return is_cross_site(scope, self.settings.cors_origin_list)

    def _rate_wait(self, scope: Scope) -> float:
        if scope["path"] in OPEN_PATHS or scope["path"] == "/metrics":
            return 0.0
        client = scope.get("client")
        return self.limiter.check(client[0] if client else None, self._offered_key(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        try:
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self._http(scope, receive, send, rid)
        finally:
            request_id_var.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_template(self.routes(), scope)
        if not self._authorised(scope):
            log.warning("websocket %s refused: bad or missing API key", scope["path"])
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
            return
        if self._cross_site_refused(scope):
            log.warning("websocket %s refused: opened by a page of another site", scope["path"])
            await send({"type": "websocket.close", "code": 1008, "reason": "cross-site WebSocket refused"})
            return
        wait = self._rate_wait(scope)
        if wait:
            await send({"type": "websocket.close", "code": 1013,
                        "reason": f"rate limited; retry in {self.limiter.retry_after(wait)} s"})
            return
        self.metrics.websockets.labels(path).inc()
        log.info("websocket %s opened", scope["path"])
        await self.app(scope, receive, send)
        log.info("websocket %s closed", scope["path"])

    async def _http(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        method, path = scope["method"], scope["path"]
        start = time.perf_counter()
        status = {"code": 500, "started": False}
        refused: list[Response] = []  # the limit the body broke, once it has

        # A browser opening the page as /?api_key=KEY keeps the key as a cookie for its later requests
        # and WebSockets (a page cannot add headers to those).
        key = self.settings.api_key
        cookie = _key_cookie(scope, key) if key and method == "GET" and _query_key(scope) == key else None

        async def send_wrapper(message: Message) -> None:
            if refused:
                return  # the app's own answer to a body it could not read; ours goes out instead
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
                if cookie is not None:
                    message["headers"].append((b"set-cookie", cookie))
            await send(message)

        limit = self.settings.max_upload_bytes
        received = 0
        body_done = False

        async def receive_wrapper() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only http.disconnect comes, whenever the client leaves
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.settings.body_timeout_s)
            except asyncio.TimeoutError:
                # Connection: close, since the rest of the body may still come, or never.
                refused.append(APIError(
                    408, f"the request body stalled: nothing arrived for {self.settings.body_timeout_s:g} s",
                    "body_timeout", headers={"Connection": "close"}).response())
                raise _Refused(refused[0]) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    # Chunked bodies have no Content-Length to refuse up front: count as they come.
                    refused.append(self._too_large(close=True))
                    raise _Refused(refused[0])
            else:
                body_done = True
            return message

        async def reply(resp: Response) -> None:
            await resp(scope, receive, send_wrapper)

        try:
            declared = _content_length(scope)
            wait = 0.0
            if not self._authorised(scope):
                await reply(JSONResponse(
                    error_body("missing or invalid API key", 401, "invalid_api_key"),
                    status_code=401, headers={"WWW-Authenticate": "Bearer"}))
            elif self._cross_site_refused(scope):
                await reply(APIError(
                    403, "cross-site request refused: this origin may not change anything here (set "
                    "CORS_ORIGINS to allow it, or send the API key)", "cross_site").response())
            elif (wait := self._rate_wait(scope)) > 0:
                after = self.limiter.retry_after(wait)
                await reply(JSONResponse(
                    error_body(f"too many requests: the limit is {self.limiter.per_minute} a minute; "
                               f"retry in {after} s", 429, "rate_limited", retry_after=after),
                    status_code=429, headers={"Retry-After": str(after)}))
            elif declared is None:
                await reply(APIError(400, "invalid Content-Length header", "bad_request").response())
            elif declared > limit:
                await reply(self._too_large())
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except _Refused:
            pass  # answered below
        finally:
            if refused and not status["started"]:
                resp, refused[:] = refused[0], []
                await reply(resp)
            elapsed = time.perf_counter() - start
            label = route_template(self.routes(), scope)
            shown = method if method in METHODS else "OTHER"
            self.metrics.requests.labels(shown, label, str(status["code"])).inc()
            self.metrics.latency.labels(shown, label).observe(elapsed)
            if path not in OPEN_PATHS and path != "/metrics":
                log.info("%s %s -> %s in %.1f ms", method[:16], path[:200], status["code"], elapsed * 1000)

    def _too_large(self, close: bool = False) -> Response:
        mb = self.settings.max_upload_mb
        return APIError(413, f"request body is larger than the {mb:g} MiB limit", "too_large",
                        headers={"Connection": "close"} if close else None).response()


KEY_COOKIE = "rvchat_api_key"


def _query_key(scope: Scope) -> str | None:
    return (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key") or [None])[0]


def _cookie_key(cookie: str) -> str | None:
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == KEY_COOKIE and value:
            return value
    return None


def _key_cookie(scope: Scope, key: str) -> bytes:
    """The key as a cookie the browser sends back only to this origin, never with another site's
    request (SameSite=Strict) and never to page scripts (HttpOnly)."""
    secure = "; Secure" if scope.get("scheme") == "https" else ""
    return f"{KEY_COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict{secure}".encode("latin-1")


def _content_length(scope: Scope) -> int | None:
    """The declared body length (0 when none); None when it is not a number. (uvicorn refuses most
    malformed values itself, with a plain-text 400, before the app sees the request.)"""
    raw = dict(scope["headers"]).get(b"content-length")
    if raw is None:
        return 0
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def build_app(
    *,
    service: str,
    settings: ServiceSettings,
    engine: Engine | None = None,
    ready_check: ReadyCheck | None = None,
    title: str | None = None,
    version: str = "1.0.0",
    on_startup: Callable[[FastAPI], Awaitable[None]] | None = None,
    on_shutdown: Callable[[FastAPI], Awaitable[None]] | None = None,
) -> FastAPI:
    """Create the service app. Routes are added by the caller with ``app.include_router``."""
    configure_logging(service, settings.log_level, settings.log_json)
    return_freed_memory()
    metrics = Metrics(service)
    state: dict[str, Any] = {"loaded": engine is None, "load_error": None}

    async def _load() -> None:
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(engine.load)
        except Exception as exc:  # reported by /readyz; the process stays up for /healthz
            state["load_error"] = f"{type(exc).__name__}: {exc}"
            log.exception("%s: model failed to load", service)
            return
        state["loaded"] = True
        log.info("%s: model loaded in %.2f s; ready", service, time.perf_counter() - t0)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_load()) if engine is not None else None
        if on_startup:
            await on_startup(app)
        log.info("%s listening on %s:%s", service, settings.host, settings.port)
        try:
            yield
        finally:
            if task and not task.done():
                task.cancel()
            if on_shutdown:
                await on_shutdown(app)

    app = FastAPI(title=title or f"rvchat {service}", version=version, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.load_state = state
    # Graceful shutdown: set by the runner on SIGTERM (rvchat_common.streaming); apps add busy checks.
    app.state.drain = Drain()
    app.state.drain.add_check(lambda: _queue_busy(app))
    metrics.registry.register(_QueueCollector(app))
    install_error_handlers(app)

    @app.exception_handler(_Refused)
    async def _refused(_: Request, exc: _Refused) -> Response:
        return exc.response  # a body that broke a limit mid-read: answered by the edge, not a 500 to log

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """Liveness: 200 while the process serves requests."""
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the model is loaded and the upstream (if any) answers."""
        reason = None
        if app.state.drain.draining:
            reason = "shutting down: finishing the work in flight"
        elif state["load_error"]:
            reason = f"model failed to load: {state['load_error']}"
        elif not state["loaded"]:
            reason = "model is loading"
        elif ready_check is not None:
            try:
                reason = await ready_check()
            except Exception as exc:
                reason = f"readiness check failed: {exc}"
        if reason:
            body = {"status": "not_ready", "service": service, "reason": reason,
                    **error_body(reason, 503, "not_ready")}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", "service": service})

    @app.get("/metrics", tags=["health"], responses={200: {
        "description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    document_errors(app)
    app.add_middleware(EdgeMiddleware, settings=settings, metrics=metrics, routes=lambda: app.routes)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origin_list,
        allow_methods=sorted(METHODS),
        allow_headers=["*"],
        expose_headers=["x-request-id", "x-sample-rate", "x-voice", "x-voice-fallback", "x-audio-duration"],
    )
    return app


def model_queue(app: FastAPI) -> InferenceQueue | None:
    """The queue a service runs its model on (``app.state.queue``, or its engine's), if it has one."""
    for owner in (app.state, getattr(app.state, "engine", None)):
        queue = getattr(owner, "queue", None)
        if isinstance(queue, InferenceQueue):
            return queue
    return None


def _queue_busy(app: FastAPI) -> str | None:
    queue = model_queue(app)
    return f"model busy ({queue.waiting} waiting)" if queue is not None and queue.busy else None


class _QueueCollector:
    """Exports the model queue's depth and waits on /metrics. Looked up at scrape time: services
    attach their queue after ``build_app`` returns."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def describe(self) -> list:
        return []  # the names exist only once the queue does: nothing to check for clashes yet

    def collect(self) -> Any:
        queue = model_queue(self.app)
        if queue is not None:
            yield from queue.collect()


ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}},
    }},
}
_ERROR_RESPONSE = {"description": "An error, in the shared envelope (see the README's Errors)", "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}


def document_errors(app: FastAPI) -> None:
    """Every operation's OpenAPI says what it really answers on failure: the shared envelope, for any
    status (FastAPI documents a 422 body of its own shape, which no route sends)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["ErrorEnvelope"] = ERROR_SCHEMA
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                if "422" in responses:
                    responses["422"] = _ERROR_RESPONSE
                responses.setdefault("default", _ERROR_RESPONSE)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def is_ready(app: FastAPI) -> bool:
    return bool(app.state.load_state["loaded"])


def require_ready(request: Request) -> None:
    """Dependency: 503 while the model is still loading."""
    state = request.app.state.load_state
    if state["load_error"]:
        raise APIError(503, f"model failed to load: {state['load_error']}", "model_unavailable")
    if not state["loaded"]:
        raise APIError(503, "model is still loading; retry shortly", "model_loading",
                       headers={"Retry-After": "2"})
