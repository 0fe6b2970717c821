"""Orchestration logic against in-process fakes of the four services (fast, no models)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel
from rvchat_app import recognition
from rvchat_app.playout import spoken_text
from rvchat_app.recognition import is_meaningful
from rvchat_app.session import Session
from rvchat_app.settings import Settings
from rvchat_app.testing import FakeHub, ScriptedUser, until
from rvchat_common.protocol import stt, vad

FRAME = b"\x01\x00" * 320  # 20 ms of 16 kHz PCM16


class Page:
    """Collects what the session sends to the browser."""

    def __init__(self) -> None:
        self.events: list = []
        self.new = asyncio.Event()

    async def send(self, event) -> None:
        self.events.append(event.model_dump(mode="json") if isinstance(event, BaseModel) else event)
        self.new.set()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events if isinstance(e, dict)]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if isinstance(e, dict) and e["type"] == kind]

    async def wait(self, kind: str, count: int = 1, timeout: float = 5.0, **match) -> dict:
        async def until():
            while True:
                found = [e for e in self.of(kind) if all(e.get(k) == v for k, v in match.items())]
                if len(found) >= count:
                    return found[count - 1]
                self.new.clear()
                await self.new.wait()
        return await asyncio.wait_for(until(), timeout)


async def make(store, hub: FakeHub, **settings) -> tuple[Session, Page]:
    page = Page()
    observed = []
    settings.setdefault("speculative_silence_ms", 0)
    # The fake STT reads a ScriptedUser's words from exact sample values; the echo guard (real DSP, tested on real
    # audio in test_echo.py) would rescale them under the fake reply's audio.
    settings.setdefault("echo_guard", False)
    session = Session(send=page.send, store=store, settings=Settings(db_path=":memory:", **settings),
                      factories=hub.factories(), observe=lambda st, s: observed.append((st, s)))
    session.observed = observed
    await session.start()
    for name in ("vad", "stt", "llm", "tts"):
        await asyncio.wait_for(session.links[name].up_event.wait(), 2)
    return session, page


async def speak(session: Session, hub: FakeHub) -> ScriptedUser:
    """One utterance from 0.4 s to 1.0 s of stream time (the transcript is the hub's)."""
    user = ScriptedUser(session, hub)
    await user.says(start=0.4, end=1.0)
    return user


async def test_voice_turn_streams_transcript_then_text_then_audio(store):
    hub = FakeHub()
    session, page = await make(store, hub)
    try:
        await speak(session, hub)
        end = await page.wait("reply_end")
        types = page.types()
        assert types.index("transcript") < types.index("reply_delta") < types.index("audio")
        assert page.of("transcript")[0]["text"] == hub.transcript
        assert "".join(e["text"] for e in page.of("reply_delta")) == hub.reply
        assert end["text"] == hub.reply
        # Audio header then its PCM frame, one per sentence, in order.
        audio_idx = [i for i, e in enumerate(page.events) if isinstance(e, dict) and e["type"] == "audio"]
        assert len(audio_idx) == 2
        for i in audio_idx:
            assert isinstance(page.events[i + 1], bytes) and len(page.events[i + 1]) == page.events[i]["bytes"]
        # STT got the pre-roll (300 ms before the VAD's start) plus the speech: (15 + 30 + 5) frames.
        stt = hub.last("stt")
        assert len(stt.utterances[0]) == (15 + 30 + 5) * len(FRAME)
        # The end says our VAD heard speech, so the STT's own speech gate cannot drop the words.
        assert stt.sent[-1] == {"type": "end", "speech": True}
        lat = await page.wait("latency")
        assert {"endpoint_ms", "stt_ms", "llm_first_token_ms", "tts_first_audio_ms", "total_ms"} <= set(lat)
        assert any(stage == "total_ms" for stage, _ in session.observed)
        conv = await store.get_conversation(session.conversation_id)
        assert [(m["role"], m["content"]) for m in conv["messages"]] == [
            ("user", hub.transcript), ("assistant", hub.reply)]
        # The LLM got the system prompt and the user's words.
        gen = hub.last("llm").calls("generate")[0]
        assert gen["messages"][-1] == {"role": "user", "content": hub.transcript}
        assert "system" not in gen  # the LLM service's own prompt, chosen for its model
        assert "speaking" in [e["state"] for e in page.of("state")]
    finally:
        await session.close()


async def test_barge_in_stops_playback_cancels_upstream_and_keeps_what_was_heard(store):
    """With backchannels off, speech onset interrupts at once (test_backchannel.py: the pause first)."""
    hub = FakeHub(reply="First sentence here. Second sentence is a longer one. Third one never heard.",
                  token_delay=0.01, ms_per_word=300)
    session, page = await make(store, hub, backchannels=False)
    try:
        await speak(session, hub)
        await page.wait("audio", count=2)
        # The user starts talking while the reply is playing; the page reports 1.2 s played
        # (the whole first sentence, 3 words x 300 ms = 900 ms, and 1 word of the second).
        vad = hub.last("vad")
        vad.emit({"type": "speech_start", "timestamp": 5.0})
        stop = await page.wait("stop_playback")
        await session.on_text_event({"type": "playback", "turn": stop["turn"], "played_ms": 1200})
        ev = await page.wait("interrupted")
        assert ev["spoken_text"] == "First sentence here. Second"
        llm, tts = hub.last("llm"), hub.last("tts")
        assert llm.calls("cancel") or llm.task.done()
        assert tts.calls("cancel")
        conv = await store.get_conversation(session.conversation_id)
        assistant = [m for m in conv["messages"] if m["role"] == "assistant"][-1]
        assert assistant["content"] == "First sentence here. Second"
        assert assistant["interrupted"] is True
        assert assistant["meta"]["full_text"].startswith("First sentence here.")
        assert session.state == "user_speaking"
    finally:
        await session.close()


async def test_a_tts_that_never_answers_a_cancel_is_restarted_without_losing_the_next_replys_voice(store):
    hub = FakeHub(reply="First sentence here. Second sentence is a longer one. Third one never heard.",
                  token_delay=0.01, ms_per_word=300)
    session, page = await make(store, hub, backchannels=False)
    try:
        await speak(session, hub)
        await page.wait("audio", count=1)
        stuck = hub.last("tts")
        stuck.cancel = lambda: stuck.sent.append({"type": "cancel"}) or asyncio.sleep(0)  # no `cancelled` ever
        hub.last("vad").emit({"type": "speech_start", "timestamp": 5.0})
        first = await page.wait("interrupted")
        assert not session.links["tts"].idle.is_set()
        before = len(page.events)
        await session.on_text_event({"type": "text", "text": "And now?"})
        end = await page.wait("reply_end", timeout=10)
        assert end["turn"] != first["turn"]
        later = page.events[before:]
        assert not [e for e in later if isinstance(e, dict) and e["type"] == "error"], later
        assert any(isinstance(e, dict) and e["type"] == "audio" and e["turn"] == end["turn"] for e in later)
        assert all(v["up"] for e in later if isinstance(e, dict) and e["type"] == "services"
                   for v in e["services"].values())
        assert hub.last("tts") is not stuck and stuck.closed  # a fresh connection spoke the reply
    finally:
        await session.close()


@pytest.mark.parametrize("heard_again", [True, False], ids=["decoded-whole", "heard-differently"])
async def test_barge_in_before_any_audio_merges_the_utterances(store, heard_again):
    """The user goes on before any reply audio: the rest goes to STT with the first part's audio again, and
    the whole utterance is answered in the same message (also when the first part's words come out different
    with what follows them)."""
    hub = FakeHub(token_delay=0.2)
    session, page = await make(store, hub)
    try:
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text="I would like to know")
        await page.wait("reply_start")
        if not heard_again:  # decoded with the rest, the first part's words come out otherwise
            hub.spoken = {k: "I'd like to know" for k in hub.spoken}
        await user.says(start=1.6, end=2.2, text="the weather in Paris")
        await page.wait("interrupted")
        t2 = await page.wait("transcript", count=2)
        assert t2["text"] == ("I would" if heard_again else "I'd") + " like to know the weather in Paris"
        assert hub.said_in(hub.last("stt").utterances[-1]) == t2["text"]
        assert t2["message_id"] == (await page.wait("transcript"))["message_id"]
        await page.wait("reply_end", timeout=10)  # the interrupted reply sent `interrupted`, not reply_end
        conv = await store.get_conversation(session.conversation_id)
        users = [m["content"] for m in conv["messages"] if m["role"] == "user"]
        assert users == [t2["text"]]
    finally:
        await session.close()


