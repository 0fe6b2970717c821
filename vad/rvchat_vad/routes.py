"""HTTP and WebSocket routes: parse requests, shape responses. No model library here."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from rvchat_common.app import require_ready
from rvchat_common.audio import SAMPLE_RATE, decode_audio
from rvchat_common.errors import APIError, parse_json, ws_error, ws_event_error

from .schemas import DetectParams, DetectResponse, Segment, StreamConfig
from .stream import TurnConfig, VadStream

log = logging.getLogger("rvchat.vad")
router = APIRouter()

# A frame that needs at most this many 32 ms model calls (~0.2 ms each) runs on the event loop:
# a thread hop costs about as much as the call, and turn-taking latency is the point of /ws.
# Bigger frames (a client pushing seconds at once) go to a worker thread.
INLINE_CHUNKS = 4

_DETECT_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"},
                "threshold": {"type": "number"}, "min_speech_ms": {"type": "integer"},
                "min_silence_ms": {"type": "integer"}, "speech_pad_ms": {"type": "integer"},
                "sample_rate": {"type": "integer"}}}},
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
            "audio/pcm": {"schema": {"type": "string", "format": "binary"}},
        }
    }
}


def _params(raw: dict[str, Any]) -> DetectParams:
    try:
        return DetectParams.model_validate(raw)
    except ValidationError as exc:
        # The shared handler turns this into a 422 in the common error shape.
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


async def _read_upload(request: Request) -> tuple[bytes, str | None, dict[str, Any]]:
    """The audio bytes, their content type and the option fields, from multipart or a raw body."""
    ctype = request.headers.get("content-type", "")
    params: dict[str, Any] = dict(request.query_params)
    base = ctype.split(";")[0].strip().lower()
    if base == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            fields = ", ".join(sorted(form.keys())) or "none"
            msg = ("field 'file' must be a file upload (curl -F \"file=@audio.wav\")"
                   if upload is not None else
                   f"missing multipart file field 'file' (fields sent: {fields}); "
                   "use curl -F \"file=@audio.wav\"")
            raise APIError(422, msg, "missing_file", param="file")
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return await upload.read(), upload.content_type, params
    if base == "application/x-www-form-urlencoded":
        raise APIError(422, "send audio as a multipart 'file' field or as a raw audio body, "
                       "not a url-encoded form", "missing_file", param="file")
    body = await request.body()
    if not body:
        raise APIError(400, "no audio: send a multipart 'file' field "
                       "(curl -F \"file=@audio.wav\") or a raw audio body", "missing_audio",
                       param="file")
    return body, ctype or None, params


@router.post("/detect", response_model=DetectResponse, dependencies=[Depends(require_ready)],
             openapi_extra=_DETECT_DOC, summary="Find the speech segments in an audio file")
async def detect(request: Request) -> DetectResponse:
    """Multipart ``file`` (wav, flac, mp3, ogg/opus, webm, m4a...) or a raw body
    (``audio/wav``..., or ``audio/pcm`` PCM16 with ``sample_rate``)."""
    settings = request.app.state.settings
    data, ctype, raw = await _read_upload(request)
    p = _params(raw)
    audio = await asyncio.to_thread(decode_audio, data, ctype, p.sample_rate,
                                    settings.max_audio_seconds)
    engine = request.app.state.engine
    with request.app.state.metrics.time_inference("detect"):
        spans = await request.app.state.queue.run(
            engine.detect, audio,
            threshold=_pick(p.threshold, settings.threshold),
            min_speech_ms=_pick(p.min_speech_ms, settings.min_speech_ms),
            min_silence_ms=_pick(p.min_silence_ms, settings.detect_min_silence_ms),
            speech_pad_ms=_pick(p.speech_pad_ms, settings.speech_pad_ms),
        )
    segments = [Segment(start=round(s, 3), end=round(e, 3)) for s, e in spans]
    return DetectResponse(
        segments=segments,
        duration=round(audio.size / SAMPLE_RATE, 3),
        speech_seconds=round(sum(e - s for s, e in spans), 3),
    )


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value


def _ready_event(stream: VadStream) -> dict:
    cfg = stream.config
    return {"type": "ready", "sample_rate": stream.sample_rate, "threshold": cfg.threshold,
            "min_speech_ms": cfg.min_speech_ms, "min_silence_ms": cfg.min_silence_ms,
            "speech_pad_ms": cfg.speech_pad_ms, "probabilities": stream.probabilities}


def _apply_config(stream: VadStream, cfg: StreamConfig) -> None:
    for name in ("threshold", "min_speech_ms", "min_silence_ms", "speech_pad_ms"):
        value = getattr(cfg, name)
        if value is not None:
            setattr(stream.config, name, value)
    if cfg.probabilities is not None:
        stream.probabilities = cfg.probabilities
    if cfg.sample_rate is not None and cfg.sample_rate != stream.sample_rate:
        stream.set_sample_rate(cfg.sample_rate)


def _config_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid config: " + "; ".join(parts)


@router.websocket("/ws")
async def stream_ws(ws: WebSocket) -> None:
    """Turn detection on a live PCM16 stream (see docs/protocols.md, VAD)."""
    app = ws.app
    await ws.accept()
    state = app.state.load_state
    if not state["loaded"]:
        await ws_error(ws, "model is still loading; retry shortly", "model_loading", close_code=1013)
        return
    if app.state.streams >= app.state.settings.max_streams:
        await ws_error(ws, "too many concurrent streams; retry shortly", "too_many_streams",
                       close_code=1013)
        return
    settings = app.state.settings
    frame_time = app.state.frame_seconds
    stream = VadStream(
        app.state.engine.new_stream(),
        TurnConfig(settings.threshold, settings.min_speech_ms, settings.stream_min_silence_ms,
                   settings.speech_pad_ms),
    )
    app.state.streams += 1
    try:
        await ws.send_json(_ready_event(stream))
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            data = msg.get("bytes")
            if data is not None:
                if not data:
                    continue
                if len(data) % 2:
                    await ws_event_error(ws, f"binary frame of {len(data)} bytes is not PCM16 "
                                         "(odd byte count); frame dropped", "invalid_audio")
                    continue
                t0 = time.perf_counter()
                if stream.pending_chunks(len(data)) <= INLINE_CHUNKS:
                    events = stream.feed(data)
                else:
                    events = await asyncio.to_thread(stream.feed, data)
                frame_time.observe(time.perf_counter() - t0)
                for event in events:
                    await ws.send_json(event)
                continue
            await _handle_text(ws, stream, msg.get("text") or "")
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("VAD stream failed")
        await ws_error(ws, "internal error in the VAD stream", "internal_error", close_code=1011)
    finally:
        app.state.streams -= 1


async def _handle_text(ws: WebSocket, stream: VadStream, text: str) -> None:
    try:
        event = parse_json(text)
    except ValueError:
        await ws_event_error(ws, "text frame is not valid JSON", "invalid_json")
        return
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        await ws_event_error(ws, "text frame must be a JSON object with a string 'type'",
                             "invalid_event")
        return
    kind = event["type"]
    if kind == "config":
        try:
            cfg = StreamConfig.model_validate(event)
        except ValidationError as exc:
            await ws_event_error(ws, _config_error(exc), "invalid_config")
            return
        _apply_config(stream, cfg)
        await ws.send_json(_ready_event(stream))
    elif kind == "flush":
        for out in stream.flush():
            await ws.send_json(out)
    elif kind == "reset":
        stream.reset()
    else:
        await ws_event_error(ws, f"unknown event type {kind[:40]!r} "
                             "(expected config, flush or reset)", "unknown_event")


__all__ = ["router"]
