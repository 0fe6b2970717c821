"""What every WebSocket event has in common: the ``Event`` base, the shared error event, ``dump``,
``parse``.

An event is a JSON object with a ``type``. Each service's events are pydantic models in a module
of this package (``vad``, ``stt``, ``tts``, ``llm``), one per event and direction, with a
discriminated union per direction. The services validate what clients send against the client
union and build what they send from the server models; clients and test fakes do the same the
other way round, so nobody's idea of the protocol can drift from anybody else's, nor from
docs/protocols.md (a test checks the doc against these models).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

from ..errors import APIError, error_type, parse_json, valid_unicode

E = TypeVar("E")

# Text bound for a tokenizer or phonemizer: JSON parsed by someone else than parse_json (a FastAPI
# body) may carry lone surrogates, which no UTF-8 encoder takes; they become U+FFFD here.
UnicodeStr = Annotated[StrictStr, AfterValidator(valid_unicode)]


class WireModel(BaseModel):
    """A JSON object on the wire.

    Unknown fields are ignored (a newer peer may send more), numbers must be finite (JSON has no
    Infinity, but Python's parser reads ``1e400`` and ``Infinity`` as inf: that is a bad event, not
    a value to compute with). Two class-level switches keep optional fields off the wire where the
    protocol documents them as absent rather than null:

    - ``omit_if_none``: these fields are left out when they are None (an error's ``id``);
    - ``only_set_fields``: only the fields the sender set are sent (config events, where an absent
      field means "keep what you have" and an explicit null may mean something else, such as
      STT's ``"language": null`` for auto-detection).
    """

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    omit_if_none: ClassVar[frozenset[str]] = frozenset()
    only_set_fields: ClassVar[bool] = False

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if self.only_set_fields:
            data = {k: v for k, v in data.items() if k == "type" or k in self.model_fields_set}
        for name in self.omit_if_none:
            if name in data and data[name] is None:
                del data[name]
        return data


class Event(WireModel):
    """A WebSocket event. Subclasses narrow ``type`` to a ``Literal`` with a default."""

    type: str

    @classmethod
    def types(cls) -> tuple[str, ...]:
        """The ``type`` strings this model stands for (more than one where the protocol has aliases)."""
        return tuple(get_args(cls.model_fields["type"].annotation))


class ErrorBody(WireModel):
    """The shared error shape, the OpenAI one (``rvchat_common.errors``)."""

    omit_if_none = frozenset({"param"})

    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorEvent(Event):
    """``{"type": "error", "error": {...}, "id"?}``: the same on every service.

    ``id`` names the LLM generation the error belongs to; it is absent elsewhere.
    """

    omit_if_none = frozenset({"id"})

    type: Literal["error"] = "error"
    error: ErrorBody
    id: str | None = None

    @classmethod
    def of(cls, code: str | None, message: str, *, status: int = 400, param: str | None = None,
           id: str | None = None) -> ErrorEvent:
        """An error event; ``status`` picks the error ``type`` as over HTTP (4xx: the client's fault)."""
        return cls(error=ErrorBody(message=message, type=error_type(status), code=code, param=param), id=id)

    @classmethod
    def from_api_error(cls, exc: APIError, id: str | None = None) -> ErrorEvent:
        return cls.of(exc.code, exc.message, status=exc.status, param=exc.param, id=id)


class ProtocolError(Exception):
    """A client event the service will not take: answered with an error event carrying ``code``.

    ``close_code`` None keeps the connection open (the documented rule for bad events); 1008 closes it.
    """

    def __init__(self, code: str, message: str, param: str | None = None,
                 close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.close_code = close_code

    def event(self) -> ErrorEvent:
        return ErrorEvent.of(self.code, self.message, param=self.param)


def dump(event: BaseModel) -> str:
    """The event as a JSON text frame.

    Non-ASCII text is sent as is; a lone surrogate (which JSON escapes can carry but UTF-8 cannot)
    is sent escaped instead of failing the send with a UnicodeEncodeError.
    """
    data = event.model_dump(mode="json")
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, separators=(",", ":"))
    return text


def _invalid_message(kind: str, exc: ValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err.get("loc", ())]
        loc = loc[1:] if loc and loc[0] == kind else loc  # the union's first step is the event type
        where = ".".join(loc) or "event"
        param = param or (loc[0] if loc else None)
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return f"invalid {kind[:40]} event: " + "; ".join(parts[:5]), param


def parse(adapter: TypeAdapter[E], data: str | bytes | dict[str, Any]) -> E:
    """JSON text (or an already parsed dict) -> the typed event, or ProtocolError.

    ``invalid_json`` when the text is not JSON (deep nesting included), ``invalid_event`` when it
    is not an object with a string ``type`` or fails the event's model, ``unknown_event`` when the
    type is not one of the union's.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = parse_json(data)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError("invalid_json", "text frame is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("invalid_event", "an event must be a JSON object with a string 'type'",
                            param="type")
    kind: str = data["type"]
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            if err["type"] == "union_tag_invalid":
                expected = (err.get("ctx") or {}).get("expected_tags", "")
                raise ProtocolError("unknown_event", f"unknown event type {kind[:40]!r} "
                                    f"(expected {expected})", param="type") from None
        message, param = _invalid_message(kind, exc)
        raise ProtocolError("invalid_event", message, param=param) from None


def union_members(union: Any) -> tuple[type[Event], ...]:
    """The event models of a discriminated union (``Annotated[A | B, Field(discriminator=...)]``)."""
    if get_origin(union) is Annotated:
        union = get_args(union)[0]
    return tuple(m for m in get_args(union) if isinstance(m, type) and issubclass(m, Event))