async def test_text_message_with_voice_off_gets_text_only(store):
    hub = FakeHub()
    session, page = await make(store, hub)
    try:
        await session.on_text_event({"type": "config", "voice_out": False})
        await session.on_text_event({"type": "text", "text": "hello there"})
        end = await page.wait("reply_end")
        assert end["text"] == hub.reply
        assert not page.of("audio")
        assert not hub.last("tts").sent
    finally:
        await session.close()


async def test_tts_down_replies_as_text_and_says_so(store):
    hub = FakeHub()
    hub.down.add("tts")
    page = Page()
    session = Session(send=page.send, store=store, settings=Settings(db_path=":memory:"), factories=hub.factories())
    await session.start()
    try:
        await asyncio.wait_for(session.links["llm"].up_event.wait(), 2)
        view = await until(lambda: (v := session.services_view())["modes"]["chat"]
                           and not v["modes"]["voice_out"] and v)
        assert "text only" in view["notice"]
        await session.on_text_event({"type": "text", "text": "hi"})
        end = await page.wait("reply_end")
        assert end["text"] == hub.reply and not page.of("audio")
        # TTS comes back: the session reconnects by itself.
        hub.down.discard("tts")
        await asyncio.wait_for(session.links["tts"].up_event.wait(), 8)
        await session.on_text_event({"type": "text", "text": "again"})
        await page.wait("audio")
    finally:
        await session.close()


