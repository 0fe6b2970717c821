"""Stopping llama.cpp at once when a generation's stop flag is set, wherever it is.

llama-cpp-python's streaming generator only yields when it has text to give, so a stop flag read
between yields is not seen while the prompt is evaluated (seconds for a long prompt on 2 cores),
nor while it holds text back (a multi-byte character, a possible stop sequence). Measured before
this: the next 1-token request waited 97.6 s behind a cancelled one. Here the flag is read

- by llama.cpp itself, through the context's abort callback, between the graph computations of
  every decode (prompt batches included): the decode returns "aborted", which ends the generation;
- by a stopping criterion after every sampled token, for the tokens that produce no text.

:class:`Interrupter` is installed on a loaded ``Llama`` once; a generation runs inside
``watching(stop)``. One model is used by one thread at a time (the provider's lock), so one flag
slot is enough.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import llama_cpp

log = logging.getLogger("rvchat.llm.local")


class Interrupter:
    def __init__(self, llm: llama_cpp.Llama) -> None:
        self.llm = llm
        self._stop: threading.Event | None = None
        self.aborts = 0  # decodes abandoned part-way (for tests and logs)
        # Keep a reference to the C callback: if it were collected, llama.cpp would call freed memory.
        self._callback = llama_cpp.ggml_abort_callback(self._abort)
        llama_cpp.llama_set_abort_callback(llm._ctx.ctx, self._callback, ctypes.c_void_p(0))
        self._create = llm.create_completion
        llm.create_completion = self._create_completion  # type: ignore[method-assign]

    @property
    def stopped(self) -> bool:
        stop = self._stop
        return stop is not None and stop.is_set()

    def _abort(self, _data: Any) -> bool:
        if self.stopped:
            self.aborts += 1
            return True
        return False

    @contextmanager
    def watching(self, stop: threading.Event) -> Iterator[None]:
        """Generations in this block stop as soon as ``stop`` is set."""
        self._stop = stop
        try:
            yield
        finally:
            self._stop = None

    def _criterion(self, _ids: Any, _logits: Any) -> bool:
        return self.stopped

    def _create_completion(self, prompt: Any, **kwargs: Any) -> Any:
        criteria = llama_cpp.StoppingCriteriaList([self._criterion])
        if kwargs.get("stopping_criteria"):
            criteria.extend(kwargs["stopping_criteria"])
        kwargs["stopping_criteria"] = criteria
        if not kwargs.get("stream"):
            try:
                return self._create(prompt, **kwargs)
            except RuntimeError:
                if not self.stopped:
                    raise
                return {"choices": [{"text": "", "finish_reason": "cancelled"}]}
        return self._stream(self._create(prompt, **kwargs))

    def _stream(self, chunks: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from chunks
        except RuntimeError:
            # llama_decode reports the abort as a failure; for a stopped generation it is the end.
            if not self.stopped:
                raise
            log.debug("generation aborted inside llama.cpp")
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
