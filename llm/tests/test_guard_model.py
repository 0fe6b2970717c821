"""The embedded model behind the real LLM service answers in sense: English, no loops, short (issue 15).

A fast subset of bench/answers.py (which runs 56 requests through main_app): 8 requests sent as
main_app sends them (the conversation so far, no system prompt or temperature, max_tokens 80), with
the service's defaults. Then the guard against the real model: a loop it really writes, and a
request for French.
"""

from __future__ import annotations

import httpx
import pytest

from rvchat_common.testing import ServiceProcess
from rvchat_llm.guard import first_repeat, foreign_start, words

pytestmark = pytest.mark.models

# (request, follow-up or None): facts, a how-to, small talk, and a follow-up that needs the first turn.
CONVERSATIONS = [
    ("What is the capital of France?", "And of Italy?"),
    ("How many legs does a spider have?", None),
    ("How do I boil an egg?", None),
    ("How can I save money on groceries?", None),
    ("Tell me a joke.", None),
    ("My name is Anna.", "What is my name?"),
]
MAX_WORDS = 60  # what a voice can say in about 20 s


def generate(url: str, messages: list[dict], **extra) -> str:
    r = httpx.post(url + "/generate", json={"messages": messages, "max_tokens": 80, **extra}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["message"]["content"]


def test_everyday_requests_get_short_english_replies_without_loops(llm_service):
    asked = 0
    for first, follow_up in CONVERSATIONS:
        history: list[dict] = []
        for text in (first, follow_up):
            if text is None:
                continue
            history.append({"role": "user", "content": text})
            reply = generate(llm_service.url, history)
            history.append({"role": "assistant", "content": reply})
            asked += 1
            assert reply.strip(), f"{text!r}: silence"
            assert foreign_start(reply) is None, f"{text!r}: not English: {reply!r}"
            assert first_repeat(reply) is None, f"{text!r}: loops: {reply!r}"
            assert len(words(reply)) <= MAX_WORDS, f"{text!r}: {len(words(reply))} words: {reply!r}"
    assert asked == 8


@pytest.fixture(scope="module")
def raw_settings_llm():
    """Two services with the model's raw sampling (no repeat penalty, no sentence limit): one
    guarded, one not, so the guard is what differs."""
    raw = {"LLM_PROVIDER": "local", "LLM_REPEAT_PENALTY": "1.0", "LLM_MAX_SENTENCES": "0"}
    on = ServiceProcess("rvchat_llm", "LLM_", raw)
    off = ServiceProcess("rvchat_llm", "LLM_", {**raw, "LLM_GUARD": "false"})
    try:
        yield on.start(), off.start()
    finally:
        on.stop()
        off.stop()


# Greedy SmolLM2-135M loops on this one ("... I am a child, I am a child, I am a child, ...").
LOOPING = [{"role": "user", "content": "What's a good way to remember people's names?"}]
OLD_PROMPT = "You are a helpful voice assistant. Answer directly in one or two short English sentences."


def test_the_guard_cuts_a_loop_the_model_really_writes(raw_settings_llm):
    guarded, unguarded = raw_settings_llm
    loop = generate(unguarded.url, LOOPING, system=OLD_PROMPT)
    assert first_repeat(loop) is not None, f"the model no longer loops here: {loop!r}"
    reply = generate(guarded.url, LOOPING, system=OLD_PROMPT)
    assert reply.strip() and first_repeat(reply) is None
    assert loop.startswith(reply.rstrip())  # the good sentences before the loop are kept, as said


def test_a_request_for_french_still_gets_english(raw_settings_llm):
    guarded, unguarded = raw_settings_llm
    french = [{"role": "user", "content": "Quelle est la capitale de la France ?"}]
    system = "Tu es un assistant. Réponds toujours en français."
    assert foreign_start(generate(unguarded.url, french, system=system)) is not None
    reply = generate(guarded.url, french, system=system)
    assert reply.strip() and foreign_start(reply) is None  # a greedy retry, or the fallback
