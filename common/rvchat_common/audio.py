"""Audio in and out, normalised once at the edge.

Everything that comes in is turned into 16 kHz mono float32 in [-1, 1]; every
module behind this one can rely on that. Everything that goes out is PCM16
little-endian, wrapped as WAV, raw, or base64 in JSON.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Iterable, Iterator

import av
import numpy as np

from .cancel import raise_if_cancelled
from .errors import APIError

SAMPLE_RATE = 16000

# Content types that mean "raw PCM16 little-endian mono" rather than a container.
RAW_PCM_TYPES = {"audio/pcm", "audio/l16", "audio/x-raw", "audio/raw", "audio/s16le"}


def is_raw_pcm(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";")[0].strip().lower() in RAW_PCM_TYPES


def pcm16_to_float(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise APIError(400, "raw PCM16 audio must have an even number of bytes", "invalid_audio")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    clipped = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


class Resampler:
    """Streaming resampler to ``dst_rate`` mono float32, continuous across calls (PyAV's libswresample).

    Resampling each frame on its own would restart the filter at every frame edge and drift the
    stream clock; this one keeps the filter's state between calls, so frames of any size give the
    same samples as the whole signal at once. The filter holds back a few samples (~1 ms): ``flush``
    returns them at the end of the stream, after which the resampler is finished.

    Call it with float32 mono at ``src_rate``; :meth:`push` takes decoded PyAV frames of any format,
    layout and rate (``src_rate`` None). At equal rates float32 passes through untouched.
    """

    def __init__(self, src_rate: int | None, dst_rate: int = SAMPLE_RATE) -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._passthrough = src_rate == dst_rate
        self._av = av.AudioResampler(format="flt", layout="mono", rate=dst_rate)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if self._passthrough or audio.size == 0:
            return audio
        if self.src_rate is None:
            raise ValueError("this resampler takes PyAV frames (push); give src_rate for arrays")
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.src_rate
        return self.push(frame)

    def push(self, frame: av.AudioFrame | None) -> np.ndarray:
        """Resample one decoded frame (None: flush)."""
        out = [f.to_ndarray().reshape(-1) for f in self._av.resample(frame)]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        return np.zeros(0, np.float32) if self._passthrough else self.push(None)


# Samples handed to libswresample at once. Resampling 1,700 s in one call peaked at 925 MB of RSS for a
# 109 MB result; in blocks (same output: the resampler is continuous) the peak is the result, twice.
# 2^15, not 2^18: upsampling 2^18 samples of 4 kHz audio took libswresample 36 MB of working memory
# (the VAD service peaked at 205 MB, idle 128), 2^15 none measurable, and 4 kHz decodes faster
# (39 ms against 67 per 600 s); 48 kHz 75 ms against 66.
RESAMPLE_BLOCK = 1 << 15


def resample(audio: np.ndarray, src_rate: int, dst_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One-shot resampling of a whole signal (the streaming :class:`Resampler`, fed in blocks, flushed)."""
    return _resample_blocks((audio[i:i + RESAMPLE_BLOCK] for i in range(0, audio.size, RESAMPLE_BLOCK)),
                            src_rate, dst_rate)


def _resample_blocks(blocks: Iterable[np.ndarray], src_rate: int, dst_rate: int = SAMPLE_RATE) -> np.ndarray:
    resampler = Resampler(src_rate, dst_rate)
    parts = [resampler(block) for block in blocks]
    parts.append(resampler.flush())
    parts = [p for p in parts if p.size]
    if not parts:
        return np.zeros(0, np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def too_long(seconds: float, max_seconds: float) -> APIError:
    return APIError(413, f"audio is {seconds:.0f} s long; the limit is {max_seconds:.0f} s (send it in "
                    "parts)", "audio_too_long", param="file")


def decode_raw_pcm(data: bytes, sample_rate: int | None = None,
                   max_seconds: float | None = None) -> np.ndarray:
    parts = list(iter_raw_pcm(data, sample_rate, max_seconds))
    if not parts:
        return np.zeros(0, np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def iter_raw_pcm(data: bytes, sample_rate: int | None = None,
                 max_seconds: float | None = None) -> Iterator[np.ndarray]:
    """Raw PCM16 to 16 kHz float32 in blocks (non-empty ones)."""
    rate = sample_rate or SAMPLE_RATE
    if not 4000 <= rate <= 192000:
        raise APIError(400, f"sample_rate {rate} is out of range (4000-192000)", "invalid_sample_rate")
    if not data:
        raise APIError(400, "audio is empty", "empty_audio")
    # The length is known from the byte count: refuse before converting anything (25 MiB of PCM16
    # at 4 kHz is 3,277 s, 210 MB once resampled to 16 kHz float32).
    seconds = len(data) / 2 / rate
    if max_seconds is not None and seconds > max_seconds:
        raise too_long(seconds, max_seconds)
    if len(data) % 2:
        pcm16_to_float(data)  # the odd-length error
    step = 2 * RESAMPLE_BLOCK
    resampler = Resampler(rate)
    for i in range(0, len(data), step):
        raise_if_cancelled()
        block = resampler(pcm16_to_float(data[i:i + step]))
        if block.size:
            yield block
    tail = resampler.flush()
    if tail.size:
        yield tail


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The duration a file's header states (None when it states none); only a hint, as headers can
    lie, but an honest 3-hour FLAC is then refused before a single frame is decoded."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def decode_audio(
    data: bytes,
    content_type: str | None = None,
    sample_rate: int | None = None,
    max_seconds: float = 1800.0,
) -> np.ndarray:
    """Decode an upload to 16 kHz mono float32 (all of :func:`iter_audio`'s blocks, joined)."""
    parts = [block for block in iter_audio(data, content_type, sample_rate, max_seconds) if block.size]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def iter_audio(
    data: bytes,
    content_type: str | None = None,
    sample_rate: int | None = None,
    max_seconds: float = 1800.0,
) -> Iterator[np.ndarray]:
    """Decode an upload to 16 kHz mono float32, block by block, so a consumer that works on a stream (the
    VAD's file detection) never holds the whole signal: 1,700 s is 109 MB once decoded.

    Raw PCM16 is taken when the content type says so; anything else goes through
    PyAV (wav, flac, mp3, ogg/opus, webm, m4a, ...). Errors: empty -> 400,
    not audio -> 415, a recognised but broken file -> 400, longer than ``max_seconds`` -> 413,
    found from the header where it states a duration, else while decoding: decoding stops at the
    limit, so memory never holds more than ``max_seconds`` of audio. A 413 found while decoding comes
    after blocks have been yielded: a consumer must not answer before the iterator is exhausted.
    """
    if not data:
        raise APIError(400, "audio is empty", "empty_audio")
    if is_raw_pcm(content_type):
        yield from iter_raw_pcm(data, sample_rate, max_seconds)
        return
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.InvalidDataError, av.error.EOFError, ValueError):
        raise APIError(
            415,
            "unsupported or unrecognised audio format (send wav, flac, mp3, ogg/opus, webm or m4a, "
            "or raw PCM16 with Content-Type audio/pcm)",
            "unsupported_audio",
        ) from None
    except av.error.FFmpegError as exc:
        raise APIError(400, f"could not read audio: {exc}", "invalid_audio") from None
    with container:
        streams = container.streams.audio
        if not streams:
            raise APIError(415, "the file holds no audio stream", "no_audio_stream")
        declared = _declared_seconds(container, streams[0])
        if declared is not None and declared > max_seconds + 1:
            raise too_long(declared, max_seconds)
        resampler = Resampler(None)
        total = 0
        limit = int(max_seconds * SAMPLE_RATE)
        frames = container.decode(streams[0])
        while True:
            try:
                frame = next(frames, None)
                raise_if_cancelled()  # the client of a long upload has gone
                arr = resampler.push(frame) if frame is not None else resampler.flush()
            except (av.error.FFmpegError, ValueError) as exc:
                if not total:
                    raise APIError(400, f"corrupt audio: {exc}", "corrupt_audio") from None
                break  # a truncated file: keep what decoded, as ffmpeg itself does
            total += arr.size
            if total > limit:
                raise APIError(413, f"audio is longer than {max_seconds:.0f} s (send it in parts)",
                               "audio_too_long", param="file")
            if arr.size:
                yield arr
            if frame is None:
                break
    if not total:
        raise APIError(400, "audio decodes to no samples", "empty_audio")


def wav_header(sample_rate: int, n_bytes: int | None = None, channels: int = 1) -> bytes:
    """A PCM16 WAV header; with no length (streaming) the sizes are set to the maximum."""
    data_len = 0xFFFFFFFF - 36 if n_bytes is None else n_bytes
    byte_rate = sample_rate * channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", min(36 + data_len, 0xFFFFFFFF))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, byte_rate, channels * 2, 16)
        + b"data"
        + struct.pack("<I", data_len)
    )


def wav_bytes(pcm16: bytes, sample_rate: int) -> bytes:
    return wav_header(sample_rate, len(pcm16)) + pcm16


def base64_audio(pcm16: bytes, sample_rate: int, fmt: str = "wav") -> dict:
    """JSON payload for audio: WAV (default) or raw PCM16, base64-encoded."""
    payload = wav_bytes(pcm16, sample_rate) if fmt == "wav" else pcm16
    return {
        "audio": base64.b64encode(payload).decode("ascii"),
        "sample_rate": sample_rate,
        "format": fmt,
        "duration": round(len(pcm16) / 2 / sample_rate, 3),
    }

