"""TTS service settings (environment variables with the ``TTS_`` prefix)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from rvchat_common.settings import ServiceSettings
from rvchat_common.wyoming import Port


class Settings(ServiceSettings):
    """Piper TTS service: voices, synthesis defaults, text limits and sentence splitting."""

    model_config = SettingsConfigDict(env_prefix="TTS_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    port: int = Field(3003, description="TCP port to listen on.")
    voice: str = Field(
        "en_US-joe-medium", description="Default voice: the embedded 'en_US-joe-medium', a voice name "
        "in voices_dir, or a path to a Piper .onnx file (its .onnx.json beside it).")
    voices_dir: str | None = Field(
        None, description="Folder of extra Piper voices (NAME.onnx + NAME.onnx.json); requests may "
        "name any of them.")
    voice_aliases: str = Field(
        "", description="JSON object of extra or overriding aliases, e.g. "
        '\'{"en_female": "en_US-amy-medium"}\'. Built-in aliases map to installed voices (see GET /voices).')
    allow_voice_paths: bool = Field(
        False, description="Let requests name a voice by .onnx file path (off: only installed names "
        "and aliases, so clients cannot make the server open arbitrary files).")
    voice_cache_size: int = Field(
        3, ge=1, le=32, description="Voices kept loaded (least recently used ones are unloaded; the "
        "default voice always stays).")
    onnx_threads: int = Field(
        1, ge=0, le=64, description="ONNX Runtime intra-op threads per voice (0: all cores). One by "
        "default: in a voice turn the LLM generates on the other core while TTS speaks, and two threads "
        "each on 2 cores halved both (first audio 320-690 ms against 160-390 ms). A TTS-only host can "
        "raise it (two threads synthesise ~1.7x faster on an idle 2-core machine).")
    noise_scale: float | None = Field(
        None, ge=0, le=2, description="Generator noise (voice default 0.667 when unset). 0 makes "
        "output identical for identical input.")
    noise_w: float | None = Field(
        None, ge=0, le=2, description="Phoneme-duration noise (voice default 0.8 when unset). 0 makes "
        "timing identical for identical input.")
    sentence_silence_ms: int = Field(
        0, ge=0, le=2000, description="Extra silence appended after each synthesised segment.")
    max_text_chars: int = Field(
        5000, ge=1, description="Longest text accepted by /synthesize and /v1/audio/speech; longer "
        "gets 413. (Long text is split into sentences, never truncated.)")
    max_speech_chars: int = Field(
        8000, ge=100, description="Most text one request (or one WebSocket's queue) may ask to be spoken, "
        "counted after numbers, symbols and abbreviations are spelled out; more gets 413 "
        "'speech_too_long'. 5,000 digits spelled out were 20,000 characters and 704 s of audio.")
    first_clause_words: int = Field(
        4, ge=0, description="Streaming: the first segment of a reply may end at a clause mark "
        "(, ; : dash) once it has this many words, so audio starts sooner. 0 disables.")
    first_segment_max_words: int = Field(
        5, ge=0, description="Streaming: the first segment of a reply ends after this many words at the "
        "latest (0: at its sentence or clause end), so a long first sentence does not delay the first audio. "
        "Measured in a browser (bench/voice.py, tuning clips, two interleaved pairs): voice-to-voice median "
        "543 ms with 5 against 652-702 ms without; the first audio is ~1.3-1.8 s of speech instead of 2-4 s.")
    min_segment_words: int = Field(
        2, ge=1, description="Segments shorter than this are joined to the next one (except the last).")
    max_segment_chars: int = Field(
        300, ge=40, description="A segment with no sentence boundary is cut (at a clause mark or space) "
        "after this many characters, bounding the wait for its audio.")
    ws_max_pending_chars: int = Field(
        20000, ge=100, description="WebSocket: most text that may wait to be spoken; more gets an "
        "error event (the text is dropped, the connection stays open).")
    max_ws_sessions: int = Field(
        64, ge=1, description="Concurrent /ws sessions; more are refused with close code 1013.")
    # Home Assistant
    wyoming_port: Port = Field(
        None, description="TCP port for Home Assistant's Wyoming protocol (text to speech, "
        "on the same voices and queue as HTTP); empty: off. 10200 is the usual one. Wyoming has no "
        "authentication: the API key does not guard it, so expose it only to a trusted network.")
