"""Backchannels and false interruptions over in-process fakes (fast, no models).

Speech over a reply pauses it; its words decide: an acknowledgement or no words resume it where it
stopped, real words interrupt it and are answered. test_e2e_backchannel.py does the same with the
real services and real recordings.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from rvchat_app.backchannel import DEFAULT_WORDS, Backchannels, same_words, words_after, words_of
from rvchat_app.playout import Playout
from rvchat_app.testing import FakeHub, ScriptedUser, until
from rvchat_common.protocol import stt, vad

from .test_session import make, speak

LONG = "First sentence here. Second sentence is a longer one. Third one is the end."


# ------------------------------------------------------------------ the matcher
@pytest.mark.parametrize("text", ["Mm-hmm.", "mm hm", "Mhm.", "Hmm?", "Uh-huh.", "Yeah.", "Okay, okay.",
                                  "Yeah, okay.", "Right.", "Sure!", "I see.", "Oh, I see.", "OK", "All right.",
                                  "Uh", "yeah [laughs]"])
def test_acknowledgements_in_whispers_spellings(text):
    assert Backchannels(DEFAULT_WORDS).is_acknowledgement(text)


@pytest.mark.parametrize("text", ["Wait, stop.", "No.", "What about Berlin?", "Okay, but why?",
                                  "Yeah, tell me about the weather.", "yeah yeah yeah okay sure", "", "[coughs]",
                                  "Right now please."])
def test_real_words_are_not_acknowledgements(text):
    assert not Backchannels(DEFAULT_WORDS).is_acknowledgement(text)


@pytest.mark.parametrize(("text", "start", "added"), [
    ("What is the capital of France? Mm-hmm.", "What is the capital of France?", "mhm"),
    ("what is the capital of france", "What is the capital of France?", ""),
    ("What's the capital of France? Okay.", "What is the capital of France?", None),  # heard otherwise
    ("What is the capital", "What is the capital of France?", None),
])
def test_the_words_said_after_an_utterance_decoded_again(text, start, added):
    assert words_after(text, start) == added
    assert same_words(text, start) is (added == "")


def test_the_list_is_configurable():
    acks = Backchannels("oui, d'accord, ja")
    assert acks.is_acknowledgement("Oui.") and acks.is_acknowledgement("D'accord!")
    assert not acks.is_acknowledgement("Okay.")
    assert words_of("Mm-Hmm, uh-huh (coughs)") == ("mhm", "uhhuh")


# ------------------------------------------------------------------ the play clock
async def test_the_play_clock_stands_still_while_paused():
    async def nothing(*_a) -> None:
        return None

    playout = Playout(1, nothing, nothing, on_first_audio=nothing)
    await playout.audio("One two three.", b"\0\0" * 16000, 16000)  # 1 s
    t0 = playout.play_start
    playout.pause(t0 + 0.4)
    assert playout.estimated_played_ms(t0 + 3.0) == pytest.approx(400)
    assert playout.playing(t0 + 3.0)  # 600 ms still to play, once resumed
    await playout.audio("Four.", b"\0\0" * 8000, 16000)  # 0.5 s arriving during the pause queues behind
    assert playout.resume(t0 + 2.4) == pytest.approx(2.0)
    assert playout.estimated_played_ms(t0 + 2.9) == pytest.approx(900)
    assert playout.play_end == pytest.approx(t0 + 2.4 + 0.6 + 0.5)


# ------------------------------------------------------------------ the session
def stt_without_answer(hub: FakeHub):
    """STT from now on takes the speech but sends no words for it (slow, or they come later by hand)."""
    fake_stt = hub.last("stt")
    fake_stt.answers = False
    return fake_stt


async def reply_playing(session, page, hub) -> ScriptedUser:
    """The user has asked and heard the reply's first word (300 ms of audio by the play clock)."""
    user = await speak(session, hub)
    await page.wait("audio", count=2)
    await asyncio.sleep(0.35)
    return user


@contextlib.asynccontextmanager
async def conversation(store, *, token_delay: float = 0.01, ms_per_word: int = 300, **settings):
    """A session over fakes whose reply is ``LONG`` (``ms_per_word`` of audio a word), closed after."""
    hub = FakeHub(reply=LONG, token_delay=token_delay, ms_per_word=ms_per_word)
    session, page = await make(store, hub, **settings)
    try:
        yield hub, session, page
    finally:
        await session.close()


