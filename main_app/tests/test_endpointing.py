"""Endpointing: the hold that ends a turn follows the words."""

from __future__ import annotations

import asyncio
import json

import pytest
from rvchat_app.endpointing import Completeness, Holds, completeness
from rvchat_app.session import Session
from rvchat_app.settings import Settings
from rvchat_app.store import Store
from rvchat_app.testing import FakeHub, ScriptedUser, until


@pytest.mark.parametrize("text,kind", [
    ("What is the capital of France?", Completeness.COMPLETE),
    ("I love it.", Completeness.COMPLETE),
    ("Where are you from?", Completeness.COMPLETE),
    ("Thank you.", Completeness.COMPLETE),
    ("Yes.", Completeness.COMPLETE),
    ("I would like to know,", Completeness.INCOMPLETE),
    ("The red fox has read many books, but", Completeness.INCOMPLETE),
    ("I went to the.", Completeness.INCOMPLETE),
    ("and then we went to see my", Completeness.INCOMPLETE),
    ("My number is 0 1 7 3", Completeness.INCOMPLETE),
    ("Well...", Completeness.INCOMPLETE),
    ("so um", Completeness.INCOMPLETE),
    ("tell me about the weather", Completeness.UNSURE),
    ("", Completeness.UNSURE),
])
def test_completeness(text, kind):
    assert completeness(text) is kind


def test_hold_is_short_after_a_finished_sentence_and_long_after_a_comma():
    holds = Holds(complete_ms=300, unsure_ms=500, incomplete_ms=1200)
    assert holds.for_text("What time is it?") == 300
    assert holds.for_text("what time is it") == 500
    assert holds.for_text("What time is it in,") == 1200
    # The page's turn-end silence bounds both ways: shorter than it never for unfinished words.
    assert Holds(complete_ms=300, unsure_ms=200, incomplete_ms=1200).for_text("Yes.") == 200
    assert Holds(complete_ms=300, unsure_ms=1500, incomplete_ms=1200).for_text("and,") == 1500


# ---------------------------------------------------------------- the LLM's end-of-utterance probability
def test_probability_decides_unless_the_words_promise_more():
    holds = Holds(complete_ms=300, unsure_ms=500, incomplete_ms=1200)
    # "And so my fellow American." reads finished to the words rule; the model says 0.04.
    assert holds.for_turn("And so my fellow American.", 0.04, 0.2) == 1200
    assert holds.for_turn("what time is it", 0.7, 0.2) == 300
    assert holds.for_turn("What time is it?", 0.2, 0.2) == 300  # the threshold counts as finished
    assert holds.for_turn("I would like to know,", 0.9, 0.2) == 1200  # a comma promises more
    assert holds.for_turn("and the", 0.9, 0.2) == 1200
    # Unknown (no answer in time, no model): the words rule.
    assert holds.for_turn("What time is it?", None, 0.2) == holds.for_text("What time is it?") == 300
    assert holds.for_turn("what time is it", None, 0.2) == 500
    # The page's turn-end silence still bounds both ways.
    assert Holds(complete_ms=300, unsure_ms=200, incomplete_ms=1200).for_turn("Yes", 0.9, 0.2) == 200
    assert Holds(complete_ms=300, unsure_ms=1500, incomplete_ms=1200).for_turn("Yes", 0.1, 0.2) == 1500



def test_words_the_model_is_near_certain_go_on_hold_longest():
    # Three holds: finished (>= 0.3), unsure (under it), mid-sentence (under 0.01).
    holds = Holds(complete_ms=300, unsure_ms=500, incomplete_ms=700, midsentence_ms=1600, midsentence_below=0.01)
    assert holds.longest_ms == 1600
    assert holds.for_turn("And so my fellow Americans asked not what you", 0.002, 0.3) == 1600
    assert holds.for_turn("This is a long stop.", 0.013, 0.3) == 700  # a finished sentence the model doubts
    assert holds.for_turn("What time is it?", 0.6, 0.3) == 300
    # A comma promises more, but only the model sends a turn to the longest hold: Whisper ends finished
    # sentences read with a rising voice with a comma too.
    assert holds.for_turn("I would like to know,", 0.9, 0.3) == 700
    assert holds.for_turn("I would like to know,", 0.004, 0.3) == 1600
    assert holds.for_text("and the") == 700  # the words rule (no model) never holds longest
    assert holds.for_text("what time is it") == 500
    # Without the tier (0 ms, the default), everything unfinished holds the incomplete hold, as before.
    two = Holds(complete_ms=300, unsure_ms=500, incomplete_ms=700)
    assert two.for_turn("asked not what you", 0.002, 0.3) == two.for_turn("and,", 0.9, 0.3) == two.longest_ms == 700
    # The page's turn-end silence still bounds it: never shorter than that for unfinished words.
    assert Holds(complete_ms=300, unsure_ms=2000, incomplete_ms=700, midsentence_ms=1600,
                 midsentence_below=0.01).for_turn("what you", 0.0, 0.3) == 2000


