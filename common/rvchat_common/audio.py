"""Audio in and out, normalised once at the edge.

Everything that comes in is turned into 16 kHz mono float32 in [-1, 1]; every
module behind this one can rely on that. Everything that goes out is PCM16
little-endian, wrapped as WAV, raw, or base64 in JSON.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Iterator
from functools import lru_cache
from math import ceil, gcd

import numpy as np
import soxr

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


# The live resampler's filter: a Kaiser-windowed sinc with this many zero crossings each side, its cutoff
# at this fraction of the lower rate's Nyquist. 48 -> 16 kHz: 156 taps, 1.6 ms of look-ahead; a 7 kHz tone
# passes, 8.5 kHz (which would fold onto 7.5) is down 80 dB. libswresample's default filter is alike.
ZERO_CROSSINGS = 24
CUTOFF = 0.94
KAISER_BETA = 9.0


@lru_cache(maxsize=32)
def _polyphase(up: int, down: int) -> tuple[np.ndarray, int]:
    """The filter for ``up``/``down`` resampling, one row of taps per output phase, and its half width
    (in input samples). Output sample n sits at input time n*down/up; its phase is (n*down) mod up."""
    fc = 0.5 * min(1.0, up / down) * CUTOFF  # cycles per input sample
    half = ceil(ZERO_CROSSINGS / (2 * fc))
    offsets = np.arange(-half + 1, half + 1)  # input samples around floor(t): x[i-half+1] .. x[i+half]
    t = offsets[None, :] - (np.arange(up) / up)[:, None]
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (t / half) ** 2, 0, None))) / np.i0(KAISER_BETA)
    taps = (2 * fc * np.sinc(2 * fc * t) * window).astype(np.float32)
    return taps, half


class Resampler:
    """Streaming resampler to ``dst_rate`` mono float32 for live audio (mic frames, Wyoming chunks, the
    Realtime API's 24 kHz), continuous across calls, with 1.6 ms of look-ahead (3.3 at 8 kHz).

    Resampling each frame on its own would restart the filter at every frame edge and drift the
    stream clock; this one keeps the filter's state between calls, so frames of any size give the
    same samples as the whole signal at once (:func:`resample`). It holds back its look-ahead:
    ``flush`` returns the rest at the end of the stream, after which the resampler is finished; the
    whole stream gives ceil(n * dst / src) samples. A polyphase FIR in numpy, not libsoxr's stream,
    which hands out 20-40 ms blocks late. At equal rates float32 passes through untouched.
    """

    def __init__(self, src_rate: int, dst_rate: int = SAMPLE_RATE) -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._passthrough = src_rate == dst_rate
        g = gcd(src_rate, dst_rate)
        self._up, self._down = dst_rate // g, src_rate // g
        self._taps, self._half = _polyphase(self._up, self._down)
        # Input kept from absolute index _base on; the stream starts in silence (x[j < 0] = 0).
        self._buf = np.zeros(self._half, np.float32)
        self._base = -self._half
        self._fed = 0  # input samples in
        self._out = 0  # output samples out

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if self._passthrough or audio.size == 0:
            return audio
        self._buf = np.concatenate([self._buf, audio])
        self._fed += audio.size
        # Output n needs x up to floor(n*down/up) + half.
        ready = (self._fed - self._half) * self._up  # n*down <= ready - 1 ... in up units
        return self._emit(max(0, -(-ready // self._down)))

    def flush(self) -> np.ndarray:
        if self._passthrough:
            return np.zeros(0, np.float32)
        total = -(-self._fed * self._up // self._down)  # ceil(n * dst / src)
        self._buf = np.concatenate([self._buf, np.zeros(self._half, np.float32)])
        return self._emit(total)

    def _emit(self, end: int) -> np.ndarray:
        if end <= self._out:
            return np.zeros(0, np.float32)
        y = np.empty(end - self._out, np.float32)
        span = np.arange(2 * self._half)[None, :]
        for start in range(self._out, end, 4096):  # the gathered taps of 4,096 outputs: a few MB
            n = np.arange(start, min(start + 4096, end), dtype=np.int64) * self._down
            first, phase = np.divmod(n, self._up)
            idx = (first - self._half + 1 - self._base)[:, None] + span
            y[start - self._out:start - self._out + n.size] = np.einsum(
                "ij,ij->i", self._buf[idx], self._taps[phase])
        self._out = end
        # Keep what the next output needs: from floor(out*down/up) - half + 1 on.
        keep = (self._out * self._down) // self._up - self._half + 1
        if keep > self._base:
            self._buf = self._buf[keep - self._base:]
            self._base = keep
        return y


def resample(audio: np.ndarray, src_rate: int, dst_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One-shot resampling of a whole (short) signal: the live :class:`Resampler`'s samples, flushed.
    Uploads go through libsoxr instead (:class:`_StreamResampler`), 50x faster on long files."""
    resampler = Resampler(src_rate, dst_rate)
    head = resampler(audio)
    tail = resampler.flush()
    return np.concatenate([head, tail]) if tail.size else head


class _StreamResampler:
    """libsoxr's stream resampler for decoding uploads: fast and high quality, and its 20-40 ms of delay
    do not matter for a file. Same contract as :class:`Resampler` (call, then flush)."""

    def __init__(self, src_rate: int, dst_rate: int = SAMPLE_RATE) -> None:
        self._soxr = None if src_rate == dst_rate else soxr.ResampleStream(src_rate, dst_rate, 1, "float32")

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        return audio if self._soxr is None else self._soxr.resample_chunk(audio)

    def flush(self) -> np.ndarray:
        if self._soxr is None:
            return np.zeros(0, np.float32)
        return self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)


