"""The audio upload of every HTTP endpoint that takes one (VAD /detect, STT /transcribe and
/v1/audio/transcriptions): a multipart ``file`` or a raw body, its options, and its decoding.

One parser, so the same mistake gets the same answer everywhere: no file is 400 ``missing_file``,
a malformed multipart body 400 ``invalid_multipart``, a file where text belongs 400 ``invalid_field``,
a bad ``sample_rate`` (raw PCM16 only) 400 ``invalid_sample_rate``, an oversized file 413.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from .audio import decode_audio, iter_audio
from .errors import APIError

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MIN_RATE, MAX_RATE = 4000, 192000

# The request body of an upload route, for the OpenAPI docs (the body is read by hand, not by FastAPI).
UPLOAD_OPENAPI = {
    "requestBody": {
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "wav, flac, mp3, ogg/opus, webm, m4a, ..."},
                "sample_rate": {"type": "integer", "description": "Rate of a raw PCM16 body."}}}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        }
    }
}


def openapi_with_fields(**fields: dict) -> dict:
    """:data:`UPLOAD_OPENAPI` with a route's own form fields added."""
    form = UPLOAD_OPENAPI["requestBody"]["content"]["multipart/form-data"]["schema"]
    return {"requestBody": {"content": {
        **UPLOAD_OPENAPI["requestBody"]["content"],
        "multipart/form-data": {"schema": {**form, "properties": {**form["properties"], **fields}}},
    }}}


@dataclass
class Upload:
    data: bytes
    content_type: str | None
    name: str  # for logs: the file name, or <body>
    form: FormData | None = None
    query: dict[str, str] = field(default_factory=dict)

    def field(self, name: str) -> str | None:
        """A text option, from the form (first) or the query string."""
        value = self.form.get(name) if self.form is not None else None
        if value is None:
            value = self.query.get(name)
        if isinstance(value, UploadFile):
            raise APIError(400, f"field {name!r} must be text, not a file", "invalid_field", param=name)
        return value

    def fields(self) -> dict[str, str]:
        """Every text option: query string, overridden by form fields."""
        form = {k: v for k, v in self.form.multi_items() if isinstance(v, str)} if self.form else {}
        return {**self.query, **form}

    @property
    def sample_rate(self) -> int | None:
        raw = self.field("sample_rate")
        if raw is None or not raw.strip():
            return None
        try:
            rate = int(raw)
        except ValueError:
            raise APIError(400, f"sample_rate must be an integer, got {raw[:40]!r}", "invalid_sample_rate",
                           param="sample_rate") from None
        if not MIN_RATE <= rate <= MAX_RATE:
            raise APIError(400, f"sample_rate must be between {MIN_RATE} and {MAX_RATE}, got {rate}",
                           "invalid_sample_rate", param="sample_rate")
        return rate

    def blocks(self, max_seconds: float) -> Iterator[np.ndarray]:
        """16 kHz mono float32 block by block, decoded as they are taken (blocking: call from a worker)."""
        return iter_audio(self.data, self.content_type, self.sample_rate, max_seconds)

    async def decode(self, max_seconds: float) -> np.ndarray:
        """16 kHz mono float32, decoded off the event loop (a long compressed file takes a while)."""
        return await asyncio.to_thread(decode_audio, self.data, self.content_type, self.sample_rate,
                                       max_seconds)


def is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() in FORM_TYPES


async def read_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=4, max_fields=64)
    except (MultiPartException, StarletteHTTPException, KeyError, AssertionError) as exc:
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise APIError(400, f"malformed multipart body: {detail}", "invalid_multipart") from None


_HOW = "send a multipart 'file' field (curl -F \"file=@audio.wav\") or a raw audio body"


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """The audio and its options: a multipart ``file`` field, or the raw body (its Content-Type
    says what it is; ``audio/pcm`` is PCM16 at ``sample_rate``)."""
    query = dict(request.query_params)
    if not is_form(request):
        body = await request.body()
        if not body:
            raise APIError(400, f"no audio: {_HOW}", "missing_file", param="file")
        return _checked(Upload(body, request.headers.get("content-type") or None, "<body>", query=query),
                        max_bytes)
    form = await read_form(request)
    upload = form.get("file")
    if upload is None:
        sent = ", ".join(sorted(set(form.keys()))) or "none"
        raise APIError(400, f"missing multipart field 'file' with the audio (fields sent: {sent}); {_HOW}",
                       "missing_file", param="file")
    if not isinstance(upload, UploadFile):
        raise APIError(400, f"field 'file' must be a file upload, not text; {_HOW}", "missing_file",
                       param="file")
    data = await upload.read()
    return _checked(Upload(data, upload.content_type, upload.filename or "upload", form, query), max_bytes)


def _checked(upload: Upload, max_bytes: int) -> Upload:
    # The edge middleware bounds the whole body; this holds for callers that raise their own limit.
    if len(upload.data) > max_bytes:
        raise APIError(413, f"audio is larger than {max_bytes} bytes", "too_large", param="file")
    return upload