async def history(store, session, role: str | None = None) -> list[dict]:
    """The conversation's stored messages (``role``'s only, if given)."""
    messages = (await store.get_conversation(session.conversation_id))["messages"]
    return [m for m in messages if role is None or m["role"] == role]


async def paused_then_resumed(page) -> tuple[dict, dict]:
    """The ``pause_playback`` the speech caused, then the ``resume_playback`` that let the reply go on."""
    pause = await page.wait("pause_playback")
    return pause, await page.wait("resume_playback")


async def assert_resumed_to_the_end(page) -> None:
    """The paused reply went on to its end, whole, and was never interrupted."""
    assert (await page.wait("reply_end"))["text"] == LONG
    assert not page.of("stop_playback") and not page.of("interrupted")


@pytest.mark.parametrize(("text", "end", "reason"), [
    ("Mm-hmm.", 3.4, "backchannel"),
    ("", 3.3, "no_words"),  # a cough: the VAD heard it, STT found no words
])
async def test_an_acknowledgement_or_no_words_pauses_then_resumes_the_reply(store, text, end, reason):
    async with conversation(store) as (hub, session, page):
        user = await reply_playing(session, page, hub)
        await user.says(start=3.0, end=end, text=text)
        pause, resume = await paused_then_resumed(page)
        assert resume == {"type": "resume_playback", "turn": pause["turn"], "reason": reason,
                          "text": text, "paused_ms": resume["paused_ms"]}
        after_pause = page.types()[page.types().index("pause_playback"):]
        assert after_pause.index("speech_end") < after_pause.index("resume_playback")
        await assert_resumed_to_the_end(page)
        # Not cancelled, not answered, not a turn: one generation, one transcript.
        assert not hub.last("llm").calls("cancel") and not hub.last("tts").calls("cancel")
        assert len(hub.last("llm").calls("generate")) == 1
        assert [e["text"] for e in page.of("transcript")] == [hub.transcript]
        await until(lambda: session.state == "speaking", what="speaking again after the resume")
        assert [(m["role"], m["content"], m["interrupted"]) for m in await history(store, session)] == [
            ("user", hub.transcript, False), ("assistant", LONG, False)]


async def test_real_words_interrupt_the_paused_reply_and_are_answered(store):
    async with conversation(store) as (hub, session, page):
        user = await reply_playing(session, page, hub)
        hub.reply = "Berlin is the capital of Germany."
        await user.says(start=3.0, end=3.8, text="Wait, what about Berlin?")
        pause = await page.wait("pause_playback")
        # The page paused after 1.2 s of the reply (the first sentence, 3 words x 300 ms, and one word).
        await session.on_text_event({"type": "playback", "turn": pause["turn"], "played_ms": 1200})
        stop = await page.wait("stop_playback")
        await session.on_text_event({"type": "playback", "turn": stop["turn"], "played_ms": 1200})
        ev = await page.wait("interrupted")
        assert ev["turn"] == pause["turn"] and ev["spoken_text"] == "First sentence here. Second"
        assert not page.of("resume_playback")
        assert hub.last("llm").calls("cancel") or hub.last("llm").task.done()
        t2 = await page.wait("transcript", count=2)
        assert t2["text"] == "Wait, what about Berlin?"
        await page.wait("reply_end", turn=t2["turn"])
        assert [(m["role"], m["content"]) for m in await history(store, session)] == [
            ("user", hub.transcript), ("assistant", "First sentence here. Second"),
            ("user", "Wait, what about Berlin?"), ("assistant", hub.reply)]


async def test_no_words_within_the_window_resumes_and_late_words_still_interrupt(store):
    async with conversation(store, resume_window_ms=300) as (hub, session, page):
        user = await reply_playing(session, page, hub)
        fake_stt = stt_without_answer(hub)  # STT is slow: its final comes after the window
        await user.says(start=3.0, end=3.8)
        resume = await page.wait("resume_playback", timeout=3)
        assert resume["reason"] == "timeout"
        assert not page.of("stop_playback")
        fake_stt.emit(stt.Final(text="Stop, please.", language="en", duration=0.8, processing_ms=1.0))
        ev = await page.wait("interrupted")
        assert ev["reason"] == "barge-in"
        assert (await page.wait("transcript", count=2))["text"] == "Stop, please."


