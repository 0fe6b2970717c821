"""Several conversations on the embedded model: copies of it, each keeping its conversation's prompt
cache, and a gate that lets a new reply's first sentence go before another reply's later tokens."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from rvchat_common.inference import InferenceQueue
from rvchat_llm.providers.base import ChatOptions, Delta, Final
from rvchat_llm.providers.local import LocalProvider, _Instance, conversation_of
from rvchat_llm.settings import Settings

STORY = [{"role": "user", "content": "Tell me a long story about a brave little dragon."}]
# With the service's system prompt, as the engine sends it: bare, the model may answer in French.
QUESTION = [{"role": "system", "content": Settings().system_prompt},
            {"role": "user", "content": "What is the capital of France?"}]


def two_copies(**settings) -> LocalProvider:
    provider = LocalProvider(Settings(instances=2, **settings), InferenceQueue(8))
    provider.load()
    return provider


async def _run(provider: LocalProvider, messages, max_tokens: int) -> str:
    text = ""
    async for item in provider.stream_chat(messages, ChatOptions(model="m", temperature=0.0,
                                                                 max_tokens=max_tokens)):
        if isinstance(item, Delta):
            text += item.content
        else:
            assert isinstance(item, Final)
    return text


async def _until_free(provider: LocalProvider) -> None:
    """Every copy back in the pool (a copy is given back just after the reply's last item)."""
    deadline = time.monotonic() + 10
    while len(provider._free) != len(provider._instances) or provider.queue.busy:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


@pytest.mark.models
async def test_a_new_replys_first_sentence_goes_before_another_replys_later_tokens():
    # No sentence cap and no guard: the story runs to max_tokens, so it is still writing when the
    # question comes.
    provider = two_copies(max_sentences=0, guard=False)
    gate = provider._gate
    steps: list[tuple[int, int]] = []  # (generation, phase) of every token, in the order computed
    step = gate.step

    def recording(key, stop=None):
        steps.append((key[1], key[0]))  # called by the generation's own thread after each token
        return step(key, stop)

    gate.step = recording  # type: ignore[method-assign]
    story = asyncio.create_task(_run(provider, STORY, 160))
    while (0, 1) not in steps:  # the story's first sentence is out
        await asyncio.sleep(0.005)
    answer = await _run(provider, QUESTION, 40)
    told = await story
    assert "paris" in answer.lower() and len(told.split()) > 40
    # From the question's first token to the end of its first sentence, the story computed nothing;
    # it went on afterwards.
    first = steps.index((1, 0))
    last = max(i for i, (gen, _) in enumerate(steps) if gen == 1)
    sentence_done = steps.index((1, 1)) if (1, 1) in steps else last + 1
    assert all(gen == 1 for gen, _ in steps[first:sentence_done])
    assert any(gen == 0 for gen, _ in steps[sentence_done:])
    assert gate.yields >= 1


@pytest.mark.models
async def test_each_conversation_keeps_its_copy_and_prompt_cache():
    provider = two_copies()
    one = [{"role": "user", "content": "Name a fruit that is red."}]
    two = [{"role": "user", "content": "Say something about the sea."}]
    a = await _run(provider, one, 20)
    await _until_free(provider)
    b = await _run(provider, two, 20)
    await _until_free(provider)
    # Each next turn finds its own first turn cached in one of the copies, and reuses that copy.
    for first, answer, follow in ((one, a, "And a yellow one?"), (two, b, "And the sky?")):
        first_prompt = len(provider._tokens(first))
        messages = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": follow}]
        prompt = provider._tokens(messages)
        mine = max(provider._instances, key=lambda inst: inst.cached(prompt))
        assert mine.cached(prompt) >= first_prompt - 1, "the conversation's first turn is not cached"
        await _run(provider, messages, 12)
        await _until_free(provider)
        assert mine.cached(provider._tokens(messages)) >= len(prompt) - 1  # served on that copy


@pytest.mark.models
async def test_more_conversations_than_copies_wait_their_turn():
    provider = two_copies()
    texts = await asyncio.gather(*(_run(provider, [{"role": "user", "content": f"Count to {n}."}], 12)
                                   for n in (3, 4, 5)))
    assert all(texts)
    await _until_free(provider)


# --- which copy a generation takes (no model: only the caches matter) --------------------------
def _copy(tokens: list[int], conversation: tuple[str, ...] | None, last_used: int = 0) -> _Instance:
    inst = _Instance.__new__(_Instance)
    inst.llm = SimpleNamespace(_input_ids=np.array(tokens, dtype=np.intc))
    inst.last_used, inst.stop, inst.conversation = last_used, None, conversation
    return inst


def _pool(*copies: _Instance, free: tuple[_Instance, ...] | None = None) -> LocalProvider:
    provider = LocalProvider.__new__(LocalProvider)
    provider._pool = threading.Condition()
    provider._instances = list(copies)
    provider._free = list(copies if free is None else free)
    provider._uses = iter(range(100, 200))
    return provider


SYSTEM = list(range(40))  # the system prompt every conversation starts with
A = SYSTEM + list(range(100, 300))  # conversation A's last prompt and reply, in a copy used just now
OLD = SYSTEM + list(range(500, 900))  # a long conversation that has not spoken for a while
CONV_A = conversation_of([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi, I'm A."},
                          {"role": "assistant", "content": "Hello A."}, {"role": "user", "content": "More."}])


def test_a_conversation_is_its_system_prompt_and_first_message():
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I'm A."}]
    assert conversation_of(first) == CONV_A == ("Be brief.", "Hi, I'm A.")
    assert conversation_of([{"role": "user", "content": "Hi, I'm B."}]) != CONV_A


def test_a_new_conversation_takes_the_copy_idle_longest():
    a, old = _copy(A, CONV_A, last_used=9), _copy(OLD, ("Be brief.", "Old"), last_used=2)
    # A shares more than the system prompt with it by chance: still the one idle longest.
    assert _pool(a, old)._take(A[:60] + [7, 8, 9], ("Be brief.", "New"), threading.Event()) is old


def test_a_conversation_takes_its_own_copy():
    a, old, fresh = _copy(A, CONV_A, 9), _copy(OLD, ("Be brief.", "Old"), 2), _copy(SYSTEM + [1, 2], None)
    assert _pool(fresh, old, a)._take(A + [5, 6], CONV_A, threading.Event()) is a
    # Its speculative reply dropped for a longer one: the same copy.
    assert _pool(fresh, old, a)._take(A[:-30] + [5, 6], CONV_A, threading.Event()) is a


def test_it_waits_for_its_copy_while_a_cancelled_generation_lets_go():
    a, other = _copy(A, CONV_A, 9), _copy(SYSTEM, None)
    provider = _pool(a, other, free=(other,))
    a.stop = threading.Event()
    a.stop.set()  # the dropped speculative reply, stopping within a token
    threading.Timer(0.05, provider._give_back, (a,)).start()
    t0 = time.monotonic()
    assert provider._take(A + [5, 6], CONV_A, threading.Event()) is a
    assert time.monotonic() - t0 < 0.4
    # Still generating (not told to stop): no wait, another copy.
    a2, other2 = _copy(A, CONV_A, 9), _copy(SYSTEM, None)
    a2.stop = threading.Event()
    assert _pool(a2, other2, free=(other2,))._take(A + [5, 6], CONV_A, threading.Event()) is other2
