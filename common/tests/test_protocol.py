"""The typed protocol: models against docs/protocols.md (both ways), JSON shapes, validation ranges."""

from __future__ import annotations

import re
import types
import typing

import pytest

from rvchat_common.protocol import ErrorEvent, ProtocolError, WireModel, dump, llm, page, parse, stt, tts, vad
from rvchat_common.protocol.base import ErrorBody, union_members
from rvchat_common.testing import REPO

DOC = (REPO / "docs" / "protocols.md").read_text(encoding="utf-8")
SERVICES = {"VAD": vad, "STT": stt, "TTS": tts, "LLM": llm, "Page": page}
TYPE_RE = re.compile(r'"type": "([a-z_]+)"')


def bullets(block: str) -> list[str]:
    """A markdown list's items, each with its indented continuation lines."""
    items: list[str] = []
    for line in block.splitlines():
        if line.startswith("- "):
            items.append(line)
        elif line.startswith("  ") and items:
            items[-1] += "\n" + line
    return items


def doc_blocks() -> dict[tuple[str, str], list[str]]:
    """(service, "client" | "server") -> that direction's bullets in the service's section."""
    out = {}
    for name in SERVICES:
        section = re.search(rf"^## {name} .*?(?=^## |\Z)", DOC, re.S | re.M).group(0)
        client, server = re.split(r"^server -> client.*$", section, flags=re.M)
        out[(name, "client")] = bullets(client)
        out[(name, "server")] = bullets(server)
    return out


def preamble() -> str:
    return DOC[: DOC.index("\n## ")]


def union(module, direction: str):
    return module.ClientEvent if direction == "client" else module.ServerEvent


def nested_fields(model: type[WireModel]) -> set[str]:
    """Field names of a model and of the wire models inside it (a segment's start, usage's tokens)."""
    names = set()
    for name, field in model.model_fields.items():
        if field.exclude or name == "type":
            continue
        names.add(name)
        stack = [field.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, WireModel):
                names |= nested_fields(ann)
            stack += typing.get_args(ann) if isinstance(ann, (types.GenericAlias, types.UnionType)) \
                or typing.get_origin(ann) else []
    return names


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![a-z_]){re.escape(word)}(?![a-z_])", text) is not None


CASES = [(service, direction) for service in SERVICES for direction in ("client", "server")]


@pytest.mark.parametrize("service,direction", CASES)
def test_every_model_and_field_is_documented(service, direction):
    items = doc_blocks()[(service, direction)]
    for model in union_members(union(SERVICES[service], direction)):
        if model is ErrorEvent:
            continue  # documented once, in the preamble (next test)
        tag, *aliases = model.types()
        found = [b for b in items if f'"type": "{tag}"' in b]
        assert len(found) == 1, f"{service} {direction}: {len(found)} bullets document {tag!r}"
        for alias in aliases:
            assert f"alias `{alias}`" in found[0], f"{service} {tag}: alias {alias!r} undocumented"
        missing = [f for f in sorted(nested_fields(model)) if not has_word(found[0], f)]
        assert not missing, f"{service} {tag}: fields {missing} not in the doc"


@pytest.mark.parametrize("service,direction", CASES)
def test_every_documented_event_is_a_model(service, direction):
    known = {t for m in union_members(union(SERVICES[service], direction)) for t in m.types()}
    for item in doc_blocks()[(service, direction)]:
        for tag in TYPE_RE.findall(item):
            assert tag in known, f"{service} {direction}: the doc has {tag!r}, the models do not"


def test_error_event_and_codes_are_documented_once_for_all():
    text = preamble()
    for name in nested_fields(ErrorEvent) | set(ErrorBody.model_fields):
        assert has_word(text, name), name
    for code in ("invalid_json", "invalid_event", "unknown_event", "unexpected_binary", "frame_too_large",
                 "odd_length_pcm", "internal_error", "1008", "1011"):
        assert f"`{code}`" in text or code in text, code
    for module in SERVICES.values():  # the page's error event adds the stage and turn it belongs to
        assert any(issubclass(m, ErrorEvent) for m in union_members(module.ServerEvent))