@pytest.mark.parametrize(("text", "reason"), [("Okay.", "backchannel"), ("", "no_words")])
async def test_an_acknowledgement_while_thinking_keeps_the_reply(store, text, reason):
    """Nothing of the reply has been heard, so the speech goes to STT with the question's audio again (it may be
    the rest of it): the question's words and an "okay" (or nothing more) after them keep the reply."""
    async with conversation(store, token_delay=0.05, ms_per_word=100) as (hub, session, page):
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text=hub.transcript)
        await page.wait("reply_start")
        assert not page.of("audio")
        await user.says(start=1.3, end=1.6, text=text)
        assert (await page.wait("resume_playback"))["reason"] == reason
        assert hub.said_in(hub.last("stt").utterances[-1]) == f"{hub.transcript} {text}".strip()
        assert (await page.wait("reply_end", timeout=10))["text"] == LONG
        assert len(hub.last("llm").calls("generate")) == 1 and not page.of("interrupted")
        assert [m["content"] for m in await history(store, session, "user")] == [hub.transcript]


async def test_a_finished_reply_still_playing_pauses_and_resumes(store):
    async with conversation(store, token_delay=0.001) as (hub, session, page):
        user = await speak(session, hub)
        await page.wait("reply_end")  # all generated; about 4 s still to play
        await user.says(start=2.0, end=2.3, text="Yeah.")
        await page.wait("resume_playback")
        await until(lambda: session.state == "speaking", what="speaking again")
        await session.close()  # the page leaves 0.x s later: what it heard, up to the pause and after
        assistant = await history(store, session, "assistant")
        assert len(assistant) == 1 and assistant[0]["interrupted"] is True
        assert assistant[0]["meta"]["reason"] == "session closed"


async def test_a_page_that_leaves_while_paused_keeps_what_it_heard_before_the_pause(store):
    async with conversation(store, ms_per_word=100) as (hub, session, page):
        user = await speak(session, hub)
        await page.wait("audio", count=2)  # the first sentence (300 ms) and the second (600 ms) are out
        await asyncio.sleep(0.35)
        stt_without_answer(hub)  # still waiting for its words when the page leaves
        await user.says(start=3.0, end=3.2)
        await page.wait("pause_playback")
        await asyncio.sleep(1.0)  # paused: nothing more is heard, however long the page waits
        await session.close()
    assistant = await history(store, session, "assistant")
    assert assistant[0]["interrupted"] is True
    assert assistant[0]["content"].startswith("First sentence here.")
    assert not assistant[0]["content"].startswith("First sentence here. Second sentence is a longer one.")


async def test_backchannel_settings_from_the_page(store):
    async with conversation(store) as (hub, session, page):
        hello = page.of("hello")[0]["config"]
        assert hello["backchannels"] is True and "mm-hm" in hello["backchannel_words"]
        assert hello["resume_window_ms"] == 1500
        await session.on_text_event({"type": "config", "resume_window_ms": 50})
        assert "between" in (await page.wait("error"))["error"]["message"]
        await session.on_text_event({"type": "config", "backchannel_words": ["x" * 41]})
        assert (await page.wait("error", count=2))["error"]["code"] == "invalid_event"
        await session.on_text_event({"type": "config", "backchannel_words": ["oui", "d'accord"],
                                     "resume_window_ms": 800})
        ack = await page.wait("config")
        assert ack["backchannel_words"] == ["oui", "d'accord"] and ack["resume_window_ms"] == 800
        assert ack["backchannels"] is True and ack["threshold"] == 0.5
        # "Okay" is no acknowledgement now: it interrupts.
        user = await reply_playing(session, page, hub)
        await user.says(start=3.0, end=3.3, text="Okay.")
        await page.wait("interrupted")
        # Off: speech onset interrupts at once, before its words are in.
        await session.on_text_event({"type": "config", "backchannels": False})
        assert (await page.wait("config", count=2))["backchannels"] is False
        await page.wait("reply_end", timeout=10)
        await page.wait("audio", count=4)
        hub.last("vad").emit({"type": "speech_start", "timestamp": 9.0})
        await page.wait("stop_playback", count=2)
        assert len(page.of("pause_playback")) == 1