class Page:
    def __init__(self) -> None:
        self.events: list[dict] = []

    async def send(self, event) -> None:
        if not isinstance(event, bytes):
            self.events.append(event.model_dump(mode="json"))

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


async def commit_ms(tmp_path, hub: FakeHub, **settings) -> float:
    """One utterance over fakes (speculative start at 150 ms); how long after the speech ended its reply
    reached the page (the latency event's commit_ms)."""
    store = Store(str(tmp_path / "t.sqlite3"))
    await store.open()
    page = Page()
    settings = {"speculative_silence_ms": 150, "vad_min_silence_ms": 400, "turn_end_complete_ms": 300,
                "turn_end_incomplete_ms": 1200, "turn_end_eou_timeout_ms": 200, **settings}
    session = Session(send=page.send, store=store, settings=Settings(db_path=":memory:", **settings),
                      factories=hub.factories(), observe=lambda *_: None)
    await session.start()
    try:
        for name in ("vad", "stt", "llm", "tts"):
            await asyncio.wait_for(session.links[name].up_event.wait(), 2)
        await ScriptedUser(session, hub).says(start=0.4, end=1.0)
        await until(lambda: page.of("latency"), timeout=10, what="the reply's latency event")
        return page.of("latency")[0]["commit_ms"]
    finally:
        await session.close()
        await store.close()


# The fake services answer in a few ms, so the commit comes right at the chosen hold; the bounds below
# are 800 ms apart, so they tell the holds apart, not how fast anything ran.
SHORT, LONG, LONGEST = (290, 1100), (1190, 5000), (1590, 5000)


@pytest.mark.parametrize("transcript,eou,delay,expected", [
    ("What is the capital of France?", 0.9, 0.0, SHORT),  # finished by both
    ("And so my fellow American.", 0.04, 0.0, LONG),  # Whisper's full stop after half a sentence
    ("tell me about the weather", 0.6, 0.0, SHORT),  # no punctuation: the model says finished
    ("I would like to know,", 0.9, 0.0, LONG),  # a comma promises more, whatever the model says
    ("And so my fellow Americans asked not what you", 0.002, 0.0, LONGEST),  # mid-sentence (1600 by default)
    ("What is the capital of France?", None, 0.0, SHORT),  # no model in the LLM service: the words rule
    ("And so my fellow American.", 0.04, 3.0, SHORT),  # no answer within the timeout: the words rule
])
async def test_the_hold_follows_the_llm_probability(tmp_path, transcript, eou, delay, expected):
    hub = FakeHub(transcript=transcript, token_delay=0.001)
    hub.eou, hub.eou_delay = eou, delay
    waited = await commit_ms(tmp_path, hub)
    assert hub.last("llm").eou_asked == [transcript]
    assert expected[0] <= waited < expected[1], waited


async def test_off_the_llm_is_not_asked(tmp_path):
    hub = FakeHub(transcript="And so my fellow American.", token_delay=0.001)
    hub.eou = 0.01
    waited = await commit_ms(tmp_path, hub, turn_end_eou=False)
    assert hub.last("llm").eou_asked == []
    assert SHORT[0] <= waited < SHORT[1], waited


class WiredLlm:
    """An LlmStream on queues instead of a socket: ``sent`` holds what it sent, ``incoming`` feeds it events,
    and ``reader_saw`` is what its reply reader (``events()``) got."""

    def __init__(self) -> None:
        from rvchat_app.clients import LlmStream

        self.stream = LlmStream("http://127.0.0.1:1")
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.sent: list[str] = []
        self.reader_saw: list = []

        async def send(data):
            self.sent.append(data)

        self.stream._send, self.stream._recv = send, self.incoming.get

    async def __aenter__(self):
        async def reader():
            async for event in self.stream.events():
                self.reader_saw.append(event)

        self._task = asyncio.create_task(reader())
        return self.stream, self.incoming, self.sent, self.reader_saw

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()


async def test_the_llm_link_answers_eou_beside_the_reply_events():
    """LlmStream: eou answers and errors (ids "eou-...") resolve the question and never reach the reply's
    reader; a late answer is dropped; the generation's own events pass through."""
    from rvchat_common.protocol import ErrorEvent, dump, llm

    async with WiredLlm() as (stream, incoming, sent, reader_saw):
        asked = asyncio.create_task(stream.eou("What is the capital of France?"))
        await until(lambda: sent)
        request = json.loads(sent[0])
        assert request == {"type": "eou", "id": request["id"], "text": "What is the capital of France?"}
        incoming.put_nowait(dump(llm.Delta(id="g1", content="Par")))
        incoming.put_nowait(dump(llm.EouResult(id=request["id"], probability=0.88)))
        assert await asyncio.wait_for(asked, 2) == 0.88
        asked = asyncio.create_task(stream.eou("hello"))
        await until(lambda: len(sent) == 2)
        unavailable = ErrorEvent.of("eou_unavailable", "no model", status=501, id=json.loads(sent[1])["id"])
        incoming.put_nowait(dump(unavailable))
        assert await asyncio.wait_for(asked, 2) is None
        # An answer after the asker gave up, and a generation's error: only the latter is the reply's.
        incoming.put_nowait(dump(llm.EouResult(id=request["id"], probability=0.5)))
        incoming.put_nowait(dump(ErrorEvent.of("upstream_timeout", "slow", status=504, id="g1")))
        await until(lambda: len(reader_saw) == 2)
        assert [type(e) for e in reader_saw] == [llm.Delta, ErrorEvent] and reader_saw[1].id == "g1"


