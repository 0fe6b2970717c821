"""Random turn-taking over in-process fakes: whatever the user and the page do, in whatever order and timing,
the session settles, stays answerable, logs no error and keeps a history that says what happened.

Each seed is one conversation of random actions: speech (real words, an acknowledgement, a cough with no
words, a pause and more words) at any moment of a reply, typed messages over a reply, the page's playback
reports (late, early, twice), the LLM or TTS service dying, and waits of random length.

The hang this was written after (a barge-in cancelling a reply while it saved its row left the store's one
connection checked out: test_store) showed only as a rare timeout in one scripted test; with the store as it
was, 1 of 40 seeds here hung (seed 32). ``CHAOS_SEEDS=100`` runs more (100 passed, 2026-12-01).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random

import pytest
from rvchat_app.testing import FakeHub, ScriptedUser

from .test_session import make

SEEDS = int(os.environ.get("CHAOS_SEEDS", "4"))
REPLY = "First sentence here. Second sentence is a longer one. Third one is the end."
WORDS = ["What about Berlin?", "and then the weather", "Mm-hmm.", "Okay.", "", "Wait, stop.", "Tell me more."]


async def answer_stops(session, page, answered: set[int], rng: random.Random) -> None:
    """As the page does: each stop_playback is answered with what it played (here, a random amount)."""
    for stop in page.of("stop_playback"):
        if stop["turn"] not in answered and rng.random() < 0.9:  # now and then the report never comes
            answered.add(stop["turn"])
            await session.on_text_event({"type": "playback", "turn": stop["turn"],
                                         "played_ms": rng.choice([0, 120, 450, 2000])})


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_random_turn_taking_settles_and_the_session_goes_on(store, seed, caplog):
    rng = random.Random(seed)
    hub = FakeHub(reply=REPLY, token_delay=rng.choice([0.002, 0.01, 0.03]), ms_per_word=rng.choice([60, 150]))
    session, page = await make(store, hub, speculative_silence_ms=rng.choice([0, 200]))
    user = ScriptedUser(session, hub)
    answered: set[int] = set()
    actions = []
    try:
        for _ in range(14):
            action = rng.choice(["speak", "speak", "on_audio", "on_audio", "text", "wait", "wait", "resume",
                                 "report", "kill"])
            actions.append(action)
            if action == "on_audio":  # the moment a chunk reaches the page (its row is being saved)
                audio = len(page.of("audio"))
                with contextlib.suppress(TimeoutError):
                    await page.wait("audio", count=audio + 1, timeout=1.0)
                action = "speak"
            if action == "speak":
                start = user.t + rng.uniform(0.05, 1.0)
                await user.says(start=start, end=start + rng.uniform(0.25, 1.5), text=rng.choice(WORDS))
            elif action == "resume":
                await user.resumes(at=user.t + rng.uniform(0.05, 0.4), chunks=rng.choice([1, 2, 3]))
            elif action == "kill":  # the LLM or the TTS service dies (mid-reply or not) and comes back
                hub.last(rng.choice(["llm", "tts"])).kill()
            elif action == "text":
                await session.on_text_event({"type": "text", "text": rng.choice(["Hi.", "What time is it?"])})
            elif action == "report" and page.of("audio"):
                turn = page.of("audio")[-1]["turn"]
                await session.on_text_event({"type": "playback", "turn": turn,
                                             "played_ms": rng.uniform(0, 900)})
            await asyncio.sleep(rng.uniform(0, 0.5) if action == "wait" else rng.uniform(0, 0.08))
            await answer_stops(session, page, answered, rng)

        # It settles: no turn left half-done, the state back to listening.
        async def settled() -> bool:
            await answer_stops(session, page, answered, rng)
            reply = session.reply
            return session.state == "listening" and (reply is None or reply.ended)

        await until_async(settled, 20, f"seed {seed}: the session to settle after {actions}")
        for name in ("vad", "stt", "llm", "tts"):
            await asyncio.wait_for(session.links[name].up_event.wait(), 10)
        # It goes on: a typed question is answered, whole.
        await session.on_text_event({"type": "text", "text": "Are you still there?"})
        asked = await page.wait("transcript", text="Are you still there?")
        end = await page.wait("reply_end", turn=asked["turn"], timeout=10)
        assert end["text"] == REPLY and not end.get("error"), end
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, (seed, actions, errors)
        # The history says what happened: no empty user message, and every reply row follows a user row.
        messages = (await store.get_conversation(session.conversation_id))["messages"]
        assert all(m["content"].strip() for m in messages if m["role"] == "user"), messages
        assert messages[0]["role"] == "user" and messages[-1]["role"] == "assistant", messages
    finally:
        await session.close()


async def until_async(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
