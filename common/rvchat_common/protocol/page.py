"""The voice chat page's WebSocket events (``ws://main_app:3000/ws``; docs/protocols.md, page).

Page -> main_app: ``Text``, ``Config``, ``Playback``, ``Interrupt``, ``NewConversation``,
``OpenConversation``, ``Ping`` and binary PCM16 mic frames at 16 kHz.
main_app -> page: the session's events below (``Hello`` first), and each reply's audio as an
``Audio`` header followed by one binary PCM16 frame.

The turn-taking settings' ranges live here once: the session validates ``Config`` against them and
``GET /config`` serves them to the page (:func:`config_limits`) for its sliders.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, field_validator

from .base import ErrorBody, ErrorEvent, Event

INPUT_SAMPLE_RATE = 16000  # the page's mic frames
TEXT_MAX_CHARS = 4000  # a typed message

# name -> (min, max, step) of each turn-taking setting the page may change
_RANGES: dict[str, tuple[float, float, float]] = {
    "threshold": (0.05, 0.95, 0.01),
    "min_silence_ms": (100, 3000, 10),
    "min_speech_ms": (50, 2000, 10),
    "resume_window_ms": (200, 5000, 50),
}
TURN_KEYS = ("threshold", "min_silence_ms", "min_speech_ms")  # the ones recognition (the VAD) applies
BACKCHANNEL_WORDS_MAX = 100  # entries in the acknowledgement list
BACKCHANNEL_WORD_CHARS = 40


def config_limits() -> dict[str, dict[str, float]]:
    """The sliders' ranges, as ``GET /config`` serves them."""
    return {name: {"min": lo, "max": hi, "step": step} for name, (lo, hi, step) in _RANGES.items()}


# --- page -> main_app -------------------------------------------------------------------------
class Text(Event):
    """A typed message; ``voice`` overrides the session's voice output for its reply."""

    type: Literal["text"] = "text"
    text: str = Field(max_length=TEXT_MAX_CHARS)
    voice: bool | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must be a non-empty string")
        return v


class Config(Event):
    """Turn-taking settings (absent: unchanged) and voice output."""

    only_set_fields = True

    type: Literal["config"] = "config"
    threshold: float | None = None
    min_silence_ms: int | None = None
    min_speech_ms: int | None = None
    voice_out: bool | None = None
    backchannels: bool | None = None
    backchannel_words: list[Annotated[str, Field(max_length=BACKCHANNEL_WORD_CHARS)]] | None = Field(
        None, max_length=BACKCHANNEL_WORDS_MAX)
    resume_window_ms: int | None = None

    @field_validator("threshold", "min_silence_ms", "min_speech_ms", "resume_window_ms")
    @classmethod
    def _in_range(cls, v: float | None, info: Any) -> float | None:
        lo, hi, _ = _RANGES[info.field_name]
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"{info.field_name} must be between {lo:g} and {hi:g}")
        return v

    def changes(self) -> dict[str, float]:
        """The turn detector's settings this event sets (VAD threshold, silences)."""
        return self._set(TURN_KEYS)

    def backchannel_changes(self) -> dict[str, Any]:
        """The backchannel settings this event sets (on/off, the acknowledgements, the resume window)."""
        return self._set(("backchannels", "backchannel_words", "resume_window_ms"))

    def _set(self, keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: getattr(self, k) for k in keys if k in self.model_fields_set and getattr(self, k) is not None}


class Playback(Event):
    """How much of a reply's audio the page played (answering ``stop_playback``), or that it is done."""

    type: Literal["playback"] = "playback"
    turn: int | None = None
    played_ms: float | None = Field(None, ge=0, le=86_400_000)
    done: bool = False


class Interrupt(Event):
    """The stop button: stop the reply now."""

    type: Literal["interrupt"] = "interrupt"


class NewConversation(Event):
    type: Literal["new_conversation"] = "new_conversation"


class OpenConversation(Event):
    type: Literal["open_conversation"] = "open_conversation"
    id: str = Field(max_length=200)


class Ping(Event):
    type: Literal["ping"] = "ping"
    t: float | str | None = None


ClientEvent = Annotated[Text | Config | Playback | Interrupt | NewConversation | OpenConversation | Ping,
                        Field(discriminator="type")]
client_events: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)


# --- main_app -> page -------------------------------------------------------------------------
class Hello(Event):
    """First event of a session: its conversation, state, mic rate, settings and services."""

    type: Literal["hello"] = "hello"
    conversation_id: str | None
    state: str
    input_sample_rate: int = INPUT_SAMPLE_RATE
    config: dict[str, Any]
    services: dict[str, Any]


class Notice(Event):
    type: Literal["notice"] = "notice"
    message: str


class State(Event):
    """listening, user_speaking, thinking or speaking."""

    type: Literal["state"] = "state"
    state: Literal["listening", "user_speaking", "thinking", "speaking"]


class Services(Event):
    """Each service's link (up, reason, label), the modes that work and a notice naming what is down."""

    type: Literal["services"] = "services"
    services: dict[str, Any]
    modes: dict[str, bool]
    notice: str


class AudioFormat(Event):
    type: Literal["audio_format"] = "audio_format"
    sample_rate: int