# ---------------------------------------------------------------- prefill: the reply's prompt ahead of it
async def test_speech_start_and_partials_prefill_the_reply_and_not_while_one_is_under_way(tmp_path):
    from rvchat_common.protocol import stt

    hub = FakeHub(transcript="What is the capital of Spain?", token_delay=0.001)
    store = Store(str(tmp_path / "t.sqlite3"))
    await store.open()
    page = Page()
    session = Session(send=page.send, store=store, settings=Settings(db_path=":memory:"),
                      factories=hub.factories(), observe=lambda *_: None)
    await session.start()
    try:
        for name in ("vad", "stt", "llm", "tts"):
            await asyncio.wait_for(session.links[name].up_event.wait(), 2)
        fake = hub.last("llm")
        # The first turn: at the start of speech the system prompt and the user's header (no words yet).
        await ScriptedUser(session, hub).says(start=0.4, end=1.0)
        await until(lambda: page.of("reply_end"), timeout=10, what="the reply")
        assert fake.prefilled[0] == [{"role": "user", "content": ""}]
        generated = json.loads(json.dumps(fake.sent[-1]))
        assert generated["messages"] == [{"role": "user", "content": "What is the capital of Spain?"}]
        # The next turn's: the history as the next reply will see it, then the words so far (a partial).
        history = [{"role": "user", "content": "What is the capital of Spain?"},
                   {"role": "assistant", "content": page.of("reply_end")[0]["text"]}]
        await session.detector.on_stt(stt.Partial(text="And of", audio_seconds=1.0))
        await until(lambda: len(fake.prefilled) == 2, timeout=2, what="the partial's prefill")
        assert fake.prefilled[1] == [*history, {"role": "user", "content": "And of"}]
        # The next start of speech, once the reply has played: the history and the user's header; then, while
        # the reply is under way (the LLM generating), partials prefill nothing.
        await until(lambda: session.state == "listening", timeout=10, what="the reply played out")
        hub.token_delay = 0.2
        await ScriptedUser(session, hub).says(start=0.4, end=1.0)
        await until(lambda: len(fake.prefilled) == 3, timeout=2, what="the start of speech's prefill")
        assert fake.prefilled[2] == [*history, {"role": "user", "content": ""}]
        await until(lambda: session.reply is not None and session.reply.phase.value == "committed",
                    timeout=10, what="a reply under way")
        await session.detector.on_stt(stt.Partial(text="Wait", audio_seconds=1.0))
        await asyncio.sleep(0.2)
        assert len(fake.prefilled) == 3
    finally:
        await session.close()
        await store.close()


async def test_off_partials_prefill_nothing(tmp_path):
    from rvchat_common.protocol import stt

    hub = FakeHub(transcript="Hello.", token_delay=0.001)
    store = Store(str(tmp_path / "t.sqlite3"))
    await store.open()
    session = Session(send=Page().send, store=store, settings=Settings(db_path=":memory:", llm_prefill=False),
                      factories=hub.factories(), observe=lambda *_: None)
    await session.start()
    try:
        await asyncio.wait_for(session.links["llm"].up_event.wait(), 2)
        await session.detector.on_stt(stt.Partial(text="What is the", audio_seconds=1.0))
        await asyncio.sleep(0.2)
        assert hub.last("llm").prefilled == []
    finally:
        await session.close()
        await store.close()


async def test_the_llm_link_sends_prefill_and_keeps_its_answers_from_the_reply():
    from rvchat_common.protocol import ErrorEvent, dump, llm

    async with WiredLlm() as (stream, incoming, sent, reader_saw):
        await stream.prefill([{"role": "user", "content": "What is"}], system="Be brief.", temperature=None)
        request = json.loads(sent[0])
        assert request == {"type": "prefill", "id": request["id"], "system": "Be brief.", "trim": True,
                           "messages": [{"role": "user", "content": "What is"}]}
        incoming.put_nowait(dump(llm.Prefilled(id=request["id"], tokens=12)))
        incoming.put_nowait(dump(ErrorEvent.of("internal_error", "x", status=500, id=request["id"])))
        incoming.put_nowait(dump(llm.Delta(id="g1", content="Par")))
        await until(lambda: reader_saw)
        await asyncio.sleep(0.05)
        assert [type(e) for e in reader_saw] == [llm.Delta]