async def test_llm_dying_mid_turn_ends_the_turn_with_an_error(store):
    hub = FakeHub(token_delay=0.05, reply="one two three four five six seven eight nine ten")
    session, page = await make(store, hub)
    try:
        await session.on_text_event({"type": "text", "text": "count"})
        await page.wait("reply_delta")
        hub.last("llm").kill()
        err = await page.wait("error", source="llm")
        assert "language model" in err["error"]["message"]
        end = await page.wait("reply_end")
        assert end["error"] is True
        await until(lambda: session.state == "listening")
        # The link reconnects and the next message works.
        await asyncio.wait_for(session.links["llm"].up_event.wait(), 5)
        await session.on_text_event({"type": "text", "text": "again"})
        assert (await page.wait("reply_end", count=2, timeout=10))["text"] == hub.reply
    finally:
        await session.close()


async def test_llm_down_says_no_reply_possible(store):
    hub = FakeHub()
    hub.down.add("llm")
    page = Page()
    session = Session(send=page.send, store=store, settings=Settings(db_path=":memory:"), factories=hub.factories())
    await session.start()
    try:
        await until(lambda: "no replies" in session.services_view()["notice"])
        await session.on_text_event({"type": "text", "text": "hi"})
        err = await page.wait("error", source="llm")
        assert "unavailable" in err["error"]["message"]
    finally:
        await session.close()


async def test_silence_transcript_gives_no_reply(store):
    hub = FakeHub(transcript="  ")
    session, page = await make(store, hub)
    try:
        await speak(session, hub)
        await page.wait("no_speech")
        await until(lambda: session.state == "listening")
        assert not page.of("reply_start")
    finally:
        await session.close()


async def test_config_is_validated_and_applied_to_the_vad(store):
    hub = FakeHub()
    session, page = await make(store, hub)
    try:
        await session.on_text_event({"type": "config", "threshold": 3})
        assert "between" in (await page.wait("error"))["error"]["message"]
        await session.on_text_event({"type": "config", "threshold": 0.6, "min_silence_ms": 500})
        ack = await page.wait("config")
        assert ack["threshold"] == 0.6 and ack["min_silence_ms"] == 500
        sent = hub.last("vad").calls("config")[-1]
        assert sent["threshold"] == 0.6 and sent["min_silence_ms"] == 500
        await session.on_text_event({"type": "bogus"})
        assert (await page.wait("error", count=2))["error"]["code"] == "unknown_event"
    finally:
        await session.close()


async def test_vad_threshold_rises_while_the_assistant_speaks(store):
    hub = FakeHub(ms_per_word=50)
    session, page = await make(store, hub, barge_in_threshold=0.8)
    try:
        await session.on_text_event({"type": "text", "text": "hi"})
        await page.wait("audio")
        assert hub.last("vad").calls("config")[-1]["threshold"] == 0.8
        await page.wait("state", state="listening", timeout=5)
        assert hub.last("vad").calls("config")[-1]["threshold"] == 0.5
    finally:
        await session.close()


def test_spoken_text_counts_whole_sentences_then_words():
    chunks = [("One two three.", 900.0), ("Four five six seven.", 1200.0)]
    assert spoken_text(chunks, 0) == ""
    assert spoken_text(chunks, 899) == "One two three."
    assert spoken_text(chunks, 900 + 600) == "One two three. Four five"
    assert spoken_text(chunks, 5000) == "One two three. Four five six seven."


