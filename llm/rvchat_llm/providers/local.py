"""llama-cpp-python in this process, with the chat template stored in the GGUF file.

Generation runs on a worker thread holding one of the model queue's slots; tokens reach the
event loop through an asyncio queue. The thread checks a stop flag between tokens,
so a cancel (client gone, WS ``cancel``, barge-in) ends generation within a token
and frees the model. The model slot is held by a background task, not by the
consumer, so a slow reader never keeps the model from other requests.

Several conversations at once: ``instances`` copies of the model (the weights are mapped once;
each copy has its own context, so each keeps the prompt cache of the conversation it served
last; a generation takes the free copy holding its own conversation, else the one idle longest,
see ``_take``). The copies compute ``parallel`` at a time through a :class:`ComputeGate`, token by
token, by priority: a reply that has not finished its first sentence goes before another
reply's later tokens, and replies of the same phase go in arrival order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from rvchat_common.errors import APIError
from rvchat_common.inference import ComputeGate, InferenceQueue
from rvchat_common.models import gguf_model

from ..gguf import model_file
from ..guard import HeldPieces, StreamGuard, sentence_spans
from ..settings import Settings
from ..tools import chosen_name, new_call_id
from .base import ChatOptions, Delta, Final, StreamItem, ToolCallDelta, UpstreamError
from .interrupt import Interrupter
from .local_tools import (
    CALL_OPEN,
    args_grammars,
    call_head,
    decide_grammar,
    name_grammar,
    prompt_messages,
)

log = logging.getLogger("rvchat.llm.local")

# Used only when a GGUF carries no template of its own.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


# The retry of a reply that failed the guard before its first sentence: greedy decoding would write
# the same loop again, so the retry penalises repeats harder than the default. On bench/answers.py
# (old LLM prompt, greedy, repeat 1.0) 3 of 3 retries said something (2 whole, 1 cut after a
# sentence), none fell back; one of them turned a loop into the right answer ("Mars").
RETRY_REPEAT_PENALTY = 1.3

# How long a generation waits for its conversation's copy while a cancelled generation (a dropped
# speculative reply) lets go of it: a cancel ends within a token (~25 ms), evaluating the history
# again on another copy takes 100-500 ms.
RETURN_WAIT_S = 0.5

# A prefill's place in the model queue and at the compute gate: after every generation (0, and the gate's
# 0/1 phases of a reply).
PREFILL_PRIORITY = 9


def conversation_of(messages: list[dict[str, str]]) -> tuple[str, ...]:
    """What tells a conversation's prompts from another's: its system prompt and first message.

    Its next turns keep both, and so does a reply started again with more words once a turn is
    behind it; another conversation has others, and so does this one once its history window has
    moved on (its cached prefix ends at the system prompt then anyway).
    """
    system = tuple(m["content"] for m in messages if m["role"] == "system")
    return (*system, next((m["content"] for m in messages if m["role"] != "system"), ""))


class _Instance:
    """One copy of the model: its own context, KV cache and stop hooks."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        self.llm = llm
        self.interrupt = Interrupter(llm)  # a stop flag also ends prompt evaluation and held-back text
        self.last_used = 0  # when it was last given back (the pool's counter)
        self.stop: threading.Event | None = None  # the stop flag of the generation using it
        self.conversation: tuple[str, ...] | None = None  # whose prompt it holds (``conversation_of``)

    @property
    def returning(self) -> bool:
        """In use by a generation that has been told to stop: free within a token."""
        return self.stop is not None and self.stop.is_set()

    def cached(self, prompt: list[int]) -> int:
        """Tokens of ``prompt`` already in this copy's cache (the prefix it need not evaluate)."""
        ids = self.llm._input_ids
        n = min(len(ids), len(prompt))
        if n == 0:
            return 0
        same = ids[:n] == np.asarray(prompt[:n], dtype=ids.dtype)
        return n if same.all() else int(np.argmin(same))


