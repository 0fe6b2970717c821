"""STT settings, read from ``STT_*`` environment variables (or ``.env``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from rvchat_common.settings import ServiceSettings
from rvchat_common.wyoming import Port


class Settings(ServiceSettings):
    """faster-whisper service settings. Every field can be set as ``STT_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="STT_", env_file=".env", extra="ignore")

    port: int = Field(3002, description="TCP port to listen on.")
    model: str = Field(
        "tiny.en",
        description="faster-whisper model: 'tiny.en' and 'base' are embedded (offline); any other "
        "name (e.g. 'small.en') or a path to a CTranslate2 model directory is passed to faster-whisper.",
    )
    device: str = Field("cpu", description="'cpu', 'cuda' or 'auto'.")
    compute_type: str = Field(
        "int8", description="CTranslate2 compute type: int8, int8_float32, float32, ..."
    )
    cpu_threads: int = Field(0, description="Threads per inference; 0 = one per CPU core.")
    download_root: str | None = Field(None, description="Where faster-whisper caches models it downloads.")
    local_files_only: bool = Field(False, description="Never try to download a model by name.")
    language: str | None = Field(
        None, description="Default language code when a request gives none; empty = auto-detect."
    )
    beam_size: int = Field(
        5, description="Beam size for /transcribe and the OpenAI endpoint (faster-whisper default)."
    )
    condition_on_previous_text: bool = Field(
        True, description="Feed each window's text to the next one on long files (faster-whisper default)."
    )
    max_audio_seconds: float = Field(1800.0, description="Longest upload accepted, in seconds (longer: 413).")
    speech_gate: bool = Field(
        True,
        description="Skip Whisper (answer empty text) when Silero VAD finds no speech at all: the main "
        "guard against 'Thank you.' on silence and noise.",
    )
    hallucination_filter: bool = Field(
        True,
        description="Drop segments that lie over no detected speech and look like Whisper's known "
        "silence hallucinations (no_speech_prob, avg_logprob, compression ratio, phrase blocklist).",
    )
    gate_threshold: float = Field(
        0.25, description="Silero VAD probability a 32 ms window needs to count for the speech gate "
        "(low, so whispered speech in a little noise passes)."
    )
    gate_min_windows: int = Field(
        4, description="Windows at gate_threshold needed before audio is sent to Whisper at all."
    )
    # WebSocket stream
    stream_beam_size: int = Field(1, description="Beam size on the WebSocket stream (1 = greedy, fastest).")
    stream_short_context: bool = Field(
        True,
        description="Encode only the audio actually streamed (plus padding) instead of a full 30 s "
        "window: ~3-4x faster finals; falls back to the full window when the output looks like a loop.",
    )
    stream_min_context_s: float = Field(
        10.0, description="Shortest encoder window for the short-context path, in seconds."
    )
    partial_interval_s: float = Field(
        0.7, description="Re-decode the growing stream buffer for a partial after this much new audio."
    )
    partial_min_audio_s: float = Field(0.5, description="No partials before this much audio has arrived.")
    early_final: bool = Field(
        True,
        description="Decode speculatively once the stream's tail has been silent for early_final_silence_s; "
        "when 'end' arrives and no speech came after that snapshot, its result is the final at once.",
    )
    early_final_silence_s: float = Field(
        0.15, description="Trailing silence (Silero VAD) after which the speculative decode starts. Shorter "
        "than main_app's speculative start (200 ms), so the transcript is decoded when 'end' comes: in the "
        "browser bench (tuning clips) end -> final went from 133 ms to 29 ms median with 0.15 instead of 0.25, "
        "voice to voice from 877/966 ms to 790/848 ms (median/p90, quiet machine).")
    stream_max_seconds: float = Field(
        30.0,
        description="Longest utterance buffered on the stream; at the limit a final is sent automatically.",
    )
    stream_idle_timeout_s: float = Field(
        300.0, description="Close a WebSocket that sends nothing for this long."
    )
    max_streams: int = Field(
        64, ge=1, description="Concurrent /ws streams allowed (each buffers up to stream_max_seconds of "
        "audio, ~1 MB); more are refused with close code 1013 (try again later), as VAD and TTS do.")
    # Home Assistant
    wyoming_port: Port = Field(
        None, description="TCP port for Home Assistant's Wyoming protocol (speech to text, "
        "on the same model and queue as HTTP); empty: off. 10300 is the usual one. Wyoming has no "
        "authentication: the API key does not guard it, so expose it only to a trusted network.")