def test_meaningful_transcripts():
    assert not is_meaningful("")
    assert not is_meaningful(" . ")
    assert not is_meaningful("[BLANK_AUDIO]")
    assert is_meaningful("yes")


async def test_late_events_of_an_old_generation_are_ignored(store):
    hub = FakeHub(token_delay=0.02)
    session, page = await make(store, hub)
    try:
        await session.on_text_event({"type": "text", "text": "one"})
        await page.wait("reply_end")
        llm = hub.last("llm")
        await session.on_text_event({"type": "text", "text": "two"})
        # A stray `cancelled` (a cancel that raced the end of the last generation) and a late delta of it.
        llm.emit({"type": "cancelled", "content": ""})
        llm.emit({"type": "delta", "id": "gen-1", "content": " STALE"})
        end = await page.wait("reply_end", count=2)
        assert end["text"] == hub.reply and "STALE" not in end["text"]
    finally:
        await session.close()


async def test_reply_is_capped_at_max_sentences(store):
    hub = FakeHub(reply="One. Two. Three. Four. Five.", token_delay=0.01)
    session, page = await make(store, hub, max_reply_sentences=2)
    try:
        await session.on_text_event({"type": "text", "text": "count"})
        end = await page.wait("reply_end")
        assert end["text"] == "One. Two."
        assert hub.last("llm").calls("cancel")
        assert [e["text"] for e in page.of("audio")] == ["One.", "Two."]
    finally:
        await session.close()


async def test_speculative_reply_is_held_until_the_turn_end_silence(store):
    hub = FakeHub(token_delay=0.001)
    session, page = await make(store, hub, speculative_silence_ms=150, vad_min_silence_ms=400,
                               turn_end_complete_ms=500)
    try:
        assert hub.last("vad").calls("config")[-1]["min_silence_ms"] == 150
        assert hub.last("vad").calls("config")[-1]["probabilities"] is True
        await speak(session, hub)
        # LLM and TTS start at once, but nothing of the reply reaches the page before the commit.
        await until(lambda: hub.last("tts").calls("text"))
        assert "transcript" not in page.types() and "audio" not in page.types()
        await page.wait("reply_end", timeout=5)
        types = page.types()
        assert types.index("transcript") < types.index("reply_delta") < types.index("audio")
        lat = (await page.wait("latency"))
        # "What is the capital of France?" reads as finished: the turn ends after the turn-end silence.
        assert 390 <= lat["commit_ms"] < 490 and lat["total_ms"] >= lat["commit_ms"]
    finally:
        await session.close()


async def test_speculative_reply_is_dropped_when_the_user_goes_on(store):
    hub = FakeHub(token_delay=0.001)
    session, page = await make(store, hub, speculative_silence_ms=150, vad_min_silence_ms=400)
    try:
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text="I would like")
        await until(lambda: hub.last("llm").calls("generate"))
        # The user was only pausing: speech again before the turn-end silence has passed.
        await user.resumes(at=1.15)
        await until(lambda: session.state == "user_speaking")
        assert "transcript" not in page.types() and "reply_start" not in page.types()
        # The VAD confirms the speech, which then ends: one turn with the whole utterance.
        await user.says(start=1.15, end=1.6, text="a cup of tea")
        end = await page.wait("reply_end", timeout=5)
        assert [e["text"] for e in page.of("transcript")] == ["I would like a cup of tea"]
        # STT heard the rest with the start again: one decode of the whole utterance, not two parts joined.
        assert hub.said_in(hub.last("stt").utterances[-1]) == "I would like a cup of tea"
        assert not page.of("stop_playback") and not page.of("interrupted")
        assert end["text"] == hub.reply
        conv = await store.get_conversation(session.conversation_id)
        assert [(m["role"], m["content"]) for m in conv["messages"]] == [
            ("user", "I would like a cup of tea"), ("assistant", hub.reply)]
    finally:
        await session.close()


async def test_a_noise_blip_during_speculation_still_gets_an_answer(store):
    hub = FakeHub(token_delay=0.001)
    session, page = await make(store, hub, speculative_silence_ms=150, vad_min_silence_ms=400,
                               vad_min_speech_ms=100)
    try:
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text="What time is it")
        hub.transcripts.append("")  # the blip has no words
        await until(lambda: hub.last("llm").calls("generate"))
        await user.resumes(at=1.1)
        # No speech_start follows: after min_speech + 400 ms the utterance ends and is answered.
        end = await page.wait("reply_end", timeout=5)
        assert [e["text"] for e in page.of("transcript")] == ["What time is it"]
        assert end["text"] == hub.reply
    finally:
        await session.close()


