"""VAD service settings (environment variables with the ``VAD_`` prefix)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from rvchat_common.settings import ServiceSettings


class Settings(ServiceSettings):
    """Silero VAD service: defaults for /detect and for the streaming /ws turn detector."""

    model_config = SettingsConfigDict(env_prefix="VAD_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    port: int = Field(3001, description="TCP port to listen on.")
    model_path: str | None = Field(
        None, description="Silero VAD ONNX file (streaming model); default: the one shipped in "
        "the silero-vad package.")
    onnx_threads: int = Field(
        1, ge=1, le=16, description="ONNX Runtime intra-op threads. One is fastest for 32 ms chunks "
        "(a thread pool costs more than it saves on 512 samples).")
    threshold: float = Field(0.5, gt=0, lt=1, description="Default speech probability threshold; "
                             "speech ends when the probability falls below threshold - 0.15.")
    min_speech_ms: int = Field(250, ge=0, description="Default shortest speech that counts: /detect "
                               "drops shorter segments; /ws needs this much before speech_start.")
    detect_min_silence_ms: int = Field(100, ge=0, description="Default silence that splits segments "
                                       "in /detect (Silero's own default).")
    stream_min_silence_ms: int = Field(500, ge=0, description="Default silence that ends a turn on "
                                       "/ws (a shorter pause does not end it).")
    speech_pad_ms: int = Field(30, ge=0, description="Default padding added to each side of speech.")
    stream_reset_silence_ms: int = Field(
        1500, ge=0, description="On /ws, reset the model's state after this much quiet following speech "
        "(0: never). Silero's state carried on from loud speech made it miss a soft voice after it: a whisper "
        "or a falsetto 3-6 s after a reader got a speech_start in 25 of 64 streams without, 64 with.")
    max_audio_seconds: float = Field(
        1800.0, gt=0, description="Longest audio /detect accepts (as STT does); longer gets 413, from "
        "the file's header where it states its length, else as soon as decoding passes the limit. "
        "30 min of audio is 115 MB once decoded (a 3-hour file held 1.7 GB).")
    max_streams: int = Field(64, ge=1, description="Concurrent /ws streams allowed; more are refused "
                             "with close code 1013 (try again later).")