# --- shapes ---------------------------------------------------------------------------------------
def test_absent_means_absent_on_the_wire():
    assert dump(vad.Config(threshold=0.4)) == '{"type":"config","threshold":0.4}'
    assert dump(stt.Config(language=None)) == '{"type":"config","language":null}'  # null: auto-detect
    assert dump(tts.Config()) == '{"type":"config"}'
    assert dump(llm.Cancelled(content="")) == '{"type":"cancelled","content":""}'
    assert dump(llm.Generate(messages=[llm.Message(role="user", content="hi")])) == \
        '{"type":"generate","messages":[{"role":"user","content":"hi"}]}'
    assert '"auto"' not in dump(stt.Final(text="", language="en", duration=0, processing_ms=1))
    assert '"auto":true' in dump(stt.Final(text="", language="en", duration=0, processing_ms=1, auto=True))
    error = ErrorEvent.of("invalid_event", "bad", param="threshold")
    assert parse(vad.server_events, dump(error)) == error
    assert "\"id\"" not in dump(error) and '"param":"threshold"' in dump(error)
    assert dump(stt.Ready(sample_rate=16000, language=None, model="m")).count("null") == 1


def test_audio_header_carries_no_pcm():
    event = tts.Audio(index=0, text="Hi.", sample_rate=22050, bytes=4, pcm=b"\x00\x01\x02\x03")
    assert dump(event) == '{"type":"audio","index":0,"text":"Hi.","sample_rate":22050,"bytes":4}'
    received = parse(tts.server_events, dump(event))
    received.pcm = b"\x00\x01\x02\x03"  # the client attaches the binary frame that follows
    assert received == event


def test_aliases_parse_to_one_model():
    assert isinstance(parse(stt.client_events, '{"type": "flush"}'), stt.End)
    assert isinstance(parse(tts.client_events, '{"type": "end"}'), tts.Flush)
    assert isinstance(parse(tts.client_events, '{"type": "reset"}'), tts.Cancel)


def test_server_events_round_trip():
    done = llm.Done(id="g1", message=llm.Message(role="assistant", content="Paris."), model="m", provider="p",
                    finish_reason="stop",
                    usage=llm.Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
                    timings=llm.Timings(first_token_ms=None, total_ms=10.5))
    assert parse(llm.server_events, dump(done)) == done
    assert '"first_token_ms":null' in dump(done) and "tokens_per_s" not in dump(done)
    for event in (vad.SpeechEnd(timestamp=2.0, start=1.0, duration=1.0), stt.ResetAck(), tts.Cancelled(),
                  stt.Partial(text="hel", audio_seconds=0.5)):
        assert parse(union_of(event).server_events, dump(event)) == event


def union_of(event):
    return next(m for m in SERVICES.values() if type(event) in union_members(m.ServerEvent))


@pytest.mark.parametrize("adapter,event,code", [
    (vad.client_events, {"type": "config", "threshold": 1}, "invalid_event"),
    (vad.client_events, {"type": "config", "sample_rate": 3999}, "invalid_event"),
    (vad.client_events, {"type": "config", "min_silence_ms": 600_001}, "invalid_event"),
    (stt.client_events, {"type": "config", "sample_rate": 16000.0}, "invalid_event"),
    (stt.client_events, {"type": "config", "partials": "yes"}, "invalid_event"),
    (stt.client_events, {"type": "config", "language": 5}, "invalid_event"),
    (tts.client_events, {"type": "config", "speed": True}, "invalid_event"),
    (tts.client_events, {"type": "config", "speed": 4.5}, "invalid_event"),
    (tts.client_events, {"type": "config", "speed": float("inf")}, "invalid_event"),
    (tts.client_events, {"type": "text", "text": 5}, "invalid_event"),
    (tts.client_events, {"type": "text"}, "invalid_event"),
    (llm.client_events, {"type": "generate", "messages": []}, "invalid_event"),
    (llm.client_events, {"type": "generate", "messages": [{"role": "wizard", "content": "x"}]},
     "invalid_event"),
    (llm.client_events, {"type": "generate", "messages": [{"role": "user", "content": "x"}],
                         "temperature": 1e400}, "invalid_event"),
    (llm.client_events, {"type": "flush"}, "unknown_event"),
])
def test_ranges_live_in_the_models(adapter, event, code):
    with pytest.raises(ProtocolError) as err:
        parse(adapter, event)
    assert err.value.code == code


def test_the_same_type_string_means_the_same_thing_per_direction():
    # STT's reset is an event both ways; its answer is a model of its own.
    assert stt.Reset.types() == stt.ResetAck.types() == ("reset",)
    assert stt.Reset in union_members(stt.ClientEvent) and stt.ResetAck in union_members(stt.ServerEvent)