# Samples decoded and resampled at once. Resampling 1,700 s in one call peaked at 925 MB of RSS for a
# 109 MB result; in blocks (same output: the resampler is continuous) the peak is the result, twice.
RESAMPLE_BLOCK = 1 << 15


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
    resampler = _StreamResampler(rate)
    for i in range(0, len(data), step):
        raise_if_cancelled()
        block = resampler(pcm16_to_float(data[i:i + step]))
        if block.size:
            yield block
    tail = resampler.flush()
    if tail.size:
        yield tail


def _pyav():
    """PyAV when it is installed (STT and TTS need it, and it comes with a local install): it decodes
    nearly anything. The VAD and main_app images leave it out (its FFmpeg is 79 MB of a 350 MB
    image) and read uploads with libsndfile."""
    try:
        import av
    except ImportError:
        return None
    return av


UNSUPPORTED = "unsupported or unrecognised audio format (send {formats}, or raw PCM16 with Content-Type audio/pcm)"
AV_FORMATS = "wav, flac, mp3, ogg/opus, webm or m4a"
SNDFILE_FORMATS = "wav, flac, mp3 or ogg (vorbis/opus); this service is installed without PyAV, which webm and m4a need"


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

    Raw PCM16 is taken when the content type says so; anything else goes through PyAV (wav, flac,
    mp3, ogg/opus, webm, m4a, ...) or, where PyAV is not installed, libsndfile (wav, flac, mp3, ogg).
    Errors: empty -> 400, not audio -> 415, a recognised but broken file -> 400, longer than
    ``max_seconds`` -> 413, found from the header where it states a duration, else while decoding:
    decoding stops at the limit, so memory never holds more than ``max_seconds`` of audio. A 413 found
    while decoding comes after blocks have been yielded: a consumer must not answer before the iterator
    is exhausted.
    """
    if not data:
        raise APIError(400, "audio is empty", "empty_audio")
    if is_raw_pcm(content_type):
        yield from iter_raw_pcm(data, sample_rate, max_seconds)
        return
    av = _pyav()
    blocks = _av_blocks(av, data, max_seconds) if av else _sndfile_blocks(data, max_seconds)
    total = 0
    limit = int(max_seconds * SAMPLE_RATE)
    for arr in blocks:
        total += arr.size
        if total > limit:
            raise APIError(413, f"audio is longer than {max_seconds:.0f} s (send it in parts)",
                           "audio_too_long", param="file")
        if arr.size:
            yield arr
    if not total:
        raise APIError(400, "audio decodes to no samples", "empty_audio")


def _check_declared(seconds: float | None, max_seconds: float) -> None:
    """A duration the file's header states is only a hint, as headers can lie, but an honest 3-hour
    FLAC is then refused before a single frame is decoded."""
    if seconds is not None and seconds > max_seconds + 1:
        raise too_long(seconds, max_seconds)


def _av_blocks(av, data: bytes, max_seconds: float) -> Iterator[np.ndarray]:
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.InvalidDataError, av.error.EOFError, ValueError):
        raise APIError(415, UNSUPPORTED.format(formats=AV_FORMATS), "unsupported_audio") from None
    except av.error.FFmpegError as exc:
        raise APIError(400, f"could not read audio: {exc}", "invalid_audio") from None
    with container:
        streams = container.streams.audio
        if not streams:
            raise APIError(415, "the file holds no audio stream", "no_audio_stream")
        stream = streams[0]
        if stream.duration is not None and stream.time_base is not None:
            _check_declared(float(stream.duration * stream.time_base), max_seconds)
        elif container.duration is not None:
            _check_declared(container.duration / av.time_base, max_seconds)
        # libswresample converts any sample format and layout to mono float and resamples, in one go.
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        frames = container.decode(stream)
        decoded = False
        while True:
            try:
                frame = next(frames, None)
                raise_if_cancelled()  # the client of a long upload has gone
                out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            except (av.error.FFmpegError, ValueError) as exc:
                if not decoded:
                    raise APIError(400, f"corrupt audio: {exc}", "corrupt_audio") from None
                return  # a truncated file: keep what decoded, as ffmpeg itself does
            if out:
                block = np.concatenate(out).astype(np.float32, copy=False)
                decoded = decoded or block.size > 0
                yield block
            if frame is None:
                return


def _sndfile_blocks(data: bytes, max_seconds: float) -> Iterator[np.ndarray]:
    import soundfile

    try:
        f = soundfile.SoundFile(io.BytesIO(data))
    except soundfile.LibsndfileError:
        raise APIError(415, UNSUPPORTED.format(formats=SNDFILE_FORMATS), "unsupported_audio") from None
    except (RuntimeError, ValueError) as exc:
        raise APIError(400, f"could not read audio: {exc}", "invalid_audio") from None
    with f:
        if 0 < f.frames < 2**62 and f.samplerate > 0:
            _check_declared(f.frames / f.samplerate, max_seconds)
        resampler = _StreamResampler(f.samplerate)
        decoded = False
        while True:
            try:
                raise_if_cancelled()
                block = f.read(RESAMPLE_BLOCK, dtype="float32", always_2d=True)
            except (RuntimeError, ValueError) as exc:
                if not decoded:
                    raise APIError(400, f"corrupt audio: {exc}", "corrupt_audio") from None
                block = np.zeros((0, 1), np.float32)  # a truncated file: keep what decoded
            if not block.shape[0]:
                yield resampler.flush()
                return
            decoded = True
            yield resampler(block.mean(axis=1) if block.shape[1] > 1 else block[:, 0])


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

