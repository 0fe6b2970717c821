"""OpenAI's Realtime API events, as main_app's ``WS /v1/realtime`` speaks them (docs/realtime.md).

The ground truth is the official ``openai`` package (``openai.types.realtime``): what its client sends
is parsed with the client models below, and every server event is built from the server models below,
which a test checks against the package's own models. Two dialects exist:

- ``ga``: ``client.realtime.connect(...)``; audio deltas are ``response.output_audio.delta``, the
  session is ``{"type": "realtime", "audio": {"input": {...}, "output": {...}}, ...}``.
- ``beta``: ``client.beta.realtime.connect(...)`` (it sends ``OpenAI-Beta: realtime=v1``); audio
  deltas are ``response.audio.delta``, the session is flat (``voice``, ``input_audio_format``,
  ``turn_detection``, ``modalities``).

Events are built and parsed in the GA shape; :class:`Dialect` renames and reshapes them at the edge
for a beta client, both ways. Audio is PCM16 mono at 24 kHz, base64 in JSON, both ways.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, field_validator

from .base import Event, WireModel
from .page import config_limits

SAMPLE_RATE = 24000
_ids = itertools.count(1)
_LIMITS = config_limits()


def new_id(prefix: str) -> str:
    """An id in OpenAI's style (``evt_...``, ``item_...``, ``resp_...``), unique within the process."""
    return f"{prefix}_{os.urandom(5).hex()}{next(_ids):06d}"


def _voice_id(v: Any) -> Any:
    return v.get("id") if isinstance(v, dict) else v  # {"id": "voice_..."}: a custom voice's form


def _one_modality(v: list[str] | None) -> list[str] | None:
    if v is not None and len(set(v)) != 1:
        raise ValueError('output_modalities must be ["audio"] (audio with its transcript) or ["text"]')
    return v


def _token_cap(v: int | str | None) -> int | str | None:
    if isinstance(v, int) and not 1 <= v <= 4096:
        raise ValueError('max_output_tokens must be between 1 and 4096, or "inf"')
    return v


# --- shared pieces ----------------------------------------------------------------------------
class AudioFormat(WireModel):
    """PCM16 mono at 24 kHz: the only format served (G.711 would need a codec for a telephony edge)."""

    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = SAMPLE_RATE


class ServerVad(WireModel):
    """Turn detection by the stack's own VAD and endpointing (the page's turn-taking, same ranges)."""

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=_LIMITS["threshold"]["min"], le=_LIMITS["threshold"]["max"])
    silence_duration_ms: int = Field(
        500, ge=int(_LIMITS["min_silence_ms"]["min"]), le=int(_LIMITS["min_silence_ms"]["max"])
    )
    prefix_padding_ms: int = Field(300, ge=0, le=2000)
    create_response: Literal[True] = Field(True, description="A turn always gets a reply.")
    interrupt_response: Literal[True] = Field(True, description="Speech always interrupts a reply.")
    idle_timeout_ms: int | None = None


class AudioInput(WireModel):
    format: AudioFormat = AudioFormat()
    # null: the client commits the buffer itself (push to talk)
    turn_detection: ServerVad | None = ServerVad()
    transcription: dict[str, Any] | None = {"model": "whisper-1"}
    noise_reduction: dict[str, Any] | None = None


class AudioOutput(WireModel):
    format: AudioFormat = AudioFormat()
    voice: str = Field("alloy", min_length=1, max_length=200)
    speed: float = Field(1.0, ge=0.25, le=4.0)

    _voice = field_validator("voice", mode="before")(lambda v: _voice_id(v))


class AudioConfig(WireModel):
    input: AudioInput = AudioInput()
    output: AudioOutput = AudioOutput()


Modalities = list[Literal["text", "audio"]]


class SessionConfig(WireModel):
    """The session as ``session.created`` / ``session.updated`` show it (GA shape)."""

    type: Literal["realtime"] = "realtime"
    id: str = Field(default_factory=lambda: new_id("sess"))
    object: Literal["realtime.session"] = "realtime.session"
    model: str = "gpt-realtime"
    output_modalities: Modalities = ["audio"]
    instructions: str = ""
    audio: AudioConfig = AudioConfig()
    max_output_tokens: int | Literal["inf"] = "inf"
    tools: list[dict[str, Any]] = []
    tool_choice: str | dict[str, Any] = "auto"


