"""The app skeleton every service is built on.

``build_app`` gives a FastAPI app with the shared error shape, request IDs,
structured access logs, optional API-key auth, a request body limit, CORS,
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
from typing import Any, Awaitable, Callable, Protocol

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, error_body, install_error_handlers
from .observability import Metrics, configure_logging, request_id_var
from .settings import ServiceSettings

log = logging.getLogger("rvchat.http")

OPEN_PATHS = {"/healthz", "/readyz"}


class Engine(Protocol):
    """What the skeleton needs of a model engine: a blocking ``load``."""

    def load(self) -> None: ...


ReadyCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else the reason it is not (e.g. 'upstream unreachable')."""


class _BodyTooLarge(Exception):
    pass


class EdgeMiddleware:
    """Request ID, auth, body limit, access log and HTTP metrics in one pure-ASGI pass.

    Pure ASGI (not BaseHTTPMiddleware) so streaming responses and WebSockets pass
    through untouched.
    """

    def __init__(self, app: ASGIApp, settings: ServiceSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

    def _authorised(self, scope: Scope) -> bool:
        key = self.settings.api_key
        if not key or scope["path"] in OPEN_PATHS or scope.get("method") == "OPTIONS":
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        offered = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if not offered and auth.lower().startswith("bearer "):
            offered = auth[7:].strip()
        if not offered and scope["type"] == "websocket":
            from urllib.parse import parse_qs

            offered = (parse_qs(scope.get("query_string", b"").decode()).get("api_key") or [None])[0]
        return bool(offered) and hmac.compare_digest(offered.encode(), key.encode())

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
        if not self._authorised(scope):
            log.warning("websocket %s refused: bad or missing API key", scope["path"])
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
            return
        self.metrics.websockets.labels(scope["path"]).inc()
        log.info("websocket %s opened", scope["path"])
        await self.app(scope, receive, send)
        log.info("websocket %s closed", scope["path"])

    async def _http(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        method, path = scope["method"], scope["path"]
        start = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        limit = self.settings.max_upload_bytes
        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def reply(resp: Response) -> None:
            await resp(scope, receive, send_wrapper)

        try:
            if not self._authorised(scope):
                await reply(JSONResponse(
                    error_body("missing or invalid API key", 401, "invalid_api_key"),
                    status_code=401, headers={"WWW-Authenticate": "Bearer"}))
            elif int(dict(scope["headers"]).get(b"content-length", b"0") or 0) > limit:
                await reply(self._too_large())
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            if not status["started"]:
                await reply(self._too_large())
        except ValueError:  # unparsable Content-Length
            await reply(APIError(400, "invalid Content-Length", "bad_request").response())
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            label = getattr(route, "path", None) or ("<unmatched>" if status["code"] == 404 else path)
            self.metrics.requests.labels(method, label, str(status["code"])).inc()
            self.metrics.latency.labels(method, label).observe(elapsed)
            if path not in OPEN_PATHS and path != "/metrics":
                log.info("%s %s -> %s in %.1f ms", method, path, status["code"], elapsed * 1000)

    def _too_large(self) -> Response:
        mb = self.settings.max_upload_mb
        return APIError(413, f"request body is larger than the {mb:g} MiB limit", "too_large").response()


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
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """Liveness: 200 while the process serves requests."""
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the model is loaded and the upstream (if any) answers."""
        reason = None
        if state["load_error"]:
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

    @app.get("/metrics", tags=["health"])
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(EdgeMiddleware, settings=settings, metrics=metrics)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origin_list,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-request-id", "x-sample-rate", "x-voice", "x-voice-fallback", "x-audio-duration"],
    )
    return app


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
