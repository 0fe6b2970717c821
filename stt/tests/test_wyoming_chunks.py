"""How STT's Wyoming handler turns the stream's partials and finals into transcript chunks: pure
logic, on a list standing in for the connection (the real service: test_wyoming.py)."""

from __future__ import annotations

import pytest
from wyoming.event import Event

from rvchat_common.protocol import stt
from rvchat_stt.wyoming import _Transcripts, agreed_words


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def send(self, event: Event) -> None:
        self.events.append(event)

    def texts(self, kind: str) -> list[str]:
        return [e.data["text"] for e in self.events if e.type == kind]


def final(text: str, auto: bool = False) -> stt.Final:
    return stt.Final(text=text, language="en", duration=1.0, processing_ms=1.0, auto=True if auto else None)


@pytest.mark.parametrize("a, b, agreed", [
    ("", "And so", []),
    ("And so my", "And so, my fellow", ["And", "so,", "my"]),
    ("Turn on the", "Turn off the lights", ["Turn"]),
    ("Turn on the lights.", "turn on the lights.", ["turn", "on", "the", "lights"]),  # end dropped
    ("It is four", "It is forty", ["It", "is"]),
])
def test_only_words_two_decodes_agree_on_are_stable(a, b, agreed):
    assert agreed_words(a, b) == agreed


async def test_chunks_add_up_to_the_transcript():
    sink = Sink()
    out = _Transcripts(sink)  # type: ignore[arg-type]
    for partial in ["Turn", "Turn on the", "Turn on the kitchen", "Turn on the kitchen lights."]:
        await out.send(stt.Partial(text=partial, audio_seconds=1.0))
    await out.finish(final("Turn on the kitchen lights, please."))
    types = [e.type for e in sink.events]
    assert types[0] == "transcript-start" and types[-2:] == ["transcript", "transcript-stop"]
    chunks = sink.texts("transcript-chunk")
    assert chunks == ["Turn", " on the", " kitchen", " lights, please."]
    assert "".join(chunks) == sink.texts("transcript")[0] == "Turn on the kitchen lights, please."


async def test_a_word_the_final_revises_stops_the_chunks_and_the_transcript_has_it_right():
    sink = Sink()
    out = _Transcripts(sink)  # type: ignore[arg-type]
    for partial in ["It is four", "It is four o'clock"]:
        await out.send(stt.Partial(text=partial, audio_seconds=1.0))
    await out.finish(final("It is forty o'clock."))
    assert sink.texts("transcript-chunk") == ["It is four"]
    assert sink.texts("transcript") == ["It is forty o'clock."]


async def test_automatic_finals_of_a_long_command_are_joined():
    """Every stream_max_seconds the stream closes an utterance by itself; Wyoming has one transcript."""
    sink = Sink()
    out = _Transcripts(sink)  # type: ignore[arg-type]
    await out.send(final("First part of a long dictation.", auto=True))
    await out.send(stt.Partial(text="and the", audio_seconds=1.0))
    await out.send(stt.Partial(text="and the second", audio_seconds=2.0))
    await out.finish(final("and the second part."))
    assert sink.texts("transcript") == ["First part of a long dictation. and the second part."]
    assert "".join(sink.texts("transcript-chunk")) == sink.texts("transcript")[0]


async def test_silence_is_an_empty_transcript_in_the_streaming_frame():
    sink = Sink()
    out = _Transcripts(sink)  # type: ignore[arg-type]
    await out.finish(final(""))
    assert [(e.type, e.data) for e in sink.events] == [
        ("transcript-start", {}), ("transcript", {"text": "", "language": "en"}), ("transcript-stop", {})]