class SpeechStarted(Event):
    type: Literal["speech_start"] = "speech_start"
    timestamp: float


class SpeechEnded(Event):
    type: Literal["speech_end"] = "speech_end"
    timestamp: float | None


class Partial(Event):
    type: Literal["partial"] = "partial"
    text: str


class NoSpeech(Event):
    """The utterance had no words (noise): no reply."""

    type: Literal["no_speech"] = "no_speech"


class Transcript(Event):
    """The user's turn, as saved (``source``: voice or text)."""

    type: Literal["transcript"] = "transcript"
    turn: int
    text: str
    source: str
    message_id: int | None


class ReplyStart(Event):
    type: Literal["reply_start"] = "reply_start"
    turn: int
    voice: bool


class ReplyDelta(Event):
    type: Literal["reply_delta"] = "reply_delta"
    turn: int
    text: str


class Audio(Event):
    """A chunk of the reply's speech; one binary frame of ``bytes`` bytes of PCM16 follows."""

    type: Literal["audio"] = "audio"
    turn: int
    index: int
    text: str
    sample_rate: int
    bytes: int
    duration_ms: float


class ToolCall(Event):
    """The assistant calls a tool during the turn (shown while it runs); ``tool_result`` follows."""

    type: Literal["tool_call"] = "tool_call"
    turn: int
    id: str = Field(description="The call's id (a ``tool`` message in the history answers it).")
    name: str
    arguments: dict[str, Any] | str = Field(description="The arguments the model wrote (its text when "
                                            "they are not a JSON object).")


class ToolResult(Event):
    """A tool call's outcome; its result goes back to the LLM and the reply continues."""

    type: Literal["tool_result"] = "tool_result"
    turn: int
    id: str
    name: str
    ok: bool
    result: str = Field(description="What the tool answered (shortened to 300 characters).")


class AudioEnd(Event):
    type: Literal["audio_end"] = "audio_end"
    turn: int
    chunks: int
    audio_ms: float


class Latency(Event):
    """A turn's stage latencies in ms (only the stages it went through)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["latency"] = "latency"
    turn: int


class ReplyEnd(Event):
    omit_if_none = frozenset({"message_id", "latency", "error"})

    type: Literal["reply_end"] = "reply_end"
    turn: int
    text: str
    interrupted: bool = False
    message_id: int | None = None
    latency: dict[str, float] | None = None
    error: bool | None = None


class PausePlayback(Event):
    """Speech over the reply: pause playback now (keep the rest); ``resume_playback`` or ``stop_playback``
    follows once the speech's words are in. The page answers with ``playback`` and what it played."""

    type: Literal["pause_playback"] = "pause_playback"
    turn: int


class ResumePlayback(Event):
    """The speech was only an acknowledgement (``text``), had no words, or none came in time: play on
    where playback paused."""

    type: Literal["resume_playback"] = "resume_playback"
    turn: int
    reason: Literal["backchannel", "no_words", "timeout"]
    text: str
    paused_ms: float


class StopPlayback(Event):
    """Stop playing now (barge-in); the page answers with ``playback`` and what it played."""

    type: Literal["stop_playback"] = "stop_playback"
    turn: int
    reason: str


class Interrupted(Event):
    """What became of an interrupted reply: what was heard and kept, what was cancelled upstream."""

    type: Literal["interrupted"] = "interrupted"
    turn: int
    spoken_text: str
    full_text: str
    cancelled: list[str]
    played_ms: float
    message_id: int | None
    reason: str


class SessionError(ErrorEvent):
    """An error event naming the stage (``source``) and the turn it belongs to, where there is one."""

    omit_if_none = frozenset({"id", "source", "turn"})

    source: str | None = None
    turn: int | None = None

    @classmethod
    def upstream(cls, source: str, message: str, code: str, *, turn: int | None = None,
                 type: str = "upstream_error") -> SessionError:
        return cls(error=ErrorBody(message=message, type=type, code=code), source=source, turn=turn)


class Conversation(Event):
    type: Literal["conversation"] = "conversation"
    id: str | None
    title: str
    messages: list[dict[str, Any]]


class ConversationCreated(Event):
    type: Literal["conversation_created"] = "conversation_created"
    id: str


class ConfigApplied(Event):
    """The settings in effect, after a ``config``."""

    type: Literal["config"] = "config"
    threshold: float
    min_silence_ms: int
    min_speech_ms: int
    voice_out: bool
    backchannels: bool
    backchannel_words: list[str]
    resume_window_ms: int
    echo_guard: bool = False  # main_app's self-hearing guard (APP_ECHO_GUARD); not the page's to change


class Pong(Event):
    type: Literal["pong"] = "pong"
    t: float | str | None = None


ServerEvent = Annotated[
    Hello | Notice | State | Services | AudioFormat | SpeechStarted | SpeechEnded | Partial | NoSpeech
    | Transcript | ReplyStart | ReplyDelta | ToolCall | ToolResult | Audio | AudioEnd | Latency | ReplyEnd | PausePlayback | ResumePlayback
    | StopPlayback | Interrupted
    | SessionError | Conversation | ConversationCreated | ConfigApplied | Pong,
    Field(discriminator="type")]
server_events: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)
