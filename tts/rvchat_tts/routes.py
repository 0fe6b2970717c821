"""HTTP routes of the TTS service: /synthesize, the OpenAI-compatible /v1/audio/speech, /voices.

Parse requests, shape responses; the WebSocket is in ws.py, the model work in speech.py / engine.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from rvchat_common.app import require_ready
from rvchat_common.audio import Resampler, base64_audio, float_to_pcm16, pcm16_to_float, wav_header
from rvchat_common.cancel import while_connected
from rvchat_common.errors import APIError, parse_json
from rvchat_common.streaming import sse_event

from .encoders import StreamEncoder
from .engine import TtsEngine
from .schemas import SpeechRequest, SynthesizeRequest
from .speech import Segment, Speaker

log = logging.getLogger("rvchat.tts")
router = APIRouter()

M = TypeVar("M", bound=BaseModel)
OPENAI_PCM_RATE = 24000  # OpenAI documents pcm as 24 kHz, 16-bit signed, little-endian
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "mp3": "audio/mpeg", "opus": "audio/opus",
               "flac": "audio/flac", "aac": "audio/aac"}


def _speaker(request: Request) -> Speaker:
    return request.app.state.speaker


async def _parse(request: Request, model: type[M]) -> M:
    """Body -> model. Malformed JSON is a 400 (as OpenAI answers), a wrong field a 422."""
    raw = await request.body()
    try:
        data = parse_json(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "request body is not valid JSON", "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
        ) from None


def _body_schema(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _voice_headers(voice: str, fallback: bool, sample_rate: int) -> dict[str, str]:
    headers = {"X-Voice": voice, "X-Sample-Rate": str(sample_rate), "Cache-Control": "no-store"}
    if fallback:
        headers["X-Voice-Fallback"] = "true"  # the requested voice is unknown; the default was used
    return headers


async def _stream_response(
    request: Request, speaker: Speaker, segments: list[Segment], voice: str, speed: float, endpoint: str,
    first_prefix: bytes, convert: Callable[[bytes], Awaitable[bytes]], media_type: str,
    headers: dict[str, str], sse: bool = False, finish: Callable[[], Awaitable[bytes]] | None = None,
) -> StreamingResponse:
    """Start streaming only once the first segment is synthesised, so its failure is a proper status."""
    cancel = speaker.engine.cancel_token()
    chunks = speaker.stream(segments, voice, speed, endpoint, cancel)
    try:
        # Once streaming, the response notices a client that leaves; until the first sentence is
        # ready, this does.
        first = await while_connected(request, chunks.__anext__())
    except BaseException:
        cancel.cancel()
        await chunks.aclose()
        raise

    async def body() -> AsyncIterator[bytes | str]:
        total = 0
        try:
            yield _wrap(first_prefix + await convert(first), sse)
            total += len(first)
            async for pcm in chunks:
                total += len(pcm)
                yield _wrap(await convert(pcm), sse)
            if finish is not None:
                tail = await finish()
                if tail:
                    yield _wrap(tail, sse)
            if sse:
                yield sse_event({"type": "speech.audio.done", "usage": {
                    "input_tokens": sum(len(s.text.split()) for s in segments), "output_tokens": 0,
                    "total_tokens": sum(len(s.text.split()) for s in segments)}})
        except Exception:  # a status can no longer be sent: end the stream, keep what was said
            log.exception("synthesis failed part-way through a stream")
        finally:
            cancel.cancel()  # client gone or done: abandon any sentence still being synthesised
            await chunks.aclose()
            log.info("%s stream: %d segments, %.2f s of audio", endpoint, len(segments),
                     total / 2 / max(1, speaker.sample_rate(voice)))

    return StreamingResponse(body(), media_type="text/event-stream" if sse else media_type,
                             headers=headers)


def _wrap(chunk: bytes, sse: bool) -> bytes | str:
    if not sse:
        return chunk
    return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode("ascii")})


async def _identity(pcm: bytes) -> bytes:
    return pcm


async def _synthesize_all(speaker: Speaker, segments: list[Segment], voice: str, speed: float) -> bytes:
    cancel = speaker.engine.cancel_token()
    parts = []
    try:
        async for pcm in speaker.stream(segments, voice, speed, "whole", cancel):
            parts.append(pcm)
    finally:
        cancel.cancel()  # the client may have gone: do not finish a long text for nobody
    return b"".join(parts)


@router.get("/voices", tags=["tts"])
async def voices(request: Request) -> dict:
    """Installed voices and the alias table (what each alias maps to on this server)."""
    engine: TtsEngine = request.app.state.engine
    catalog = engine.catalog
    return {"default": catalog.default, "voices": catalog.listing(), "aliases": catalog.aliases(),
            "unknown_voice": "any other name uses the default voice (response header X-Voice-Fallback: true)"}


def _audio_responses(*media: str) -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {200: {"description": "The speech", "content": {m: ({} if m.endswith("json") or m.startswith("text/")
                                                              else binary) for m in media}}}


@router.post("/synthesize", tags=["tts"], dependencies=[Depends(require_ready)],
             openapi_extra=_body_schema(SynthesizeRequest), response_model=None,
             responses=_audio_responses("audio/wav", "audio/pcm", "application/json"))
async def synthesize(request: Request) -> Response:
    """Text to speech: wav (audio/wav), base64 (JSON) or pcm (raw PCM16; rate in X-Sample-Rate).

    With ``stream: true`` (wav, pcm) the audio is sent sentence by sentence as it is synthesised.
    """
    req = await _parse(request, SynthesizeRequest)
    speaker = _speaker(request)
    streaming = req.stream and req.return_format in ("wav", "pcm")
    segments = speaker.segments(req.text, clause_first=streaming)
    voice, fallback = await speaker.prepare_voice(req.voice)
    rate = speaker.sample_rate(voice)
    headers = _voice_headers(voice, fallback, rate)
    if streaming:
        prefix = wav_header(rate) if req.return_format == "wav" else b""
        media = "audio/wav" if req.return_format == "wav" else "audio/pcm"
        return await _stream_response(request, speaker, segments, voice, req.speed, "synthesize", prefix,
                                      _identity, media, headers)
    # A client that leaves stops the synthesis at once (the ONNX run in flight is terminated).
    pcm = await while_connected(request, _synthesize_all(speaker, segments, voice, req.speed))
    headers["X-Audio-Duration"] = f"{len(pcm) / 2 / rate:.3f}"
    if req.return_format == "base64":
        return JSONResponse({**base64_audio(pcm, rate, "wav"), "voice": voice}, headers=headers)
    if req.return_format == "pcm":
        return Response(pcm, media_type="audio/pcm", headers=headers)
    return Response(wav_header(rate, len(pcm)) + pcm, media_type="audio/wav", headers=headers)


@router.post("/v1/audio/speech", tags=["openai"], dependencies=[Depends(require_ready)],
             openapi_extra=_body_schema(SpeechRequest), response_model=None,
             responses=_audio_responses(*MEDIA_TYPES.values(), "text/event-stream"))
async def openai_speech(request: Request) -> Response:
    """OpenAI-compatible speech, streamed.

    pcm is 24 kHz s16le (OpenAI's contract); wav is at the voice's own rate (stated in its header).
    """
    req = await _parse(request, SpeechRequest)
    speaker = _speaker(request)
    fmt = req.response_format
    segments = speaker.segments(req.input, clause_first=True)
    voice, fallback = await speaker.prepare_voice(req.voice)
    rate = speaker.sample_rate(voice)
    out_rate = OPENAI_PCM_RATE if fmt == "pcm" else rate
    headers = _voice_headers(voice, fallback, out_rate)
    sse = req.stream_format == "sse"

    encoder = StreamEncoder(fmt, rate) if fmt not in ("wav", "pcm") else None
    # One resampler for the whole response: continuous across sentences, no click at their edges.
    resampler = Resampler(rate, OPENAI_PCM_RATE) if fmt == "pcm" else None

    async def convert(pcm: bytes) -> bytes:
        if resampler is not None:
            return float_to_pcm16(resampler(pcm16_to_float(pcm)))
        if encoder is not None:
            return await asyncio.to_thread(encoder.encode, pcm)
        return pcm

    async def finish() -> bytes:
        if resampler is not None:
            return float_to_pcm16(resampler.flush())
        return await asyncio.to_thread(encoder.close) if encoder is not None else b""

    prefix = wav_header(rate) if fmt == "wav" else b""
    return await _stream_response(request, speaker, segments, voice, req.speed, "openai", prefix, convert,
                                  MEDIA_TYPES[fmt], headers, sse=sse, finish=finish)
