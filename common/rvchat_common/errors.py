"""One error shape for every service, the OpenAI one: ``{"error": {"message", "type", "code"}}``.

HTTP errors use it as the response body; on a WebSocket the same body travels in an
``{"type": "error", "error": {...}}`` event (rvchat_common.protocol.ErrorEvent, sent by the
receive loop in rvchat_common.ws), and a connection that is closed is closed with 1008 (the
client's fault) or 1011 (ours).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("rvchat.errors")

# HTTP status -> OpenAI-style error type.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}

WS_POLICY = 1008  # client sent something we will not accept
WS_SERVER_ERROR = 1011


def error_type(status: int) -> str:
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(message: str, status: int = 400, code: str | None = None, **extra: Any) -> dict:
    body: dict[str, Any] = {"message": message, "type": error_type(status), "code": code}
    body.update(extra)
    return {"error": body}


class APIError(Exception):
    """Raise anywhere in a request to answer with the shared error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers
        self.param = param

    def body(self) -> dict:
        extra = {"param": self.param} if self.param else {}
        return error_body(self.message, self.status, self.code, **extra)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    param = None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "request"
        param = param or (loc[0] if loc else None)
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(422, message, "validation_error", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint"
        return JSONResponse(
            error_body(message, exc.status_code, code=None),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal server error", 500, "internal_error"), status_code=500
        )


# A \uD800-\uDFFF escape: how a lone surrogate gets into parsed JSON (a UTF-8 frame cannot carry one).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """``text`` with any lone surrogate replaced by U+FFFD, so it can be encoded as UTF-8."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return valid_unicode(value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    return value


def parse_json(data: str | bytes) -> Any:
    """``json.loads`` for what clients send: every malformed input raises ValueError, including
    nesting deep enough to exhaust the parser's recursion limit (a RecursionError otherwise).

    Strings come back as valid Unicode: JSON escapes can encode a lone surrogate (``"\\ud800"``),
    which no UTF-8 encoder, tokenizer or phonemizer downstream accepts, so it becomes U+FFFD here,
    once, rather than a 500 wherever the text goes next. Inputs without such an escape are not walked.
    """
    try:
        value = json.loads(data)
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        return _scrub(value) if _SURROGATE_ESCAPE.search(text) else value
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None
