"""HTTP routes of the VAD service: POST /detect. The WebSocket is in ws.py, the model in engine.py."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
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


class _Counted:
    """An iterator of audio blocks that counts the samples it hands out."""

    def __init__(self, blocks: Iterator[np.ndarray]) -> None:
        self._blocks = blocks
        self.samples = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        block = next(self._blocks)
        self.samples += block.size
        return block

    def drain(self) -> None:
        for _ in self:
            pass


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

    def run(max_seconds: float) -> tuple[int, list[tuple[float, float]]]:
        # Decoded as the model reads it, never whole: 1,700 s of PCM peaked the service at 264 MB of RSS
        # (idle 125) with the file decoded first. The first block is taken before the model runs, so what
        # the header or the byte count already refuses (415, 413) never reaches it.
        blocks = upload.blocks(max_seconds)
        counted = _Counted(itertools.chain([next(blocks)], blocks))
        spans = engine.detect(counted, threshold=_pick(p.threshold, settings.threshold),
                              min_speech_ms=_pick(p.min_speech_ms, settings.min_speech_ms),
                              min_silence_ms=_pick(p.min_silence_ms, settings.detect_min_silence_ms),
                              speech_pad_ms=_pick(p.speech_pad_ms, settings.speech_pad_ms))
        counted.drain()  # what the engine left unread still counts (and may still be over the limit)
        return counted.samples, spans

    async def work() -> tuple[int, list[tuple[float, float]]]:
        with request.app.state.metrics.time_inference("detect"):
            return await request.app.state.queue.run(run, settings.max_audio_seconds)

    samples, spans = await while_connected(request, work())
    segments = [Segment(start=round(s, 3), end=round(e, 3)) for s, e in spans]
    return DetectResponse(
        segments=segments,
        duration=round(samples / SAMPLE_RATE, 3),
        speech_seconds=round(sum(e - s for s, e in spans), 3),
    )