async def loud(hub: FakeHub, at: float, chunks: int) -> None:
    for i in range(chunks):
        hub.last("vad").emit(vad.Probability(timestamp=round(at + i * 0.032, 3), probability=0.9))


async def test_speech_onset_pauses_before_the_vad_confirms_speech(store):
    async with conversation(store) as (hub, session, page):
        user = await reply_playing(session, page, hub)
        await loud(hub, 3.0, 2)  # 64 ms: not yet
        await asyncio.sleep(0.05)
        assert not page.of("pause_playback")
        await loud(hub, 3.1, 3)  # 96 ms above the barge-in threshold: pause now
        await page.wait("pause_playback")
        assert len(page.of("speech_start")) == 1  # the question's: the VAD has not confirmed this one yet
        # The VAD confirms it as speech, and its words are real: a barge-in.
        await user.says(start=3.1, end=3.6, text="Stop, please.")
        await page.wait("interrupted")
        assert len(page.of("pause_playback")) == 1 and not page.of("resume_playback")


async def test_a_sound_the_vad_does_not_confirm_resumes_the_reply(store):
    async with conversation(store) as (hub, session, page):
        await reply_playing(session, page, hub)
        await loud(hub, 3.0, 3)  # a knock: loud for 96 ms, never 200 ms of speech
        _, resume = await paused_then_resumed(page)
        # Not before the VAD could have confirmed speech (minimum speech 200 ms + 250 ms).
        assert resume["reason"] == "no_words" and resume["paused_ms"] >= 440
        await assert_resumed_to_the_end(page)


async def test_a_sound_still_going_on_is_not_taken_for_a_knock(store):
    """Loud past the VAD's minimum speech without its confirmation (a word that dipped under the threshold
    restarts the count): the reply stays paused while the sound goes on, and plays on once it stops."""
    async with conversation(store) as (hub, session, page):
        await reply_playing(session, page, hub)
        await loud(hub, 3.0, 3)
        pause = await page.wait("pause_playback")
        for i in range(25):  # 0.8 s more of it, in real time
            await asyncio.sleep(0.032)
            await loud(hub, 3.1 + i * 0.032, 1)
        assert not page.of("resume_playback")
        resume = await page.wait("resume_playback")
        assert resume["turn"] == pause["turn"] and resume["reason"] == "no_words" and resume["paused_ms"] >= 800
        await assert_resumed_to_the_end(page)


async def test_the_window_waits_for_words_stt_is_still_writing(store):
    async with conversation(store, resume_window_ms=300) as (hub, session, page):
        user = await reply_playing(session, page, hub)
        fake_stt = hub.last("stt")

        # The final comes 0.6 s after the speech's end: twice the window.
        async def slow_end(speech: bool | None = None) -> None:
            fake_stt.buffer.clear()
            asyncio.get_running_loop().call_later(0.6, lambda: fake_stt.emit(stt.Final(
                text="What about Berlin?", language="en", duration=0.8, processing_ms=600.0)))

        fake_stt.end = slow_end
        await user.says(start=3.0, end=3.8)
        await page.wait("interrupted")
        assert not page.of("resume_playback")  # never played on only to be cut off again
        assert (await page.wait("transcript", count=2))["text"] == "What about Berlin?"


async def test_a_reply_that_fails_while_paused_is_resumed_in_the_page(store):
    async with conversation(store, token_delay=0.05) as (hub, session, page):
        user = await speak(session, hub)
        await page.wait("audio")
        hub.last("llm").kill()  # the LLM dies mid-reply, while the user says "okay"
        await user.says(start=3.0, end=3.3, text="Okay.")
        await page.wait("error")
        resume = await page.wait("resume_playback")
        assert resume["turn"] == page.of("pause_playback")[0]["turn"]
        assert not page.of("stop_playback")


async def test_a_message_typed_while_paused_stops_the_paused_reply(store):
    async with conversation(store, token_delay=0.001) as (hub, session, page):
        user = await speak(session, hub)
        await page.wait("reply_end")  # all generated, still playing
        stt_without_answer(hub)  # the speech's words are not in yet
        await user.says(start=2.0, end=2.3)
        await page.wait("pause_playback")
        await session.on_text_event({"type": "text", "text": "Something else."})
        stop = await page.wait("stop_playback")
        assert stop["reason"] == "new message" and stop["turn"] == page.of("pause_playback")[0]["turn"]
        await page.wait("reply_end", count=2)


