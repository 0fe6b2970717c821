"""HTTP routes of the VAD service: POST /detect. The WebSocket is in ws.py, the model in engine.py."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from rvchat_common.app import require_ready
from rvchat_common.cancel import while_connected
from rvchat_common.audio import SAMPLE_RATE
from rvchat_common.upload import openapi_with_fields, read_upload

from .engine import VadEngine
from .schemas import DetectParams, DetectResponse, Segment
from .settings import Settings

router = APIRouter()

_DETECT_DOC = openapi_with_fields(
    threshold={"type": "number"}, min_speech_ms={"type": "integer"}, min_silence_ms={"type": "integer"},
    speech_pad_ms={"type": "integer"})


def _params(raw: dict[str, Any]) -> DetectParams:
    try:
        return DetectParams.model_validate(raw)
    except ValidationError as exc:
        # The shared handler turns this into a 422 in the common error shape.
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def _pick(value: float | None, default: float) -> Any:
    return default if value is None else value


@router.post("/detect", response_model=DetectResponse, dependencies=[Depends(require_ready)],
             openapi_extra=_DETECT_DOC, summary="Find the speech segments in an audio file")
async def detect(request: Request) -> DetectResponse:
    """Multipart ``file`` (wav, flac, mp3, ogg/opus, webm, m4a...) or a raw body
    (``audio/wav``..., or ``audio/pcm`` PCM16 with ``sample_rate``)."""
    settings: Settings = request.app.state.settings
    engine: VadEngine = request.app.state.engine
    upload = await read_upload(request, settings.max_upload_bytes)
    p = _params(upload.fields())

    async def work() -> tuple[np.ndarray, list[tuple[float, float]]]:
        audio = await upload.decode(settings.max_audio_seconds)
        with request.app.state.metrics.time_inference("detect"):
            return audio, await request.app.state.queue.run(
                engine.detect, audio,
                threshold=_pick(p.threshold, settings.threshold),
                min_speech_ms=_pick(p.min_speech_ms, settings.min_speech_ms),
                min_silence_ms=_pick(p.min_silence_ms, settings.detect_min_silence_ms),
                speech_pad_ms=_pick(p.speech_pad_ms, settings.speech_pad_ms),
            )

    audio, spans = await while_connected(request, work())
    segments = [Segment(start=round(s, 3), end=round(e, 3)) for s, e in spans]
    return DetectResponse(
        segments=segments,
        duration=round(audio.size / SAMPLE_RATE, 3),
        speech_seconds=round(sum(e - s for s, e in spans), 3),
    )
