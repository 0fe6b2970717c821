"""Backchannels end to end: main_app over the four real services, real recordings played into the mic
while a real reply plays. An acknowledgement or a sound without words does not cancel the reply (it
pauses, then plays on to the end); a real utterance interrupts it and is answered.

The clips are tests/data/speech/backchannel/ (see its README: a real "uh" and "right" cut from
recordings, Piper saying "mm-hm", "okay", "yeah"); bench/backchannel.py measures the same over many
replies.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from rvchat_app.loopback import LoopbackPage
from rvchat_app.testing import app_env, load_pcm16, speech_start_seconds
from rvchat_common.testing import SPEECH_DIR, ServiceProcess, speech_sample, wer

pytestmark = pytest.mark.models

CLIPS = [json.loads(line) for line in (SPEECH_DIR / "backchannel" / "manifest.jsonl").read_text().splitlines()]
QUESTION = "Tell me about the moon."


# Silero's speech probability over each clip (0.5 s of silence around it), at the 0.7 threshold the VAD
# uses while the assistant speaks: Piper's three clips hold it 352-512 ms (over the 200 ms minimum speech,
# so they always pause the reply), the cut "right" 160 ms (it pauses the reply in some runs), the "uh"
# never passes 0.06 (the VAD does not take it for speech; the reply plays on untouched).
MUST_PAUSE = {"piper_mmhmm.wav", "piper_okay.wav", "piper_yeah.wav"}
NEVER_PAUSES = {"uh_mfa_cold.wav"}


@pytest.fixture(scope="module")
def app(services, tmp_path_factory):
    """main_app over the shared services, without the echo guard: this page client plays no echo into
    its mic (test_echo covers the guard), and the guard's learning would add its own variable delay to
    when speech over the reply is heard."""
    env = app_env(services, tmp_path_factory.mktemp("bc") / "rvchat.sqlite3", APP_ECHO_GUARD="false")
    with ServiceProcess("rvchat_app", "APP_", env) as proc:
        yield proc


async def open_page(app) -> LoopbackPage:
    return await LoopbackPage.open(app.ws_url, None)  # a page with headphones: no echo in its mic


def playing(page: LoopbackPage, turn: int) -> bool:
    now = page.now_sample()
    return page.paused is None and any(s <= now < e for s, e, t in page.speaker.turn_of if t == turn)


async def reply_playing(page: LoopbackPage) -> int:
    """Ask for a spoken reply; its turn, once its first chunk is coming out of the speaker."""
    turn = (await page.ask(QUESTION))["turn"]
    while not playing(page, turn):
        await asyncio.sleep(0.01)
    return turn


def talk(page: LoopbackPage, pcm: bytes) -> float:
    """Say ``pcm`` into the mic now; the mic-clock second its speech starts."""
    at = page.now_s() + 0.05
    page.talk(pcm, at)
    return at + speech_start_seconds(pcm)


async def history(app, page: LoopbackPage) -> list[dict]:
    cid = (await page.wait_for(lambda e: e["type"] == "conversation_created", timeout=5))["id"]
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{app.url}/api/conversations/{cid}")).json()["messages"]


@pytest.mark.parametrize("clip", CLIPS, ids=[c["file"] for c in CLIPS])
async def test_an_acknowledgement_or_a_noise_does_not_cancel_the_reply(app, clip):
    page = await open_page(app)
    try:
        turn = await reply_playing(page)
        pcm = load_pcm16(speech_sample(f"backchannel/{clip['file']}"))
        onset = talk(page, pcm)
        end = await page.wait_for(lambda e: e["type"] == "reply_end" and e["turn"] == turn, timeout=60)
        # Its words (or the resume window) decide within 3 s of the clip; then the reply plays out.
        await page.until_played(turn)
        while page.now_s() < onset + len(pcm) / 32000 + 3.0 or page.paused is not None:
            await asyncio.sleep(0.05)
        assert not page.of("stop_playback") and not page.of("interrupted"), page.events
        assert [e["turn"] for e in page.of("transcript")] == [turn]  # not a turn: not answered
        pauses, resumes = page.of("pause_playback", turn), page.of("resume_playback", turn)
        assert len(pauses) == len(resumes), page.events  # every pause let go
        if clip["file"] in MUST_PAUSE:
            assert pauses, "the VAD did not hear the clip as speech"
        if clip["file"] in NEVER_PAUSES:
            assert not pauses
        for resume in resumes:
            assert resume["reason"] == "backchannel", resume  # the words were in before the window
        # Every chunk played, to its end: nothing of the reply was lost in the pause.
        played = page.speaker.played_ms(turn, page.now_sample())
        assert played == pytest.approx(sum(a["duration_ms"] for a in page.of("audio", turn)), abs=20)
        messages = await history(app, page)
    finally:
        await page.close()
        await page.ws.close()
    assert [(m["role"], m["interrupted"]) for m in messages] == [("user", False), ("assistant", False)]
    assert messages[1]["content"] == end["text"]


async def test_a_real_utterance_over_the_reply_interrupts_it_and_is_answered(app):
    clip = "mfa_thoughts.wav"
    page = await open_page(app)
    try:
        turn = await reply_playing(page)
        talk(page, load_pcm16(speech_sample(clip)))
        stop = await page.wait_for(lambda e: e["type"] == "stop_playback" and e["turn"] == turn, timeout=30)
        interrupted = await page.wait_for(lambda e: e["type"] == "interrupted" and e["turn"] == turn, timeout=10)
        transcript = await page.wait_for(lambda e: e["type"] == "transcript" and e["turn"] != turn, timeout=30)
        await page.wait_for(lambda e: e["type"] == "reply_end" and e["turn"] == transcript["turn"], timeout=60)
        pause = page.of("pause_playback", turn)
        assert pause and pause[0]["_t"] < stop["_t"] and not page.of("resume_playback")
        # What was heard is what played before the pause, not what was sent or generated.
        spoken, full = interrupted["spoken_text"], interrupted["full_text"]
        assert len(spoken) < len(full) and full.startswith(spoken.rstrip("."))
        assert not [a for a in page.of("audio", turn) if a["_t"] > stop["_t"]]
        assert wer("i have a thousand thoughts about that thing", transcript["text"]) <= 0.3, transcript
        messages = await history(app, page)
    finally:
        await page.close()
        await page.ws.close()
    assert [(m["role"], m["interrupted"]) for m in messages][:3] == [
        ("user", False), ("assistant", True), ("user", False)]
    assert messages[1]["content"] == spoken and messages[2]["content"] == transcript["text"]
