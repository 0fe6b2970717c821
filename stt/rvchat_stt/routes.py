"""HTTP routes of the STT service: /transcribe, the OpenAI-compatible API, /v1/models.

Parse requests, shape responses; the WebSocket is in ws.py, the model in engine.py.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from rvchat_common.app import require_ready
from rvchat_common.cancel import while_connected
from rvchat_common.errors import APIError
from rvchat_common.upload import Upload, is_form, openapi_with_fields, read_upload

from .engine import SttEngine
from .formats import NAME_TO_CODE, language_name, to_srt, to_vtt
from .schemas import TranscribeOptions, TranscribeResponse, Transcript

log = logging.getLogger("rvchat.stt")

router = APIRouter()

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

_UPLOAD_DOC = openapi_with_fields(
    language={"type": "string", "description": "ISO-639-1 code; absent = auto"}, prompt={"type": "string"},
    word_timestamps={"type": "boolean"}, vad_filter={"type": "boolean"})


# --- request parsing ---------------------------------------------------------
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


def _language(engine: SttEngine, value: str | None) -> str | None:
    if value is not None:
        # OpenAI clients sometimes send names ("english") rather than codes.
        value = NAME_TO_CODE.get(value.strip().lower(), value)
    try:
        return engine.check_language(value)
    except ValueError as exc:
        raise APIError(400, str(exc), "unsupported_language", param="language") from None


async def _read(request: Request) -> Upload:
    return await read_upload(request, request.app.state.settings.max_upload_bytes)


async def _run(request: Request, upload: Upload, opts: TranscribeOptions, op: str) -> Transcript:
    """Decode and transcribe; stopped (decode, queue wait and all) when the client leaves."""
    state = request.app.state

    async def work() -> Transcript:
        audio = await upload.decode(state.settings.max_audio_seconds)
        with state.metrics.time_inference(op):
            return await state.queue.run(state.engine.transcribe, audio, opts)

    return await while_connected(request, work())


# --- endpoints -----------------------------------------------------------------
@router.post("/transcribe", dependencies=[Depends(require_ready)], response_model=TranscribeResponse,
             response_model_exclude_none=True, openapi_extra=_UPLOAD_DOC, tags=["stt"])
async def transcribe(request: Request) -> TranscribeResponse:
    """Transcribe an uploaded file (multipart ``file``) or a raw audio body.

    Optional fields (form or query): ``language`` (absent = auto-detect), ``prompt``,
    ``word_timestamps``, ``vad_filter``, ``beam_size``, ``temperature``, and ``sample_rate``
    for a raw PCM16 body (``Content-Type: audio/pcm``).
    """
    upload = await _read(request)
    opts = TranscribeOptions(
        language=_language(request.app.state.engine, upload.field("language")),
        prompt=upload.field("prompt") or None,
        word_timestamps=_bool(upload.field("word_timestamps"), "word_timestamps"),
        vad_filter=_bool(upload.field("vad_filter"), "vad_filter"),
        beam_size=_number(upload.field("beam_size"), "beam_size", int, 1, 10),
        temperature=_number(upload.field("temperature"), "temperature", float, 0.0, 1.0),
    )
    result = await _run(request, upload, opts, "transcribe")
    log.info("transcribed %s: %.1f s of audio, %d segment(s)", upload.name, result.duration,
             len(result.segments))
    return TranscribeResponse.from_transcript(result, words=opts.word_timestamps)


@router.post("/v1/audio/transcriptions", dependencies=[Depends(require_ready)],
             openapi_extra=_UPLOAD_DOC, tags=["openai"], responses={200: {
                 "description": "The transcript in the response_format asked for",
                 "content": {"application/json": {}, "text/plain": {}, "text/vtt": {}}}})
async def openai_transcriptions(request: Request) -> Response:
    """OpenAI-compatible transcription (``client.audio.transcriptions.create``).

    Form fields: ``file``, ``model`` (any name; the loaded model answers), ``language``, ``prompt``,
    ``temperature``, ``response_format`` (json, text, srt, vtt, verbose_json) and
    ``timestamp_granularities[]`` (segment, word; verbose_json only).
    """
    if not is_form(request):
        raise APIError(400, "send multipart/form-data with the audio in field 'file'", "invalid_request")
    upload = await _read(request)
    fmt = (upload.field("response_format") or "json").strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise APIError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got {fmt!r}",
                       "invalid_response_format", param="response_format")
    if _bool(upload.field("stream"), "stream"):
        raise APIError(400, "streaming is not supported for whisper models; use the /ws WebSocket",
                       "unsupported_value", param="stream")
    form = upload.form
    granularities = {g.strip().lower() for key in ("timestamp_granularities[]", "timestamp_granularities")
                     for g in (form.getlist(key) if form else []) if isinstance(g, str) and g.strip()}
    unknown = granularities - {"word", "segment"}
    if unknown:
        raise APIError(400, f"timestamp_granularities must be 'word' and/or 'segment', got {sorted(unknown)}",
                       "invalid_field", param="timestamp_granularities")
    words = "word" in granularities
    opts = TranscribeOptions(
        language=_language(request.app.state.engine, upload.field("language")),
        prompt=upload.field("prompt") or None,
        temperature=_number(upload.field("temperature"), "temperature", float, 0.0, 1.0),
        word_timestamps=words and fmt == "verbose_json",
    )
    result = await _run(request, upload, opts, "openai_transcriptions")
    log.info("openai transcription of %s (%s): %.1f s", upload.name, fmt, result.duration)
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