class LocalProvider:
    name = "local"

    def __init__(self, settings: Settings, queue: InferenceQueue) -> None:
        self.settings = settings
        self.queue = queue
        # The embedded model is converted to its quantisation (a few seconds, once) by load(), in its thread.
        self.path: Path = gguf_model(settings.gguf_path)
        self.context_window = settings.n_ctx
        if queue is not None:  # (the guard's tests drive _reply alone)
            queue.workers = settings.instances  # one generation per copy of the model
        self._gate = ComputeGate(settings.parallel)
        self._instances: list[_Instance] = []
        self._free: list[_Instance] = []
        self._pool = threading.Condition()
        self._uses = itertools.count(1)
        self._arrivals = itertools.count()
        self._llm: llama_cpp.Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None
        self._tasks: set[asyncio.Task] = set()
        self.template_source = "none"

    @property
    def default_model(self) -> str:
        """The configured name, else the file's (which load() may change to the converted one)."""
        return self.settings.model or self.path.name.removesuffix(".gguf")

    # --- start-up ------------------------------------------------------------
    def load(self) -> None:
        s = self.settings
        t0 = time.perf_counter()
        self.path = model_file(s.gguf_path, s.embedded_quant)
        llm = self._load_copy()
        template = llm.metadata.get("tokenizer.chat_template")
        self.template_source = "gguf" if template else "chatml-fallback"
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        # The same formatter llama-cpp-python builds from the GGUF metadata for
        # create_chat_completion; built here so the prompt tokens are known exactly
        # (usage, trimming) and the completion can stream through create_completion.
        self._formatter = Jinja2ChatFormatter(template=template or CHATML, eos_token=eos,
                                              bos_token=bos, stop_token_ids=[eos_id])
        self._llm = llm  # the tokenizer and template (any copy would do)
        copies = [llm] + [self._load_copy() for _ in range(s.instances - 1)]
        # The start of every conversation's prompt with the default system prompt, up to the user's words:
        # a first turn then evaluates only its words (the system prompt: ~0.4 s on a slow 2-core CPU).
        system = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
        warm = self._tokens([*system, {"role": "user", "content": ""}])
        for copy in copies:
            # One token now so the first user request does not pay for lazy allocations.
            copy.create_completion(warm, max_tokens=1, temperature=0.0)
            self._instances.append(_Instance(copy))
        self._free = list(self._instances)
        log.info("loaded %s (n_ctx=%d, threads=%d, %d instance(s), %d computing at once, chat template "
                 "from %s) in %.2f s", self.path.name, s.n_ctx, s.n_threads, s.instances, s.parallel,
                 self.template_source, time.perf_counter() - t0)

    def _load_copy(self) -> llama_cpp.Llama:
        s = self.settings
        return llama_cpp.Llama(model_path=str(self.path), n_ctx=s.n_ctx, n_threads=s.n_threads,
                               n_threads_batch=s.n_threads_batch, verbose=False)

    def _take(self, prompt: list[int], conversation: tuple[str, ...],
              stop: threading.Event) -> _Instance:
        """The free copy for ``prompt`` (the queue slot held guarantees one).

        The copy that last served this conversation (the one with most of the prompt cached, if
        several did), else the copy idle longest. Not simply the copy with most of the prompt
        cached: every conversation shares the system prompt, so a new conversation would take
        another's copy and make that one evaluate its whole history again (measured: 2
        conversations on 4 copies, first token 370-680 ms growing with the history, against
        110-160 ms alone). When the conversation's copy is still held by its cancelled generation (a
        speculative reply dropped for a longer one), wait for it rather than start over on another.
        """
        deadline = time.monotonic() + RETURN_WAIT_S
        with self._pool:
            while True:
                mine = [inst for inst in self._instances if inst.conversation == conversation]
                left = deadline - time.monotonic()
                if left <= 0 or any(inst in self._free for inst in mine) \
                        or not any(inst.returning for inst in mine):
                    break
                self._pool.wait(left)
            free_mine = [inst for inst in mine if inst in self._free]
            if free_mine:
                best = max(free_mine, key=lambda inst: inst.cached(prompt))
            else:
                best = min(self._free, key=lambda inst: inst.last_used)
            self._free.remove(best)
            best.stop, best.conversation = stop, conversation
            return best

    def _give_back(self, inst: _Instance) -> None:
        with self._pool:
            inst.last_used = next(self._uses)
            inst.stop = None
            self._free.append(inst)
            self._pool.notify_all()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def ready(self) -> str | None:
        return None if self._llm is not None else "local model not loaded"

    # --- tokens ----------------------------------------------------------------
    def render(self, messages: list[dict[str, str]]) -> str:
        assert self._formatter is not None
        return self._formatter(messages=messages).prompt

    def _tokens(self, messages: list[dict[str, str]]) -> list[int]:
        assert self._llm is not None
        # The template already writes any BOS it wants (added_special), as llama-cpp does.
        return self._llm.tokenize(self.render(messages).encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        return len(self._tokens(prompt_messages(messages, [])))

    def text_tokens(self, text: str) -> int:
        assert self._llm is not None
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # --- generation --------------------------------------------------------------
    async def stream_chat(self, messages: list[dict[str, Any]],
                          options: ChatOptions) -> AsyncIterator[StreamItem]:
        if self._llm is None:
            raise UpstreamError(503, "local model is not loaded yet", "model_loading", retryable=False)
        slot = self.queue.slot()  # 503 at once when too many are waiting
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        task = asyncio.create_task(self._run(slot, messages, options, stop, loop, items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            while True:
                item = await items.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Final):
                    return
        finally:
            stop.set()  # the worker sees it before its next token and lets go of the model

    # --- prefill ------------------------------------------------------------------
    async def prefill(self, messages: list[dict[str, Any]], options: ChatOptions) -> int:
        """Evaluate the prompt of a generation to come (its user's words so far) into the copy of the model
        that will serve it, so that the generation evaluates only what changed: the tokens evaluated.

        Never ahead of real work: it waits behind every generation for a queue slot and at the gate, and
        is skipped while a generation waits for a slot or while the conversation's copy is busy (another
        copy would evaluate the whole history: more than it saves). Cancelled (a ``generate`` came), it
        stops at llama.cpp's next batch and the generation waits for the copy, as after a cancelled reply.
        """
        if self._llm is None or self.queue.waiting:
            return 0
        if sum(m["role"] != "system" for m in messages) < 2:
            # A first turn: every copy holds the system prompt (load), and which copy its generation takes
            # depends on its first words (``conversation_of``), which are not known yet.
            return 0
        try:
            slot = self.queue.slot(PREFILL_PRIORITY)
        except APIError:  # the queue is full
            return 0
        stop = threading.Event()
        try:
            async with slot:
                return await asyncio.to_thread(self._prefill, messages, options, stop)
        finally:
            stop.set()

    def _prefill(self, messages: list[dict[str, Any]], options: ChatOptions, stop: threading.Event) -> int:
        messages = prompt_messages(messages, options.offered_tools())
        prompt = self._tokens(messages)
        if len(prompt) >= self.settings.n_ctx:
            return 0
        conversation = conversation_of(messages)
        with self._pool:
            mine = [inst for inst in self._instances if inst.conversation == conversation]
            if mine and not any(inst in self._free for inst in mine):
                return 0
        inst = self._take(prompt, conversation, stop)
        try:
            todo = len(prompt) - inst.cached(prompt)
            if todo <= 1 or stop.is_set() or not self._gate.acquire((PREFILL_PRIORITY, next(self._arrivals)),
                                                                    stop):
                return 0
            try:
                with inst.interrupt.watching(stop):
                    # The prompt evaluated and one token sampled, not evaluated: the cache ends with the
                    # prompt.
                    inst.llm.create_completion(prompt, max_tokens=1, temperature=0.0)
            finally:
                self._gate.release()
            return 0 if stop.is_set() else todo
        finally:
            self._give_back(inst)

    async def _run(self, slot: Any, messages: list[dict[str, Any]], options: ChatOptions,
                   stop: threading.Event, loop: asyncio.AbstractEventLoop, items: asyncio.Queue) -> None:
        try:
            async with slot:
                if stop.is_set():  # cancelled while queued
                    return
                await asyncio.to_thread(self._generate, messages, options, stop, loop, items)
        except Exception as exc:
            items.put_nowait(exc)

    def _generate(self, messages: list[dict[str, Any]], options: ChatOptions, stop: threading.Event,
                  loop: asyncio.AbstractEventLoop, items: asyncio.Queue) -> None:
        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # loop closed during shutdown
                stop.set()

        s = self.settings
        arrival = next(self._arrivals)
        inst: _Instance | None = None
        try:
            try:
                tools = options.offered_tools()
                # With auto, a reply to a tool's result is an answer: the model here would call
                # again (it did, on the first try) and a caller looping on calls would never end.
                answer = options.tool_choice == "auto" and messages[-1]["role"] == "tool"
                messages = prompt_messages(messages, tools)  # the tools described, calls as text
                prompt = self._tokens(messages)
                room = s.n_ctx - len(prompt)
                if room < 1:
                    raise UpstreamError(400, f"the conversation ({len(prompt)} tokens) does not fit the "
                                        f"model's {s.n_ctx}-token context", "context_length_exceeded")
                params: dict[str, Any] = {
                    "max_tokens": min(options.max_tokens, room), "temperature": options.temperature,
                    "top_p": options.top_p if options.top_p is not None else s.top_p, "top_k": s.top_k,
                    "min_p": s.min_p, "repeat_penalty": s.repeat_penalty, "stop": options.stop or None,
                    "seed": options.seed}
                inst = self._take(prompt, conversation_of(messages), stop)
                with inst.interrupt.watching(stop):
                    called = self._tool_call(inst.llm, arrival, prompt, tools, options.tool_choice, params,
                                             stop, put) if tools and not answer else None
                    if called is None:
                        text, finish, extra = self._reply(prompt, params, stop, put, inst.llm, arrival)
                    else:
                        (text, finish), extra = called, {}
                completion = self.text_tokens(text) if text else 0
                put(Final(finish, len(prompt), completion, options.model, extra))
            except UpstreamError as exc:
                put(exc)
            except Exception as exc:
                log.exception("local generation failed")
                put(UpstreamError(500, f"local model failed: {type(exc).__name__}: {exc}",
                                  "generation_failed"))
        finally:
            if inst is not None:
                self._give_back(inst)

    def _reply(self, prompt: list[int], params: dict[str, Any], stop: threading.Event,
               put: Callable[[Any], None], llm: llama_cpp.Llama | None = None,
               arrival: int = 0) -> tuple[str, str, dict[str, Any]]:
        """The reply through the guard, on copy ``llm`` (default: the first): (text said, finish
        reason, what the guard did). ``arrival`` orders it at the gate among replies of its phase.

        A reply that failed the guard after a whole sentence ends there. One that failed before
        saying anything can still be replaced rather than cut to silence: once more greedily with
        a repeat penalty (greedy alone would write the same loop again), else ``fallback_reply``.
        """
        s = self.settings
        if llm is None:
            llm = self._llm
        assert llm is not None
        text, finish, problem = self._attempt(llm, arrival, prompt, params, stop, put)
        if not problem:
            return text, finish, {}
        action = "cut"
        if not text and not stop.is_set():
            retry = {**params, "temperature": 0.0,
                     "repeat_penalty": max(s.repeat_penalty, RETRY_REPEAT_PENALTY)}
            text, finish, again = self._attempt(llm, arrival, prompt, retry, stop, put)
            action = "retried" if not again else "retried, cut"
            if again and not text and not stop.is_set() and s.fallback_reply:
                text, finish, action = s.fallback_reply, "stop", "fallback"
                put(Delta(text))
        log.info("guard: %s in the reply; %s (%d chars said)", problem, action, len(text))
        return text, finish, {"guard": problem, "guard_action": action}

    def _tool_call(self, llm: llama_cpp.Llama, arrival: int, prompt: list[int],
                   tools: list[dict[str, Any]], choice: Any, params: dict[str, Any], stop: threading.Event,
                   put: Callable[[Any], None]) -> tuple[str, str] | None:
        """One tool call written under grammars (local_tools): (arguments text, finish reason), or
        None when ``auto`` chose a plain answer. Streams the call as ToolCallDeltas."""
        # A call is a choice, not prose: greedy, and no repeat penalty (JSON repeats its quotes).
        greedy = {**params, "temperature": 0.0, "repeat_penalty": 1.0, "stop": None}
        if choice == "auto":
            said, finish = self._constrained(llm, arrival, prompt, decide_grammar(),
                                             {**greedy, "max_tokens": 8}, stop)
            if finish == "cancelled":
                return "", "cancelled"
            if not said.startswith(CALL_OPEN):
                return None
        names = [t["function"]["name"] for t in tools]
        name = chosen_name(choice) or (names[0] if len(names) == 1 else None)
        if name is None:
            head = self._text_ids(call_head())
            said, finish = self._constrained(llm, arrival, prompt + head, name_grammar(names),
                                             {**greedy, "max_tokens": 32}, stop)
            if finish == "cancelled":
                return "", "cancelled"
            name = json.loads(said)
        put(ToolCallDelta(index=0, id=new_call_id(), name=name))
        tool = next(t for t in tools if t["function"]["name"] == name)
        grammar = self._usable(args_grammars(tool["function"].get("parameters")))
        if grammar is None:  # a function without arguments
            put(ToolCallDelta(index=0, arguments="{}"))
            return "{}", "tool_calls"
        full = prompt + self._text_ids(call_head(name))
        room = self.settings.n_ctx - len(full)
        if room < 1:
            raise UpstreamError(400, f"the conversation and tools ({len(full)} tokens) do not fit the "
                                f"model's {self.settings.n_ctx}-token context", "context_length_exceeded")
        space = ""  # whitespace held back: the grammar lets the object end with a space

        def send(piece: str) -> None:
            nonlocal space
            body = piece.rstrip()
            if body:
                put(ToolCallDelta(index=0, arguments=space + body))
                space = ""
            space += piece[len(body):]

        budget = {**greedy, "max_tokens": min(params["max_tokens"], room)}
        said, finish = self._constrained(llm, arrival, full, grammar, budget, stop, send)
        return said.rstrip(), "tool_calls" if finish == "stop" else finish

    def _usable(self, grammars: list[Any]) -> Any:
        """The first of ``grammars`` llama.cpp accepts (None for none). llama.cpp refuses some
        grammars a valid schema converts to (a $ref that only refers to itself is left-recursive),
        and llama-cpp-python then used the missing sampler: the process died of a segmentation
        fault. Building the sampler here answers the question safely (null when refused)."""
        assert self._llm is not None
        for grammar in grammars:
            sampler = llama_cpp.llama_sampler_init_grammar(
                self._llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
                return grammar
            log.info("llama.cpp refused a grammar of this tool's schema; trying a looser one")
        return None

    def _text_ids(self, text: str) -> list[int]:
        assert self._llm is not None
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _constrained(self, llm: llama_cpp.Llama, arrival: int, prompt: list[int], grammar: Any,
                     params: dict[str, Any], stop: threading.Event,
                     on_piece: Callable[[str], None] | None = None) -> tuple[str, str]:
        """A completion under ``grammar``, token by token under the gate (as a reply's first
        sentence: the listener waits for it): (text, finish reason)."""
        if not self._gate.acquire((0, arrival), stop):
            return "", "cancelled"
        holding = True
        out: list[str] = []
        finish = "stop"
        stream = llm.create_completion(prompt, stream=True, grammar=grammar, **params)
        try:
            for chunk in stream:
                if stop.is_set():
                    finish = "cancelled"
                    break
                choice = chunk["choices"][0]
                if choice["text"]:
                    out.append(choice["text"])
                    if on_piece:
                        on_piece(choice["text"])
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                    break
                holding = self._gate.step((0, arrival), stop)
                if not holding:
                    finish = "cancelled"
                    break
        finally:
            stream.close()
            if holding:
                self._gate.release()
        return "".join(out), finish

    def _attempt(self, llm: llama_cpp.Llama, arrival: int, prompt: list[int], params: dict[str, Any],
                 stop: threading.Event, put: Callable[[Any], None]) -> tuple[str, str, str | None]:
        """One completion streamed through the guard: (text released, finish reason, problem).

        Each token goes to the guard as it arrives; what it releases goes out at once, and a
        problem ends generation right there (the stream is closed, the model freed). Tokens are
        computed under the gate: before each one, a more urgent generation may go first.
        """
        s = self.settings
        guard = StreamGuard(s.reply_language, max_sentences=s.max_sentences) if s.guard else None
        held = HeldPieces()
        out: list[str] = []
        finish = "stop"

        def send(released: str) -> None:
            for piece in held.take(released):  # one delta per token, as without the guard
                out.append(piece)
                put(Delta(piece))

        def priority() -> tuple[int, int]:
            # Phase 0 until a whole sentence is out: that is what the listener is waiting for.
            return (1 if sentence_spans("".join(out), final=False) else 0, arrival)

        if not self._gate.acquire(priority(), stop):
            return "", "cancelled", None
        holding = True
        stream = llm.create_completion(prompt, stream=True, **params)
        try:
            for chunk in stream:
                if stop.is_set():
                    finish = "cancelled"
                    break
                choice = chunk["choices"][0]
                if choice["text"]:
                    held.add(choice["text"])
                    send(guard.feed(choice["text"]) if guard else choice["text"])
                    if guard and (guard.problem or guard.complete):
                        finish = "stop"
                        break
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                    break
                holding = self._gate.step(priority(), stop)
                if not holding:
                    finish = "cancelled"
                    break
        finally:
            stream.close()  # ends llama's generator (and its KV bookkeeping) at once
            if holding:
                self._gate.release()
        if guard and finish != "cancelled" and not guard.problem and not guard.complete:
            send(guard.finish(truncated=finish == "length"))
        return "".join(out), finish, guard.problem if guard else None
