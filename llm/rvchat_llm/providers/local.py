"""llama-cpp-python in this process, with the chat template stored in the GGUF file.

Generation runs on a worker thread under the shared model lock; tokens reach the
event loop through an asyncio queue. The thread checks a stop flag between tokens,
so a cancel (client gone, WS ``cancel``, barge-in) ends generation within a token
and frees the model. The model slot is held by a background task, not by the
consumer, so a slow reader never keeps the model from other requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from rvchat_common.inference import InferenceQueue
from rvchat_common.models import gguf_model

from ..guard import HeldPieces, StreamGuard
from ..settings import Settings
from .base import ChatOptions, Delta, Final, StreamItem, UpstreamError
from .interrupt import Interrupter

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


class LocalProvider:
    name = "local"

    def __init__(self, settings: Settings, queue: InferenceQueue) -> None:
        self.settings = settings
        self.queue = queue
        self.path: Path = gguf_model(settings.gguf_path)
        self.default_model = settings.model or self.path.name.removesuffix(".gguf")
        self.context_window = settings.n_ctx
        self._llm: llama_cpp.Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None
        self._tasks: set[asyncio.Task] = set()
        self.template_source = "none"

    # --- start-up ------------------------------------------------------------
    def load(self) -> None:
        s = self.settings
        t0 = time.perf_counter()
        llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=s.n_ctx, n_threads=s.n_threads,
                              n_threads_batch=s.n_threads_batch, verbose=False)
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
        self._llm = llm
        self._interrupt = Interrupter(llm)  # a stop flag also ends prompt evaluation and held-back text
        # One token now so the first user request does not pay for lazy allocations.
        llm.create_completion(self._tokens([{"role": "user", "content": "Hi"}]), max_tokens=1,
                              temperature=0.0)
        log.info("loaded %s (n_ctx=%d, threads=%d, chat template from %s) in %.2f s",
                 self.path.name, s.n_ctx, s.n_threads, self.template_source, time.perf_counter() - t0)

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

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self._tokens(messages))

    def text_tokens(self, text: str) -> int:
        assert self._llm is not None
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # --- generation --------------------------------------------------------------
    async def stream_chat(self, messages: list[dict[str, str]],
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

    async def _run(self, slot: Any, messages: list[dict[str, str]], options: ChatOptions,
                   stop: threading.Event, loop: asyncio.AbstractEventLoop, items: asyncio.Queue) -> None:
        try:
            async with slot:
                if stop.is_set():  # cancelled while queued
                    return
                await asyncio.to_thread(self._generate, messages, options, stop, loop, items)
        except Exception as exc:
            items.put_nowait(exc)

    def _generate(self, messages: list[dict[str, str]], options: ChatOptions, stop: threading.Event,
                  loop: asyncio.AbstractEventLoop, items: asyncio.Queue) -> None:
        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # loop closed during shutdown
                stop.set()

        s = self.settings
        llm = self._llm
        assert llm is not None
        with self.queue.thread_lock, self._interrupt.watching(stop):
            try:
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
                text, finish, extra = self._reply(prompt, params, stop, put)
                completion = self.text_tokens(text) if text else 0
                put(Final(finish, len(prompt), completion, options.model, extra))
            except UpstreamError as exc:
                put(exc)
            except Exception as exc:
                log.exception("local generation failed")
                put(UpstreamError(500, f"local model failed: {type(exc).__name__}: {exc}",
                                  "generation_failed"))

    def _reply(self, prompt: list[int], params: dict[str, Any], stop: threading.Event,
               put: Callable[[Any], None]) -> tuple[str, str, dict[str, Any]]:
        """The reply through the guard: (text said, finish reason, what the guard did).

        A reply that failed the guard after a whole sentence ends there. One that failed before
        saying anything can still be replaced rather than cut to silence: once more greedily with
        a repeat penalty (greedy alone would write the same loop again), else ``fallback_reply``.
        """
        s = self.settings
        text, finish, problem = self._attempt(prompt, params, stop, put)
        if not problem:
            return text, finish, {}
        action = "cut"
        if not text and not stop.is_set():
            retry = {**params, "temperature": 0.0,
                     "repeat_penalty": max(s.repeat_penalty, RETRY_REPEAT_PENALTY)}
            text, finish, again = self._attempt(prompt, retry, stop, put)
            action = "retried" if not again else "retried, cut"
            if again and not text and not stop.is_set() and s.fallback_reply:
                text, finish, action = s.fallback_reply, "stop", "fallback"
                put(Delta(text))
        log.info("guard: %s in the reply; %s (%d chars said)", problem, action, len(text))
        return text, finish, {"guard": problem, "guard_action": action}

    def _attempt(self, prompt: list[int], params: dict[str, Any], stop: threading.Event,
                 put: Callable[[Any], None]) -> tuple[str, str, str | None]:
        """One completion streamed through the guard: (text released, finish reason, problem).

        Each token goes to the guard as it arrives; what it releases goes out at once, and a
        problem ends generation right there (the stream is closed, the model freed).
        """
        s = self.settings
        llm = self._llm
        assert llm is not None
        guard = StreamGuard(s.reply_language, max_sentences=s.max_sentences) if s.guard else None
        held = HeldPieces()
        out: list[str] = []
        finish = "stop"

        def send(released: str) -> None:
            for piece in held.take(released):  # one delta per token, as without the guard
                out.append(piece)
                put(Delta(piece))

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
        finally:
            stream.close()  # ends llama's generator (and its KV bookkeeping) at once
        if guard and finish != "cancelled" and not guard.problem and not guard.complete:
            send(guard.finish(truncated=finish == "length"))
        return "".join(out), finish, guard.problem if guard else None