# --- partial updates (session.update: absent = unchanged, null = off) --------------------------
class _Partial(WireModel):
    only_set_fields = True


class AudioInputUpdate(_Partial):
    format: AudioFormat | None = None
    turn_detection: ServerVad | None = None
    transcription: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None


class AudioOutputUpdate(_Partial):
    format: AudioFormat | None = None
    voice: str | None = Field(None, min_length=1, max_length=200)
    speed: float | None = Field(None, ge=0.25, le=4.0)

    _voice = field_validator("voice", mode="before")(lambda v: _voice_id(v))


class AudioUpdate(_Partial):
    input: AudioInputUpdate | None = None
    output: AudioOutputUpdate | None = None


class SessionUpdateBody(_Partial):
    type: Literal["realtime"] = "realtime"
    model: str | None = Field(None, max_length=200)
    output_modalities: Modalities | None = None
    instructions: str | None = Field(None, max_length=20000)
    audio: AudioUpdate | None = None
    max_output_tokens: int | Literal["inf"] | None = Field(None)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    _modalities = field_validator("output_modalities")(lambda v: _one_modality(v))
    _tokens = field_validator("max_output_tokens")(lambda v: _token_cap(v))


# --- conversation items -----------------------------------------------------------------------
def _b64_pcm16(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("audio must be base64-encoded PCM16") from None
    if len(raw) % 2:
        raise ValueError("audio must be whole PCM16 samples (an even number of bytes)")
    return v


class ContentPart(WireModel):
    omit_if_none = frozenset({"text", "audio", "transcript"})

    type: Literal["input_text", "input_audio", "output_text", "output_audio"]
    text: str | None = Field(None, max_length=4000)
    audio: str | None = None
    transcript: str | None = None

    _audio_ok = field_validator("audio")(_b64_pcm16)


class MessageItem(WireModel):
    omit_if_none = frozenset({"status"})

    type: Literal["message"] = "message"
    id: str = Field(default_factory=lambda: new_id("item"), max_length=64)
    object: Literal["realtime.item"] = "realtime.item"
    role: Literal["user", "assistant", "system"]
    status: Literal["completed", "incomplete", "in_progress"] | None = "completed"
    content: list[ContentPart] = Field(max_length=16)


class FunctionCallOutputItem(WireModel):
    type: Literal["function_call_output"] = "function_call_output"
    id: str = Field(default_factory=lambda: new_id("item"), max_length=64)
    object: Literal["realtime.item"] = "realtime.item"
    status: Literal["completed"] = "completed"
    call_id: str = Field(max_length=200)
    output: str = Field(max_length=20000)


Item = Annotated[MessageItem | FunctionCallOutputItem, Field(discriminator="type")]


class ResponseAudioOutput(WireModel):
    format: AudioFormat | None = None
    voice: str | None = None


class ResponseAudio(WireModel):
    output: ResponseAudioOutput | None = None


class ResponseParams(WireModel):
    """``response.create``'s options (what is served; the rest is ignored)."""

    output_modalities: Modalities | None = None
    instructions: str | None = Field(None, max_length=20000)
    audio: ResponseAudio | None = None
    conversation: str = "auto"
    input: list[Any] | None = None
    metadata: dict[str, str] | None = None
    max_output_tokens: int | Literal["inf"] | None = None

    _modalities = field_validator("output_modalities")(lambda v: _one_modality(v))
    _tokens = field_validator("max_output_tokens")(lambda v: _token_cap(v))

    @field_validator("conversation", "input")
    @classmethod
    def _in_the_conversation(cls, v: Any) -> Any:
        # A response is a turn of the stored conversation; one outside it would need a second session.
        if v not in ("auto", None):
            raise ValueError(
                "out-of-band responses are not served: a response answers the conversation "
                '("conversation": "auto", no "input")'
            )
        return v


# --- client -> server -------------------------------------------------------------------------
class ClientEvent(Event):
    omit_if_none = frozenset({"event_id"})

    event_id: str | None = Field(None, max_length=200)


class SessionUpdate(ClientEvent):
    type: Literal["session.update"] = "session.update"
    session: SessionUpdateBody


class InputAudioBufferAppend(ClientEvent):
    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    audio: str

    _audio_ok = field_validator("audio")(_b64_pcm16)


class InputAudioBufferCommit(ClientEvent):
    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"


class InputAudioBufferClear(ClientEvent):
    type: Literal["input_audio_buffer.clear"] = "input_audio_buffer.clear"


class ConversationItemCreate(ClientEvent):
    type: Literal["conversation.item.create"] = "conversation.item.create"
    item: Item
    previous_item_id: str | None = None

    @field_validator("item")
    @classmethod
    def _parts(cls, item: Any) -> Any:
        if not isinstance(item, MessageItem):
            return item
        allowed = {
            "user": ("input_text", "input_audio"),
            "system": ("input_text",),
            "assistant": ("output_text",),
        }[item.role]
        if not item.content:
            raise ValueError("a message needs at least one content part")
        for part in item.content:
            if part.type not in allowed:
                raise ValueError(f"a {item.role} message takes {' or '.join(allowed)} parts, not {part.type}")
            if part.type.endswith("_text") and not (part.text or "").strip():
                raise ValueError(f"a {part.type} part needs a non-empty text")
            if part.type == "input_audio" and not part.audio:
                raise ValueError("an input_audio part needs its audio (base64 PCM16, 24 kHz)")
        return item


class ConversationItemTruncate(ClientEvent):
    type: Literal["conversation.item.truncate"] = "conversation.item.truncate"
    item_id: str = Field(max_length=64)
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ResponseCreate(ClientEvent):
    type: Literal["response.create"] = "response.create"
    response: ResponseParams | None = None


class ResponseCancel(ClientEvent):
    type: Literal["response.cancel"] = "response.cancel"
    response_id: str | None = None


AnyClientEvent = Annotated[
    SessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | ConversationItemCreate
    | ConversationItemTruncate
    | ResponseCreate
    | ResponseCancel,
    Field(discriminator="type"),
]
client_events: TypeAdapter[AnyClientEvent] = TypeAdapter(AnyClientEvent)


# --- server -> client -------------------------------------------------------------------------
class ServerEvent(Event):
    event_id: str = Field(default_factory=lambda: new_id("evt"))


class RealtimeErrorBody(WireModel):
    type: str
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = Field(None, description="The client event that caused it.")


class Error(ServerEvent):
    """Never closes the connection: a bad event is refused, the session goes on."""

    type: Literal["error"] = "error"
    error: RealtimeErrorBody

    @classmethod
    def of(
        cls,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        type: str = "invalid_request_error",
    ) -> Error:
        return cls(
            error=RealtimeErrorBody(type=type, code=code, message=message, param=param, event_id=event_id)
        )


class SessionCreated(ServerEvent):
    type: Literal["session.created"] = "session.created"
    session: SessionConfig


class SessionUpdated(ServerEvent):
    type: Literal["session.updated"] = "session.updated"
    session: SessionConfig


class SpeechStarted(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStopped(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class BufferCommitted(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None = None


class BufferCleared(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class ItemAdded(ServerEvent):
    """GA: an item entered the conversation (beta: ``conversation.item.created``)."""

    type: Literal["conversation.item.added", "conversation.item.created"] = "conversation.item.added"
    item: MessageItem | FunctionCallOutputItem
    previous_item_id: str | None = None


class ItemDone(ServerEvent):
    type: Literal["conversation.item.done"] = "conversation.item.done"
    item: MessageItem | FunctionCallOutputItem
    previous_item_id: str | None = None


class ItemDeleted(ServerEvent):
    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class ItemTruncated(ServerEvent):
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int
    audio_end_ms: int


class DurationUsage(WireModel):
    type: Literal["duration"] = "duration"
    seconds: float


class TranscriptionCompleted(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    item_id: str
    content_index: int = 0
    transcript: str
    usage: DurationUsage


class TranscriptionFailed(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )
    item_id: str
    content_index: int = 0
    error: RealtimeErrorBody


class Usage(WireModel):
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: dict[str, int] = {}
    output_token_details: dict[str, int] = {}


class StatusDetails(WireModel):
    omit_if_none = frozenset({"reason", "error"})

    type: Literal["completed", "cancelled", "incomplete", "failed"]
    reason: Literal["turn_detected", "client_cancelled", "max_output_tokens"] | None = None
    error: dict[str, Any] | None = None


class Response(WireModel):
    id: str = Field(default_factory=lambda: new_id("resp"))
    object: Literal["realtime.response"] = "realtime.response"
    status: Literal["in_progress", "completed", "cancelled", "failed", "incomplete"] = "in_progress"
    status_details: StatusDetails | None = None
    output: list[MessageItem] = []
    output_modalities: Modalities = ["audio"]
    audio: ResponseAudio | None = None
    conversation_id: str | None = None
    metadata: dict[str, str] | None = None
    max_output_tokens: int | Literal["inf"] = "inf"
    usage: Usage | None = None


class ResponseCreated(ServerEvent):
    type: Literal["response.created"] = "response.created"
    response: Response


class ResponseDone(ServerEvent):
    type: Literal["response.done"] = "response.done"
    response: Response


class OutputItemAdded(ServerEvent):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    response_id: str
    output_index: int = 0
    item: MessageItem


class OutputItemDone(ServerEvent):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    response_id: str
    output_index: int = 0
    item: MessageItem


class Part(WireModel):
    omit_if_none = frozenset({"text", "transcript", "audio"})

    type: Literal["text", "audio"]
    text: str | None = None
    transcript: str | None = None
    audio: str | None = None


class _InItem(ServerEvent):
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0


class ContentPartAdded(_InItem):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    part: Part


class ContentPartDone(_InItem):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    part: Part


class AudioDelta(_InItem):
    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"
    delta: str


class AudioDone(_InItem):
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class AudioTranscriptDelta(_InItem):
    type: Literal["response.output_audio_transcript.delta"] = "response.output_audio_transcript.delta"
    delta: str


class AudioTranscriptDone(_InItem):
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"
    transcript: str


class TextDelta(_InItem):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class TextDone(_InItem):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str


class RateLimit(WireModel):
    name: Literal["requests", "tokens"]
    limit: int
    remaining: int
    reset_seconds: float


class RateLimitsUpdated(ServerEvent):
    type: Literal["rate_limits.updated"] = "rate_limits.updated"
    rate_limits: list[RateLimit]


AnyServerEvent = Annotated[
    Error
    | SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | BufferCommitted
    | BufferCleared
    | ItemAdded
    | ItemDone
    | ItemDeleted
    | ItemTruncated
    | TranscriptionCompleted
    | TranscriptionFailed
    | ResponseCreated
    | ResponseDone
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | AudioDelta
    | AudioDone
    | AudioTranscriptDelta
    | AudioTranscriptDone
    | TextDelta
    | TextDone
    | RateLimitsUpdated,
    Field(discriminator="type"),
]
server_events: TypeAdapter[AnyServerEvent] = TypeAdapter(AnyServerEvent)


# --- the beta dialect -------------------------------------------------------------------------
_BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
_BETA_PARTS = {"output_text": "text", "output_audio": "audio"}
_GA_PARTS = {v: k for k, v in _BETA_PARTS.items()}


class Dialect:
    """GA events as they are, or reshaped for a beta client (``OpenAI-Beta: realtime=v1``)."""

    def __init__(self, beta: bool) -> None:
        self.beta = beta

    @classmethod
    def of(cls, headers: Any) -> Dialect:
        return cls("realtime=v1" in (headers.get("openai-beta") or "").replace(" ", ""))

    # server -> client
    def out(self, event: ServerEvent) -> dict[str, Any] | None:
        """The event as this client reads it (None: the dialect has no such event)."""
        data = event.model_dump(mode="json")
        if not self.beta:
            return data
        if data["type"] == "conversation.item.done":
            return None  # beta clients know only conversation.item.created
        data["type"] = _BETA_NAMES.get(data["type"], data["type"])
        if "session" in data:
            data["session"] = _beta_session(data["session"])
        if "response" in data:
            data["response"] = _beta_response(data["response"])
        if "item" in data:
            data["item"] = _beta_item(data["item"])
        return data

    # client -> server
    def incoming(self, data: Any) -> Any:
        """A beta client's event in the GA shape (anything unexpected is left for validation to refuse)."""
        if not self.beta or not isinstance(data, dict):
            return data
        kind = data.get("type")
        if kind == "session.update" and isinstance(data.get("session"), dict):
            data = {**data, "session": _ga_session_update(data["session"])}
        elif kind == "response.create" and isinstance(data.get("response"), dict):
            r = dict(data["response"])
            if "modalities" in r:
                r["output_modalities"] = _one_of(r.pop("modalities"))
            if "voice" in r:
                r["audio"] = {"output": {"voice": r.pop("voice")}}
            r.pop("output_audio_format", None)
            data = {**data, "response": r}
        elif kind == "conversation.item.create" and isinstance(data.get("item"), dict):
            item = dict(data["item"])
            if isinstance(item.get("content"), list):
                item["content"] = [
                    {**p, "type": _GA_PARTS.get(p.get("type"), p.get("type"))} if isinstance(p, dict) else p
                    for p in item["content"]
                ]
            data = {**data, "item": item}
        return data


def _one_of(modalities: Any) -> Any:
    # The beta's ["text", "audio"] means audio with its transcript: GA's ["audio"].
    if isinstance(modalities, list) and "audio" in modalities:
        return ["audio"]
    return modalities


def _beta_format(fmt: dict | None) -> str:
    return "pcm16" if fmt is None or fmt.get("type") == "audio/pcm" else fmt.get("type", "pcm16")


def _beta_session(s: dict) -> dict:
    audio = s.get("audio") or {}
    inp, out = audio.get("input") or {}, audio.get("output") or {}
    return {
        "id": s.get("id"),
        "object": "realtime.session",
        "model": s.get("model"),
        "modalities": ["text", "audio"] if "audio" in s.get("output_modalities", []) else ["text"],
        "instructions": s.get("instructions"),
        "voice": out.get("voice"),
        "input_audio_format": _beta_format(inp.get("format")),
        "output_audio_format": _beta_format(out.get("format")),
        "input_audio_transcription": inp.get("transcription"),
        "turn_detection": inp.get("turn_detection"),
        "tools": s.get("tools", []),
        "tool_choice": s.get("tool_choice", "auto"),
        "temperature": 0.8,
        "max_response_output_tokens": s.get("max_output_tokens"),
    }


def _beta_response(r: dict) -> dict:
    r = dict(r)
    r["modalities"] = ["text", "audio"] if "audio" in r.pop("output_modalities", []) else ["text"]
    output = (r.pop("audio", None) or {}).get("output") or {}
    r["voice"] = output.get("voice")
    r["output_audio_format"] = "pcm16"
    r["max_output_tokens"] = r.pop("max_output_tokens", "inf")
    r["output"] = [_beta_item(i) for i in r.get("output", [])]
    return r


def _beta_item(item: dict) -> dict:
    if "content" not in item:
        return item
    return {
        **item,
        "content": [{**p, "type": _BETA_PARTS.get(p["type"], p["type"])} for p in item["content"]],
    }


def _ga_session_update(s: dict) -> dict:
    s = dict(s)
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    for key, side in (("input_audio_format", audio_in), ("output_audio_format", audio_out)):
        if key in s:
            fmt = s.pop(key)
            # "pcm16" is the only one served; anything else fails validation with the GA field's message.
            side["format"] = {"type": "audio/pcm", "rate": SAMPLE_RATE} if fmt == "pcm16" else {"type": fmt}
    if "turn_detection" in s:
        audio_in["turn_detection"] = s.pop("turn_detection")
    if "input_audio_transcription" in s:
        audio_in["transcription"] = s.pop("input_audio_transcription")
    if "voice" in s:
        audio_out["voice"] = s.pop("voice")
    if "modalities" in s:
        s["output_modalities"] = _one_of(s.pop("modalities"))
    if "max_response_output_tokens" in s:
        s["max_output_tokens"] = s.pop("max_response_output_tokens")
    for key in ("temperature", "input_audio_noise_reduction", "speed", "tracing"):
        s.pop(key, None)
    if audio_in or audio_out:
        s["audio"] = {
            **({"input": audio_in} if audio_in else {}),
            **({"output": audio_out} if audio_out else {}),
        }
    s.setdefault("type", "realtime")
    return s