async def test_llm_context_window_moves_in_jumps_so_prompts_share_a_prefix(store):
    hub = FakeHub()
    session, page = await make(store, hub, history_messages=6)
    try:
        for i in range(6):
            await session.on_text_event({"type": "text", "text": f"message {i}"})
            await page.wait("reply_end", count=i + 1)
        gens = [g["messages"] for g in hub.last("llm").calls("generate")]
        assert [len(g) for g in gens] == [1, 3, 5, 3, 5, 3]
        # Within a window each prompt extends the previous one (the LLM's KV cache is reused).
        assert gens[1] == gens[2][:3] and gens[3] == gens[4][:3]
        assert gens[-1][-1] == {"role": "user", "content": "message 5"}
    finally:
        await session.close()


async def test_the_reply_so_far_is_saved_while_it_plays(store):
    """A crash or a closed page mid-reply loses nothing: the row is written as audio goes out."""
    hub = FakeHub(reply="First sentence here. Second sentence is a longer one. Third one.", token_delay=0.05)
    session, page = await make(store, hub)
    try:
        await session.on_text_event({"type": "text", "text": "tell me"})
        await page.wait("audio")

        async def assistant_rows() -> list[dict]:
            conv = await store.get_conversation(session.conversation_id)
            return [m for m in conv["messages"] if m["role"] == "assistant"]

        for _ in range(200):  # the row is written right after the chunk is sent
            if assistant := await assistant_rows():
                break
            await asyncio.sleep(0.01)
        assert [(m["content"], m["interrupted"]) for m in assistant] == [("First sentence here.", True)]
        assert assistant[0]["meta"] == {"in_progress": True}
        await page.wait("reply_end")
        conv = await store.get_conversation(session.conversation_id)
        assistant = [m for m in conv["messages"] if m["role"] == "assistant"]
        assert [(m["content"], m["interrupted"]) for m in assistant] == [(hub.reply, False)]
        assert "latency" in assistant[0]["meta"]
    finally:
        await session.close()


async def test_a_page_that_leaves_mid_reply_keeps_what_it_heard(store):
    hub = FakeHub(reply="First sentence here. Second sentence is a longer one. Third one.", token_delay=0.05,
                  ms_per_word=50)
    session, page = await make(store, hub)
    await session.on_text_event({"type": "text", "text": "tell me"})
    await page.wait("audio")
    await asyncio.sleep(0.2)  # the page plays 200 ms of the first chunk (150 ms long), then goes
    await session.close()
    conv = await store.get_conversation(session.conversation_id)
    assistant = [m for m in conv["messages"] if m["role"] == "assistant"]
    assert [(m["content"], m["interrupted"]) for m in assistant] == [("First sentence here.", True)]
    assert assistant[0]["meta"]["reason"] == "session closed"


async def test_unfinished_words_hold_the_turn_longer(store):
    hub = FakeHub(token_delay=0.001)
    session, page = await make(store, hub, speculative_silence_ms=150, vad_min_silence_ms=400,
                               turn_end_complete_ms=250, turn_end_incomplete_ms=900)
    try:
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text="I would like to know,")
        lat = await page.wait("latency", timeout=5)
        assert 890 <= lat["commit_ms"] < 1100
        await user.says(start=4.0, end=4.6, text="Thank you.")
        lat = await page.wait("latency", count=2, timeout=5)
        assert 240 <= lat["commit_ms"] < 350
    finally:
        await session.close()


async def test_a_page_that_leaves_while_the_finished_reply_still_plays_keeps_only_what_it_heard(store):
    hub = FakeHub(reply="First sentence here. Second sentence is a longer one. Third one.", token_delay=0.001,
                  ms_per_word=400)
    session, page = await make(store, hub)
    await session.on_text_event({"type": "text", "text": "tell me"})
    await page.wait("reply_end")  # all of it generated and sent; about 4 s of it still to play
    await session.close()
    conv = await store.get_conversation(session.conversation_id)
    assistant = [m for m in conv["messages"] if m["role"] == "assistant"]
    assert len(assistant) == 1 and assistant[0]["interrupted"] is True
    assert assistant[0]["content"] != hub.reply and hub.reply.startswith(assistant[0]["content"])
    assert assistant[0]["meta"]["reason"] == "session closed"


