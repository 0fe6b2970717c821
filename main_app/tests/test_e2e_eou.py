"""End of turn from the words, end to end: main_app over the four real services, fed at real time a real
recording with a pause in the middle of its sentence (built as bench/turns.py builds its set)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets
from rvchat_app.testing import app_env, events_of, load_pcm16, voice_turn
from rvchat_common.testing import ServiceProcess, speech_sample

pytestmark = pytest.mark.models

CLIP = "ljspeech_LJ001-0008.wav"  # "has never been surpassed."
# Between "been" and "surpassed": the quietest 40 ms of the clip there (RMS 44-107 of 32768 at 0.98-1.02 s).
# bench/turns.py cuts at 0.9 s, Whisper tiny.en's coarse word boundary, which clips the "s" of "surpassed"
# ("has never been past").
CUT_S = 0.99
PAUSE_S = 0.8
# The pause as the VAD hears it is ~0.83 s (bench/results/turns.md): longer than the default 700 ms long hold,
# so these apps hold up to 1200 ms (APP_TURN_END_INCOMPLETE_MS, the configurable maximum); the words "has
# never been" have no punctuation to go by, so the words alone end the turn after 500 ms all the same.
HOLDS = {"APP_TURN_END_INCOMPLETE_MS": "1200", "APP_TURN_END_COMPLETE_MS": "300"}


def paused_clip() -> bytes:
    pcm = np.frombuffer(load_pcm16(speech_sample(CLIP)), dtype="<i2")
    at = int(CUT_S * 16000)
    return np.concatenate([pcm[:at], np.zeros(int(PAUSE_S * 16000), dtype="<i2"), pcm[at:]]).tobytes()


@pytest.fixture(scope="module")
def eou_app(services, tmp_path_factory):
    # The answer takes a median 33 ms, but a whole suite on 2 cores can hold it past the default 300 ms
    # timeout (then the words decide, as the other test shows): here the probability must be used.
    env = app_env(services, tmp_path_factory.mktemp("eou") / "rvchat.sqlite3", APP_TURN_END_EOU_TIMEOUT_MS="3000",
                  **HOLDS)
    with ServiceProcess("rvchat_app", "APP_", env) as proc:
        yield proc


@pytest.fixture(scope="module")
def words_app(services, tmp_path_factory):
    env = app_env(services, tmp_path_factory.mktemp("words") / "rvchat.sqlite3", APP_TURN_END_EOU="false",
                  **HOLDS)
    with ServiceProcess("rvchat_app", "APP_", env) as proc:
        yield proc


async def open_session(app):
    # A test that stops reading mid-reply leaves the client's queue full, and the server's close frame unread
    # behind it: close() would wait its default 10 s for it.
    ws = await websockets.connect(f"{app.ws_url}/ws", max_size=None, close_timeout=1)
    hello = json.loads(await ws.recv())
    while not all(s["up"] for s in hello["services"]["services"].values()):
        msg = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(msg, str) and json.loads(msg)["type"] == "services":
            hello["services"] = json.loads(msg)
    return ws


async def test_a_pause_mid_sentence_does_not_end_the_turn(eou_app):
    ws = await open_session(eou_app)
    try:
        result = await voice_turn(ws, paused_clip(), pad_s=1.5)
    finally:
        await ws.close()
    transcripts = [e["text"] for e in events_of(result, "transcript")]
    # One turn with the words from both sides of the pause, decoded whole: the resumed part goes to STT with
    # the first part's audio again. (Decoded alone from a little before the speech was noticed, the faint
    # "sur" was lost and the turn read "has never been past".)
    assert len(transcripts) == 1, transcripts
    assert transcripts[0].lower().strip(".").split() == ["has", "never", "been", "surpassed"], transcripts
    assert not events_of(result, "interrupted") and result["audio"]


async def test_by_the_words_alone_the_same_pause_ends_the_turn(words_app):
    """The control: without the LLM's probability the same recording is cut off at its pause."""
    ws = await open_session(words_app)
    try:
        result = await voice_turn(ws, paused_clip(), pad_s=1.5, until="transcript")
    finally:
        await ws.close()
    first = events_of(result, "transcript")[0]["text"].lower()
    assert "never" in first and "surpass" not in first, first


async def test_going_on_after_a_committed_turn_is_answered_as_one_decode(words_app):
    """The words alone commit the turn in the pause; the user goes on before a word of its reply has played (on
    this machine the first audio comes later than the pause). The rest goes to STT with the first part's audio
    again, so the whole utterance is one decode, in the first part's message."""
    ws = await open_session(words_app)
    went_on = CUT_S + PAUSE_S  # seconds from the start of the clip, sent at real time
    try:
        result = await voice_turn(ws, paused_clip(), pad_s=1.5)
        first = events_of(result, "transcript")[0]["turn"]
        audio = [e["_t"] for e in events_of(result, "audio") if e["turn"] == first]
        if len(events_of(result, "transcript")) == 1 and audio and audio[0] < went_on:
            # Not this test's case: the reply was playing before the user went on, so the rest is talk over it
            # (heard at the raised barge-in threshold, or a turn of its own), and voice_turn stopped at its
            # reply_end. With the first audio ~0.15 s sooner since the LLM's units are spoken as they are released,
            # this happens in about 1 run in 3 here.
            pytest.skip(f"the first reply's audio came {audio[0]:.2f} s in, before the user went on at {went_on:.2f} s")
        if len(events_of(result, "transcript")) == 1:
            # The first reply's audio came just after the user went on, so it was paused, and its generation
            # ended (reply_end, where voice_turn stops) before the final of the whole utterance. The rest of the
            # clip has been sent since: collect what follows.
            try:
                more = await voice_turn(ws, b"", pad_s=0.0, until="transcript", extra_silence_s=5.0, timeout=20)
                result["events"] += more["events"]
            except TimeoutError:
                pass  # no final of the whole utterance: the assertion below shows what came instead
    finally:
        await ws.close()
    transcripts = events_of(result, "transcript")
    assert len(transcripts) == 2, ([t["text"] for t in transcripts], [(e["type"], round(e["_t"], 2))
                                                                     for e in result["events"]])
    heard = [e["spoken_text"] for e in events_of(result, "interrupted") if e["turn"] == transcripts[0]["turn"]]
    if heard and heard[0]:
        pytest.skip(f"a word of the first reply played before the user went on ({heard[0]!r}): a turn of its own")
    assert transcripts[1]["message_id"] == transcripts[0]["message_id"]
    assert transcripts[1]["text"].lower().strip(".").split() == ["has", "never", "been", "surpassed"], transcripts
