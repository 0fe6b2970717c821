"""Several conversations on the embedded model: copies of it, each keeping its prompt cache, and
a gate that lets a new reply's first sentence go before another reply's later tokens."""

from __future__ import annotations

import asyncio
import time

import pytest

from rvchat_common.inference import InferenceQueue
from rvchat_llm.guard import sentence_spans
from rvchat_llm.providers.base import ChatOptions, Delta, Final
from rvchat_llm.providers.local import LocalProvider
from rvchat_llm.settings import Settings

pytestmark = pytest.mark.models

STORY = [{"role": "user", "content": "Tell me a long story about a brave little dragon."}]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def two_copies():
    # No sentence cap and no guard: the story runs to max_tokens, so it is still writing when the
    # question comes.
    provider = LocalProvider(Settings(instances=2, max_sentences=0, guard=False), InferenceQueue(8))
    provider.load()
    return provider


async def _run(provider, messages, max_tokens, log, who):
    text = ""
    async for item in provider.stream_chat(messages, ChatOptions(model="m", temperature=0.0,
                                                                 max_tokens=max_tokens)):
        if isinstance(item, Delta):
            text += item.content
            log.append((time.perf_counter(), who, text))
        else:
            assert isinstance(item, Final)
    return text


async def test_a_new_replys_first_sentence_goes_before_another_replys_later_tokens(two_copies):
    provider = two_copies
    log: list = []
    story = asyncio.create_task(_run(provider, STORY, 160, log, "story"))
    while not any(who == "story" and sentence_spans(text, final=False) for _, who, text in log):
        await asyncio.sleep(0.005)
    asked = time.perf_counter()
    answer = await _run(provider, QUESTION, 40, log, "question")
    told = await story
    assert "paris" in answer.lower() and len(told.split()) > 40
    first_sentence = next(t for t, who, text in log
                          if who == "question" and sentence_spans(text, final=False))
    # While the question wrote its first sentence the story was paused (one token may have been in
    # flight), and it went on afterwards.
    meanwhile = [t for t, who, _ in log if who == "story" and asked < t < first_sentence]
    assert len(meanwhile) <= 1, f"the story wrote {len(meanwhile)} tokens meanwhile"
    assert any(who == "story" and t > first_sentence for t, who, _ in log)
    assert provider._gate.yields >= 1


async def test_each_conversation_keeps_its_copy_and_prompt_cache(two_copies):
    provider = two_copies
    one = [{"role": "user", "content": "Name a fruit that is red."}]
    two = [{"role": "user", "content": "Say something about the sea."}]
    a = await _run(provider, one, 20, [], "a")
    b = await _run(provider, two, 20, [], "b")
    # Their next turns each find their own history cached in one of the copies.
    one_next = one + [{"role": "assistant", "content": a}, {"role": "user", "content": "And a yellow one?"}]
    two_next = two + [{"role": "assistant", "content": b}, {"role": "user", "content": "And the sky?"}]
    for messages in (one_next, two_next):
        prompt = provider._tokens(messages)
        best = max(inst.cached(prompt) for inst in provider._instances)
        assert best >= len(provider._tokens(messages[:1])) - 2, "the conversation's first turn is not cached"
        await _run(provider, messages, 12, [], "next")
    await _until_free(provider)


async def _until_free(provider) -> None:
    """Both copies back in the pool (a copy is given back just after the reply's last item)."""
    deadline = time.monotonic() + 10
    while len(provider._free) != 2 or provider.queue.busy:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_more_conversations_than_copies_wait_their_turn(two_copies):
    provider = two_copies
    texts = await asyncio.gather(*(_run(provider, [{"role": "user", "content": f"Count to {n}."}], 12, [], n)
                                   for n in (3, 4, 5)))
    assert all(texts)
    await _until_free(provider)


def test_a_new_conversation_takes_a_copy_no_other_conversation_needs():
    from types import SimpleNamespace

    import numpy as np

    from rvchat_llm.providers.local import _Instance

    def copy(tokens: list[int]) -> _Instance:
        inst = _Instance.__new__(_Instance)  # no model: only the cache matters here
        inst.llm = SimpleNamespace(_input_ids=np.array(tokens, dtype=np.intc))
        return inst

    system = list(range(40))
    a_history = system + list(range(100, 300))  # conversation A's last prompt and reply
    a, warm = copy(a_history), copy(system[:5])
    provider = LocalProvider.__new__(LocalProvider)
    provider._pool_lock = __import__("threading").Lock()
    # A new conversation shares only the system prompt with A's copy: it takes the other one ...
    provider._free = [a, warm]
    assert provider._take(system + [7, 8, 9]) is warm
    # ... and A's next turn finds its own copy.
    provider._free = [warm, a]
    assert provider._take(a_history + [5, 6]) is a