async def test_a_noise_after_the_pause_does_not_throw_the_prepared_reply_away(store):
    hub = FakeHub(token_delay=0.001)
    session, page = await make(store, hub, speculative_silence_ms=150, vad_min_silence_ms=400)
    try:
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text="What time is it?")
        await until(lambda: hub.last("llm").calls("generate"))
        # A breath the VAD takes for speech, with no words in it: the reply prepared for the question
        # is held back, then goes out as it was; it is not made again.
        await user.says(start=1.2, end=1.45, text="")
        end = await page.wait("reply_end", timeout=5)
        assert end["text"] == hub.reply
        assert len(hub.last("llm").calls("generate")) == 1
        assert [e["text"] for e in page.of("transcript")] == ["What time is it?"]
        assert not page.of("interrupted") and not page.of("stop_playback")
    finally:
        await session.close()


async def test_partials_of_an_utterance_sent_again_whole_are_not_joined_to_its_first_part(store):
    """The first part's final comes while the user is still speaking: it is held. The partials of the rest are
    of the whole utterance (its audio went to STT again), so the words the reply is prepared with are theirs."""
    hub = FakeHub()
    session, page = await make(store, hub)
    fake_stt, fake_vad, fake_llm = hub.last("stt"), hub.last("vad"), hub.last("llm")
    fake_stt.answers = False  # STT answers only when told (a slow decode)
    ends = fake_stt.utterances
    try:
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0)
        await user._feed_until(1.3)
        fake_vad.emit(vad.SpeechStart(timestamp=1.3))
        await until(lambda: session.state == "user_speaking", what="speech again")
        await user._feed_until(1.6)
        fake_stt.emit(stt.Final(text="What is the capital", language="en", duration=0.6, processing_ms=900.0))
        await until(lambda: "What is the capital" in [e["text"] for e in page.of("partial")], what="the held part")
        before = len(fake_llm.prefilled)
        fake_stt.emit(stt.Partial(text="What is the capital of", audio_seconds=1.5))
        await until(lambda: len(fake_llm.prefilled) > before, what="the partial's prefill")
        assert fake_llm.prefilled[-1][-1] == {"role": "user", "content": "What is the capital of"}
        await user._feed_until(1.9)
        fake_vad.emit(vad.SpeechEnd(timestamp=1.8, start=1.3, duration=0.5))
        await until(lambda: len(ends) == 2, what="the second end")
        assert len(ends[1]) // 2 > 1.3 * 16000  # the rest went with the first part's audio again
        fake_stt.emit(stt.Final(text="What is the capital of France?", language="en", duration=1.5,
                                processing_ms=900.0))
        transcript = await page.wait("transcript")
        assert transcript["text"] == "What is the capital of France?"
        await page.wait("reply_end")
    finally:
        await session.close()


@pytest.mark.parametrize("again", [True, False], ids=["sent-again-whole", "decoded-alone"])
async def test_words_after_a_short_stop_are_kept_when_the_first_final_comes_late(store, monkeypatch, again):
    """The user stops, STT is still writing that part's words, and they go on and stop again: two ends are in
    flight. In a browser run the first final took the second end's place and was answered alone, and the
    second final, with the words said after the stop, was dropped (nothing was waiting for it).

    The second part goes to STT with the first part's audio again, so its final is the whole utterance's and
    replaces the first (``sent-again-whole``); where that audio is no longer kept the second part is decoded
    alone and its words joined (``decoded-alone``)."""
    if not again:
        monkeypatch.setattr(recognition, "REDECODE_MAX_S", 0)
    hub = FakeHub()
    session, page = await make(store, hub)
    fake_stt = hub.last("stt")
    fake_stt.answers = False  # STT answers only when told (a slow decode)
    sent = fake_stt.utterances
    try:
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0)
        await user.says(start=1.3, end=1.9)
        await until(lambda: len(sent) == 2, what="both ends")
        # The first part with its pre-roll; the second from the same sample on, or only with its own.
        first_n, second_n = (len(pcm) // 2 for pcm in sent)
        assert first_n >= 0.6 * 16000 and (second_n > 1.3 * 16000 if again else second_n < first_n)
        second = "What is the capital of France?" if again else "of France?"
        for text in ("What is the capital", second):
            fake_stt.emit(stt.Final(text=text, language="en", duration=0.6, processing_ms=900.0))
        transcript = await page.wait("transcript")
        await page.wait("reply_end")
        assert transcript["text"] == "What is the capital of France?"
        assert len(page.of("transcript")) == 1
        messages = (await store.get_conversation(session.conversation_id))["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["What is the capital of France?"]
    finally:
        await session.close()