async def test_words_after_a_pause_that_came_with_the_first_audio_continue_the_utterance(store):
    """The reply's first chunk reached the page just before the user went on (their pause outlasted the turn-end
    hold): no word of it was heard, so their words join the utterance, answered whole in the same message. In
    a browser run they were made a turn of their own, and the unheard reply's words were then joined to the
    user's next utterance, 36 s later."""
    async with conversation(store) as (hub, session, page):
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text=hub.transcript)
        first = await page.wait("transcript")
        await page.wait("audio")  # "First sentence here.": 900 ms, the pause comes within its first word
        await user.says(start=3.0, end=3.8, text="in Paris tomorrow")
        stop = await page.wait("stop_playback")
        await session.on_text_event({"type": "playback", "turn": stop["turn"], "played_ms": 0})
        assert (await page.wait("interrupted"))["spoken_text"] == ""
        whole = await page.wait("transcript", count=2)
        assert whole["text"] == f"{hub.transcript} in Paris tomorrow"
        # One decode of the whole utterance: the rest went to STT with the question's audio again.
        assert hub.said_in(hub.last("stt").utterances[1]) == whole["text"]
        assert whole["message_id"] == first["message_id"]
        await page.wait("reply_end", turn=whole["turn"])
        await asyncio.sleep(0.35)  # its first word played (the user's 26 s of silence is fed faster than real time)
        await user.says(start=30.0, end=30.6, text="Thanks.")  # much later: a turn of its own
        assert (await page.wait("transcript", count=3))["text"] == "Thanks."
        await page.wait("reply_end", count=2)
        assert [m["content"] for m in await history(store, session, "user")] == [
            f"{hub.transcript} in Paris tomorrow", "Thanks."]


async def test_a_stopped_reply_does_not_play_on_for_an_acknowledgement_after_its_question(store):
    """The question decoded again with an "mm-hm" after it (see above) keeps a reply only if it can play on: one
    already stopped cannot, so the whole utterance is answered."""
    async with conversation(store, token_delay=0.05) as (hub, session, page):
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text=hub.transcript)
        await page.wait("reply_start")
        await session.on_text_event({"type": "interrupt"})
        await page.wait("interrupted")
        text = f"{hub.transcript} Mm-hmm."
        await session.on_end_of_turn(text, {"transcript": 0.0}, None, None, continues=True)
        assert (await page.wait("transcript", count=2))["text"] == text
        await page.wait("reply_end", timeout=10)


async def test_words_already_answered_are_not_joined_to_the_next_utterance(store):
    """A word of the reply had played by the clock (so the words over it are a turn of their own), but the
    page says it played nothing: the page's report comes after those words were answered, and must not make
    the user's next utterance a continuation of the interrupted one."""
    async with conversation(store) as (hub, session, page):
        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text=hub.transcript)
        await page.wait("audio")
        await asyncio.sleep(0.5)  # by the clock, "First" has played
        await user.says(start=3.0, end=3.8, text="Wait, what about Berlin?")
        stop = await page.wait("stop_playback")
        second = await page.wait("transcript", count=2)
        assert second["text"] == "Wait, what about Berlin?"
        # A word of the reply was heard: the speech went to STT alone, not with the question's audio again.
        assert hub.said_in(hub.last("stt").utterances[1]) == "Wait, what about Berlin?"
        await session.on_text_event({"type": "playback", "turn": stop["turn"], "played_ms": 0})
        await page.wait("interrupted")
        await page.wait("reply_end", turn=second["turn"])
        await asyncio.sleep(0.35)  # its first word played (the user's 26 s of silence is fed faster than real time)
        await user.says(start=30.0, end=30.6, text="Thanks.")
        assert (await page.wait("transcript", count=3))["text"] == "Thanks."
        await page.wait("reply_end", count=2)
        assert [m["content"] for m in await history(store, session, "user")] == [
            hub.transcript, "Wait, what about Berlin?", "Thanks."]
