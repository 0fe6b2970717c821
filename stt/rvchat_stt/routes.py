"""HTTP and WebSocket routes: parse requests, shape responses. No model code here."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from rvchat_common.app import is_ready, require_ready
from rvchat_common.audio import decode_audio
from rvchat_common.errors import APIError, ws_error

from .formats import NAME_TO_CODE, language_name, to_srt, to_vtt
from .schemas import TranscribeOptions, TranscribeResponse, Transcript
from .stream import StreamSession

log = logging.getLogger("rvchat.stt")

router = APIRouter()

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

_UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "wav, flac, mp3, ogg/opus, webm, m4a, ..."},
                        "language": {"type": "string", "description": "ISO-639-1 code; absent = auto"},
                        "prompt": {"type": "string"},
                        "word_timestamps": {"type": "boolean"},
                        "vad_filter": {"type": "boolean"},
                    },
                }
            },
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        }
    }
}


# --- request parsing ---------------------------------------------------------
async def _read_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=4, max_fields=64)
    except (MultiPartException, StarletteHTTPException, KeyError, AssertionError) as exc:
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise APIError(400, f"malformed multipart body: {detail}", "invalid_multipart") from None


def _field(form: FormData | None, request: Request, name: str) -> str | None:
    value = form.get(name) if form is not None else None
    if value is None:
        value = request.query_params.get(name)
    if isinstance(value, UploadFile):
        raise APIError(400, f"field {name!r} must be text, not a file", "invalid_field", param=name)
    return value


def _bool(value: str | None, name: str, default: bool = False) -> bool:
    if value is None:
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise APIError(400, f"{name} must be true or false, got {value!r}", "invalid_field", param=name)


def _number(value: str | None, name: str, kind: type, lo: float, hi: float) -> Any:
    if value is None or value.strip() == "":
        return None
    try:
        number = kind(value)
    except ValueError:
        raise APIError(400, f"{name} must be a {kind.__name__}, got {value!r}", "invalid_field",
                       param=name) from None
    if not lo <= number <= hi:
        raise APIError(400, f"{name} must be between {lo} and {hi}", "invalid_field", param=name)
    return number


async def _upload(request: Request, form: FormData | None) -> tuple[bytes, str | None, str]:
    """The audio bytes, their content type and a name for logs: a multipart ``file`` or a raw body."""
    if form is None:
        body = await request.body()
        return body, request.headers.get("content-type"), "<body>"
    upload = form.get("file")
    if upload is None:
        got = ", ".join(sorted(set(form.keys()))) or "none"
        raise APIError(400, f"missing multipart field 'file' with the audio (fields received: {got})",
                       "missing_file", param="file")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "field 'file' must be a file upload (curl: -F \"file=@audio.wav\")",
                       "missing_file", param="file")
    data = await upload.read()
    return data, upload.content_type, upload.filename or "upload"


def _is_form(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").lower()
    return ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded")


def _language(engine: Any, value: str | None) -> str | None:
    if value is not None:
        # OpenAI clients sometimes send names ("english") rather than codes.
        value = NAME_TO_CODE.get(value.strip().lower(), value)
    try:
        return engine.check_language(value)
    except ValueError as exc:
        raise APIError(400, str(exc), "unsupported_language", param="language") from None


async def _decode(request: Request, data: bytes, content_type: str | None,
                  sample_rate: int | None) -> Any:
    settings = request.app.state.settings
    # Decoding a long compressed file takes a while: off the event loop.
    import asyncio

    return await asyncio.to_thread(decode_audio, data, content_type, sample_rate, settings.max_audio_seconds)


async def _run(request: Request, audio: Any, opts: TranscribeOptions, op: str) -> Transcript:
    state = request.app.state
    with state.metrics.time_inference(op):
        return await state.queue.run(state.engine.transcribe, audio, opts)


# --- endpoints -----------------------------------------------------------------
@router.post("/transcribe", dependencies=[Depends(require_ready)], response_model=TranscribeResponse,
             response_model_exclude_none=True, openapi_extra=_UPLOAD_DOC, tags=["stt"])
async def transcribe(request: Request) -> TranscribeResponse:
    """Transcribe an uploaded file (multipart ``file``) or a raw audio body.

    Optional fields (form or query): ``language`` (absent = auto-detect), ``prompt``,
    ``word_timestamps``, ``vad_filter``, ``beam_size``, ``temperature``, and ``sample_rate``
    for a raw PCM16 body (``Content-Type: audio/pcm``).
    """
    engine = request.app.state.engine
    form = await _read_form(request) if _is_form(request) else None
    opts = TranscribeOptions(
        language=_language(engine, _field(form, request, "language")),
        prompt=_field(form, request, "prompt") or None,
        word_timestamps=_bool(_field(form, request, "word_timestamps"), "word_timestamps"),
        vad_filter=_bool(_field(form, request, "vad_filter"), "vad_filter"),
        beam_size=_number(_field(form, request, "beam_size"), "beam_size", int, 1, 10),
        temperature=_number(_field(form, request, "temperature"), "temperature", float, 0.0, 1.0),
    )
    sample_rate = _number(_field(form, request, "sample_rate"), "sample_rate", int, 4000, 192000)
    data, ctype, name = await _upload(request, form)
    audio = await _decode(request, data, ctype, sample_rate)
    result = await _run(request, audio, opts, "transcribe")
    log.info("transcribed %s: %.1f s of audio, %d segment(s)", name, result.duration, len(result.segments))
    return TranscribeResponse.from_transcript(result, words=opts.word_timestamps)


@router.post("/v1/audio/transcriptions", dependencies=[Depends(require_ready)],
             openapi_extra=_UPLOAD_DOC, tags=["openai"])
async def openai_transcriptions(request: Request) -> Response:
    """OpenAI-compatible transcription (``client.audio.transcriptions.create``).

    Form fields: ``file``, ``model`` (any name; the loaded model answers), ``language``, ``prompt``,
    ``temperature``, ``response_format`` (json, text, srt, vtt, verbose_json) and
    ``timestamp_granularities[]`` (segment, word; verbose_json only).
    """
    engine = request.app.state.engine
    if not _is_form(request):
        raise APIError(400, "send multipart/form-data with the audio in field 'file'", "invalid_request")
    form = await _read_form(request)
    fmt = (_field(form, request, "response_format") or "json").strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise APIError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got {fmt!r}",
                       "invalid_response_format", param="response_format")
    if _bool(_field(form, request, "stream"), "stream"):
        raise APIError(400, "streaming is not supported for whisper models; use the /ws WebSocket",
                       "unsupported_value", param="stream")
    granularities = {g.strip().lower() for key in ("timestamp_granularities[]", "timestamp_granularities")
                     for g in form.getlist(key) if isinstance(g, str) and g.strip()}
    unknown = granularities - {"word", "segment"}
    if unknown:
        raise APIError(400, f"timestamp_granularities must be 'word' and/or 'segment', got {sorted(unknown)}",
                       "invalid_field", param="timestamp_granularities")
    words = "word" in granularities
    opts = TranscribeOptions(
        language=_language(engine, _field(form, request, "language")),
        prompt=_field(form, request, "prompt") or None,
        temperature=_number(_field(form, request, "temperature"), "temperature", float, 0.0, 1.0),
        word_timestamps=words and fmt == "verbose_json",
    )
    data, ctype, name = await _upload(request, form)
    audio = await _decode(request, data, ctype, None)
    result = await _run(request, audio, opts, "openai_transcriptions")
    log.info("openai transcription of %s (%s): %.1f s", name, fmt, result.duration)
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(to_srt(result.segments))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(result.segments), media_type="text/vtt")
    usage = {"type": "duration", "seconds": round(result.duration, 3)}
    if fmt == "json":
        return JSONResponse({"text": result.text, "usage": usage})
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": language_name(result.language),
        "duration": result.duration,
        "text": result.text,
    }
    # Segments always: clients that asked for words only still find them useful, and the field is optional.
    body["segments"] = [
        s.model_dump(include={"id", "seek", "start", "end", "text", "tokens", "temperature",
                              "avg_logprob", "compression_ratio", "no_speech_prob"})
        for s in result.segments
    ]
    if words:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end}
                         for s in result.segments for w in (s.words or [])]
    body["usage"] = usage
    return JSONResponse(body)


@router.get("/v1/models", tags=["openai"])
async def models(request: Request) -> dict:
    """The loaded model, under its own name and as 'whisper-1' (both are accepted)."""
    name = request.app.state.engine.model_name
    return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "rvchat"}
                                       for n in dict.fromkeys([name, "whisper-1"])]}


@router.websocket("/ws")
async def stream(ws: WebSocket) -> None:
    """Streaming transcription: PCM16 frames in, ``partial`` and ``final`` events out."""
    app = ws.app
    if not is_ready(app):
        await ws.accept()
        await ws_error(ws, "model is still loading; retry shortly", "model_loading", close_code=1013)
        return
    session = StreamSession(ws, app.state.engine, app.state.queue, app.state.settings, app.state.metrics)
    try:
        await session.run()
    except Exception:
        log.exception("stream session failed")
        await ws_error(ws, "internal error in the stream session", "internal_error", close_code=1011)
