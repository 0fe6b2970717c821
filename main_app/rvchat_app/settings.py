"""main_app settings (environment variables with the ``APP_`` prefix)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from rvchat_common.settings import ServiceSettings

from .backchannel import DEFAULT_WORDS

class Settings(ServiceSettings):
    """Where the four services are, where history is kept, and the turn-taking defaults."""

    model_config = SettingsConfigDict(env_prefix="APP_", env_file=".env", extra="ignore", populate_by_name=True)

    port: int = Field(3000, description="TCP port to listen on.")
    vad_url: str = Field("http://localhost:3001", description="Base URL of the VAD service.")
    stt_url: str = Field("http://localhost:3002", description="Base URL of the STT service.")
    tts_url: str = Field("http://localhost:3003", description="Base URL of the TTS service.")
    llm_url: str = Field("http://localhost:3004", description="Base URL of the LLM service.")
    services_api_key: str | None = Field(
        None, description="API key sent to the four services (when they are protected by one)."
    )
    db_path: str = Field("./data/rvchat.sqlite3", description="SQLite file holding conversations and messages.")
    system_prompt: str | None = Field(
        None, description="System prompt given to the LLM on every turn. Unset: the LLM service's own "
        "(LLM_SYSTEM_PROMPT), chosen for its model with bench/answers.py; main_app's old prompt with "
        "temperature 0.6 made the embedded model worse (62% of facts right and 14 loops in 56 replies, "
        "against 92% and none).")
    history_messages: int = Field(
        8, description="Most messages of the conversation sent to the LLM as context. The window only moves "
        "in jumps (back to the last exchange), so the LLM's prompt cache is reused between turns."
    )
    max_tokens: int = Field(80, description="Upper bound on the reply length in tokens (short replies speak fast).")
    max_reply_sentences: int = Field(
        3, description="Stop the LLM once the reply has this many sentences (0: no limit); spoken "
        "answers stay short and the next turn does not wait behind a monologue.")
    temperature: float | None = Field(
        None, ge=0, le=2, description="LLM sampling temperature. Unset: the LLM service's default for its "
        "model (greedy for the embedded one, 0.7 for Ollama and OpenAI-compatible servers).")
    llm_model: str | None = Field(None, description="Model name passed to the LLM service (None: its default).")
    tts_voice: str | None = Field(None, description="Voice passed to the TTS service (None: its default).")
    stt_language: str = Field("en", description="Language passed to the STT service.")
    stt_partials: bool = Field(
        False,
        description="Ask STT for partial transcripts while the user speaks. Off by default: on a 2-core "
        "CPU the repeated partial passes delay the final transcript.",
    )
    vad_threshold: float = Field(0.5, description="Default speech probability threshold (0-1).")
    vad_min_silence_ms: int = Field(
        500, description="Default silence that ends a user's turn, in ms. It costs little latency: the "
        "reply is prepared from the speculative silence on and is usually ready only after this much "
        "silence anyway; a shorter hold cuts readers off at their commas.")
    speculative_silence_ms: int = Field(
        200,
        description="Start the reply (STT end, LLM, TTS) after this much silence, before the turn-end silence "
        "has passed; its text and audio reach the page only once the full silence has passed, and it is "
        "dropped if the user goes on speaking. 0 turns speculation off.",
    )
    llm_prefill: bool = Field(
        True, description="While the user speaks, have the LLM service evaluate the prompt of the reply to "
        "come (its 'prefill'): at the start of speech up to the user's words (the history's new end; the "
        "system prompt on a first turn), and with APP_STT_PARTIALS each partial's words too, so the reply's "
        "generation evaluates only the rest. Only the embedded model does anything with it; skipped while a "
        "reply is under way.")
    turn_end_complete_ms: int = Field(
        300, ge=0, le=5000, description="Silence that ends a turn whose words read as finished: the LLM's "
        "end-of-utterance probability at least APP_TURN_END_EOU_THRESHOLD (or, without it, Whisper's final "
        "punctuation and no dangling 'and' or 'the'); at most the turn-end silence. bench/results/turns.md: "
        "300 with the LLM cut 2 of 20 recordings off at their natural pauses, as 500 does; by the punctuation "
        "alone 5 (Whisper puts a full stop after half a sentence too).")
    turn_end_incomplete_ms: int = Field(
        1000, ge=0, le=10000, description="Silence that ends a turn whose words may not be finished "
        "(end-of-utterance probability below the threshold, a trailing comma or dash, 'and', 'because', 'the', "
        "a number being dictated); at least the turn-end silence. A trade: every reply the model is unsure of "
        "(about half of finished read sentences) waits it; the reply is prepared meanwhile, so it costs only "
        "where the reply would be ready sooner. bench/results/turns.md: 700 cut 39% of utterances with a "
        "mid-sentence pause off, 1000 28%, 1200 14%; 1000 keeps the voice-to-voice p90 goal (1.2 s) within "
        "reach. Words the model is near-certain go on wait APP_TURN_END_MIDSENTENCE_MS instead.")
    turn_end_midsentence_ms: int = Field(
        1600, ge=0, le=10000, description="Silence that ends a turn whose words stop mid-sentence: the "
        "end-of-utterance probability under APP_TURN_END_EOU_MIDSENTENCE (the model is near-certain more "
        "follows: 'ask not what you' 0.00). People pause 0.4-1.2 s to think mid-sentence; few finished "
        "sentences score that low (9 of 120; 56 of 142 pauses do), so this long hold lets many of those "
        "pauses through without moving the p90 wait (bench/results/turns.md: 57% -> 39% cut off, p90 wait "
        "700 ms either way; one long hold of 1600 for every unsure turn: 3%, at a p90 of 1600). 0: the "
        "incomplete hold.")
    turn_end_eou: bool = Field(
        True, description="Decide the turn-end silence from the LLM service's end-of-utterance probability "
        "(POST /v1/eou: the embedded model's chance that the user's words are finished): at least "
        "APP_TURN_END_EOU_THRESHOLD, the complete hold; below, the incomplete hold (and the mid-sentence "
        "hold under APP_TURN_END_EOU_MIDSENTENCE); words that promise more (a comma, 'and', 'the') hold at "
        "least the incomplete hold. Off, unanswered in time or unsupported: Whisper's "
        "punctuation decides alone (it ends half sentences with a full stop at a pause).")
    turn_end_eou_threshold: float = Field(
        0.3, ge=0, le=1, description="End-of-utterance probability from which the words count as finished. "
        "bench/results/turns.md: 0.3 kept the natural pauses of 20 recordings as 500 ms does (2 cut off, 4 at "
        "0.1) while a finished sentence waits only the complete hold; above 0.3 the median finished "
        "utterance waits the long hold.")
    turn_end_eou_midsentence: float = Field(
        0.01, ge=0, le=1, description="End-of-utterance probability under which the words stop "
        "mid-sentence and hold APP_TURN_END_MIDSENTENCE_MS (0: no such tier).")
    turn_end_eou_timeout_ms: int = Field(
        300, ge=0, le=5000, description="Longest wait for the end-of-utterance probability after the "
        "transcript (the reply is being prepared meanwhile); then the punctuation decides.")
    vad_min_speech_ms: int = Field(200, description="Default shortest speech that counts as a turn, in ms.")
    vad_speech_pad_ms: int = Field(30, description="Padding the VAD adds around speech, in ms.")
    barge_in_threshold: float = Field(
        0.7,
        description="VAD threshold while the assistant is speaking: higher, so that leftover echo of the "
        "reply does not interrupt it.",
    )
    backchannels: bool = Field(
        True, description="Speech while the assistant speaks or thinks first only pauses the reply; once its "
        "words are in, an acknowledgement from APP_BACKCHANNEL_WORDS ('mm-hm', 'okay'), or no words at all "
        "(a cough, a door), resumes it where it stopped, and other words interrupt it. Off: any speech over "
        "the reply interrupts it at once.")
    backchannel_words: str = Field(
        ", ".join(DEFAULT_WORDS), description="Comma-separated acknowledgements that do not interrupt a reply "
        "(an utterance of up to 4 words made only of these). Spelling variants are matched: mm-hm also "
        "matches Whisper's 'Mm-hmm', 'mhm' and 'hmm'.")
    resume_window_ms: int = Field(
        1500, ge=200, le=5000, description="A paused reply resumes when no words have come this long after "
        "the user's speech ended (STT slow or down), or up to 3 times as long while STT is still writing "
        "them. Only the fallback: bench/results/backchannel.md, an acknowledgement's words resumed the reply "
        "a median 0.73 s after its onset (at most 1.4 s on a loaded CPU).")
    echo_guard: bool = Field(
        True, description="The self-hearing guard: the VAD hears the mic with the echo of the reply the page "
        "is playing taken out (main_app knows what it sent and when it plays), so without headphones, or when "
        "the browser's echo cancellation fails, the assistant does not barge in on itself; the user talking "
        "over it still does. bench/results/echo.md, an echo 50-250 ms late at -6 to -20 dB: 24 of 24 replies "
        "interrupted themselves without it, 0 of 135 with it; a user talking over a reply paused it in 15 of "
        "15 (median 129 ms after the speech began), over the first 0.1-0.5 s of a session's first reply "
        "(before the echo's delay is known) in 11 of 15 (median 215 ms).")
    echo_max_delay_ms: int = Field(
        500, ge=100, le=2000, description="Longest delay at which the reply's echo may reach the mic after the "
        "page's player was handed the audio (its output buffer, the room, the mic's frames and the network).")
    echo_margin_db: float = Field(
        12.0, ge=0, le=40, description="How far above the expected echo a sound must be, per frequency, to "
        "count as the user. Offline over 9 rooms (the real VAD on the guard's output, main_app's barge-in "
        "settings) 6 dB let the echo start speech 12 times, 9 and 12 dB never, and a user talking over the "
        "reply was heard as soon with 12 as with 9 (median 264 ms); 12 leaves room for echo off its delay.")
    echo_stt_margin_db: float = Field(
        6.0, ge=0, le=40, description="The same margin for the audio STT hears while a reply's echo may be in "
        "the mic, once the echo's delay is found: it must understand the user's first words under the echo. "
        "bench/results/echo.md (81 utterances talked over in 9 rooms), more than 40% wrong: 24-29 from the bare "
        "mic (the echo's words in the user's), 16-20 with 12 dB, 9-15 with 6 dB, 19-23 with 3 dB.")
    preroll_ms: int = Field(
        300, description="Audio kept from before the VAD's speech start and sent to STT, so no first word is cut."
    )
    turn_timeout_s: float = Field(
        45.0, description="Longest wait for the next event from a service during a turn before it is failed."
    )
    status_interval_s: float = Field(3.0, description="How often the services' readiness is polled, in seconds.")
    cue_tones: bool = Field(True, description="Default for the page's short cue tones.")
    # ---- scaling and durability (issue 12, issue 16)
    database_url: str | None = Field(
        None, description="Keep the history in PostgreSQL instead of the SQLite file: "
        "postgresql://USER:PASSWORD@HOST:5432/DB. Several main_app replicas can share it. Unset: APP_DB_PATH.")
    db_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = Field(
        "FULL", description="SQLite's synchronous level (the file is in WAL mode). NORMAL and FULL both keep "
        "every committed message when main_app is killed; FULL also on a power cut, for one fsync per commit.")
    db_pool_size: int = Field(5, ge=1, description="PostgreSQL connections kept open per main_app.")
    max_sessions: int = Field(
        8, ge=0, description="Most conversations served at once (voice sessions plus POST /api/message "
        "replies); past it the page is told the server is busy and the API answers 503 with Retry-After. "
        "0: no limit.")
    busy_retry_s: int = Field(
        5, ge=1, le=60, description="Retry-After, in seconds, for a refused request or voice session when "
        "the server is at capacity; a refused page's socket is held this long, so it does not retry sooner.")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, the longest wait for replies in progress to finish before "
        "shutting down (new sessions go elsewhere meanwhile); 0 stops at once.")

    # ---- tools in a conversation (issue 13)
    tools: bool = Field(
        True, description="Let the assistant call tools during a conversation: the built-ins of "
        "APP_TOOLS_BUILTINS and the webhooks of APP_TOOLS_WEBHOOKS. A remote LLM (Ollama, OpenAI-compatible) "
        "is offered them all and decides; the embedded model never picks one itself (0 of 24 in "
        "bench/results/tools.md), so main_app names the tool when the user's words plainly ask for it "
        "(the time or date, a sum, a timer, a webhook's keywords) and offers none otherwise.")
    tools_builtins: str = Field(
        "time,calculator,timer", description="Comma-separated built-in tools: time (the current date and "
        "time in APP_TIMEZONE), calculator (arithmetic, evaluated safely), timer (a reminder spoken after a "
        "delay). Empty: none.")
    tools_webhooks: str = Field(
        "", description='Your own tools as a JSON list: [{"name": "get_weather", "description": "...", '
        '"parameters": {JSON Schema}, "url": "http://...", "timeout_s": 10, "keywords": ["weather"], '
        '"headers": {}}]. The call\'s arguments are POSTed as JSON to url and the response text is the '
        "result; an error or a timeout becomes a result saying so. keywords name the tool for the embedded "
        "model when the user's words contain one.")
    timezone: str | None = Field(
        None, description="Time zone of the time tool (an IANA name such as Europe/Paris). Unset: the "
        "server's.")

    @field_validator("tools_builtins")
    @classmethod
    def _known_builtins(cls, v: str) -> str:
        from .tools import parse_builtins

        parse_builtins(v)
        return v

    @field_validator("tools_webhooks")
    @classmethod
    def _valid_webhooks(cls, v: str) -> str:
        from .tools import parse_webhooks

        parse_webhooks(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        from .tools import _zone

        _zone(v)
        return v

    def service_urls(self) -> dict[str, str]:
        return {"vad": self.vad_url, "stt": self.stt_url, "llm": self.llm_url, "tts": self.tts_url}
