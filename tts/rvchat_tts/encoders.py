"""Compressed audio encoded incrementally, so mp3/opus/flac/aac can stream sentence by sentence.

Files encoded whole, one per sentence, cannot simply be concatenated (ID3 tags,
Ogg streams, FLAC headers).
Here one encoder and muxer live for the whole response and write into a sink
that is drained after each sentence. The sink has no ``seek``, so muxers that
would go back to patch a header (FLAC's sample count, MP3's Xing frame) leave
it as a streaming file, which every decoder accepts.

PCM16 at the voice's rate goes to the encoder as is: PyAV's encoder converts to the codec's sample
format, rate (48 kHz for opus) and frame size itself, continuously across calls and flushed by
``encode(None)``, so no resampler of our own is needed here.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from rvchat_common.errors import APIError

_CODECS = {"mp3": ("mp3", "libmp3lame", {"id3v2_version": "0", "write_xing": "0"}),
           # Small Ogg pages, so each sentence's audio leaves at once rather than once a second.
           "opus": ("ogg", "libopus", {"page_duration": "20000"}),
           "flac": ("flac", "flac", {}),
           "aac": ("adts", "aac", {})}


class _Sink:
    """Write-only, non-seekable buffer."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class StreamEncoder:
    """PCM16 mono chunks in, bytes of one continuous compressed file out."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        if fmt not in _CODECS:
            raise APIError(400, f"unsupported output format {fmt!r}", "unsupported_format")
        container_fmt, codec, options = _CODECS[fmt]
        self.sample_rate = sample_rate
        out_rate = 48000 if codec == "libopus" else sample_rate
        self.sink = _Sink()
        self.container = av.open(self.sink, mode="w", format=container_fmt, options=options)
        try:
            self.stream = self.container.add_stream(codec, rate=out_rate)
        except (av.error.FFmpegError, ValueError):  # no libmp3lame in this build: ffmpeg's own mp3 name
            self.stream = self.container.add_stream(fmt, rate=out_rate)
        self.stream.layout = "mono"
        # Encoder defaults are thin for speech at 22 kHz (lame picks 32 kb/s); these keep consonants crisp.
        if fmt in ("mp3", "aac", "opus"):
            self.stream.bit_rate = {"mp3": 64000, "aac": 64000, "opus": 32000}[fmt]
        self.samples = 0
        self.closed = False

    def encode(self, pcm16: bytes) -> bytes:
        samples = np.frombuffer(pcm16, dtype="<i2").reshape(1, -1)
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self.samples
            self.samples += samples.shape[1]
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        return self.sink.take()

    def close(self) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        return self.sink.take()
