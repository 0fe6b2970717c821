"""End of utterance from the words: P(the user's message ends here) from the embedded model.

The probability that the next token after ``<|im_start|>user\\n{words}`` (the chat template's user
turn, the words without Whisper's trailing punctuation) is a sentence end (``.`` ``?`` ``!``) or
the end of the message (``<|im_end|>``). LiveKit's first text turn detector was this model; on
bench/turns.py it tells "And so my fellow Americans asked not" (0.01) from "...ask what you can do
for your country" (0.59), where Whisper's full stop after half a sentence fools a punctuation rule.

Not LiveKit's recipe (lower-case, punctuation removed, P(``<|im_end|>``) alone, the conversation before):
their model was fine-tuned for it, this one is not. On bench/turns.py's transcripts P(``<|im_end|>``) alone
tells ends from mid-sentence pauses worse (AUC 0.70 against 0.82 here; no end reaches 0.1), their
normalisation with these end tokens as well as now (0.82), and a conversation before the words a little
better (0.86) but not where it counts: at every threshold where half the ends still get the short hold it
cut as many utterances off or more (bench/results/turns.md, "Other ways of asking the model").

Its own small llama context on the service's GGUF (the weights are mmap'd, so the OS shares them
with the generating copies), one thread, behind a lock: it never waits for a reply's generation
and a reply never waits for it. The last prompt stays in the KV cache, so the same utterance
asked again with more words evaluates only the new tokens.

Every provider gets it when the embedded GGUF is installed (it is in the service's image): Ollama
and OpenAI-compatible servers offer no probability of a chat template token after an unfinished
user message (OpenAI's logprobs are of the reply's tokens only), and a remote round trip would eat
the few hundred milliseconds the answer is for. Without the file the service answers 501
``eou_unavailable`` and main_app decides by the words alone.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import llama_cpp
import numpy as np

from .gguf import Quant, embedded_gguf

log = logging.getLogger("rvchat.llm.eou")

PREFIX = "<|im_start|>user\n"
ENDS = (".", "?", "!", "<|im_end|>")
# Whisper's trailing punctuation (and a dash or ellipsis) says nothing the model should see: the
# question is whether the words need more words, not whether Whisper put a full stop.
STRIP = ".?!,;:…-–— \t\n\"'”’"
N_CTX = 256
# Only the utterance's last words are judged: prompt evaluation is the whole cost, and whether words need
# more words shows at their end. One thread on this 2-core CPU at load average 5: 4 words 42 ms, 20 words
# 107 ms, 40 words (35 tokens) 174 ms from nothing; the same words with 3 more after them 21-28 ms (the
# cached prefix); over bench/turns.py's 273 transcripts a median 33 ms, at most 214.
MAX_WORD_TOKENS = 48


class EndOfUtterance:
    """``probability(text)``: blocking (tens of ms), thread-safe; one per service."""

    def __init__(self, path: Path | None = None, n_ctx: int = N_CTX, quant: Quant = "q8_0") -> None:
        self.path = path  # None: the embedded model in ``quant``, the local provider's default file (load)
        self.quant = quant
        self.n_ctx = n_ctx
        self._lock = threading.Lock()
        self._llm: llama_cpp.Llama | None = None
        self._ends: list[int] = []
        self._prefix: list[int] = []
        self._cached: list[int] = []  # the tokens whose KV entries the context holds
        self._last: tuple[list[int], float] = ([], 0.0)  # the last prompt and its answer

    def load(self) -> None:
        t0 = time.perf_counter()
        if self.path is None:
            self.path = embedded_gguf(self.quant)
        self._llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_batch=self.n_ctx,
                                    n_threads=1, n_threads_batch=1, verbose=False)
        tok = self._llm.tokenize
        self._ends = sorted({tok(s.encode(), add_bos=False, special=True)[-1] for s in ENDS})
        self._prefix = tok(PREFIX.encode(), add_bos=False, special=True)
        log.info("end-of-utterance model loaded from %s in %.2f s", self.path.name, time.perf_counter() - t0)

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def tokens(self, text: str) -> list[int]:
        """The prompt for ``text``: the user turn's opening and the words (their last part if long)."""
        assert self._llm is not None
        words = text.strip().rstrip(STRIP)
        toks = self._llm.tokenize(f"{PREFIX}{words}".encode(), add_bos=False, special=True)
        if len(toks) > len(self._prefix) + MAX_WORD_TOKENS:
            toks = self._prefix + toks[len(toks) - MAX_WORD_TOKENS:]
        return toks

    def probability(self, text: str) -> float:
        """P(the message ends after ``text``), 0-1."""
        llm = self._llm
        if llm is None:
            raise RuntimeError("the end-of-utterance model is not loaded")
        with self._lock:
            toks = self.tokens(text)
            if toks == self._last[0]:
                return self._last[1]  # the same words asked again (a retry, the bench's rules)
            same = 0
            for a, b in zip(self._cached, toks):
                if a != b:
                    break
                same += 1
            same = min(same, len(toks) - 1)  # at least one token evaluated: its logits are the answer
            llm.n_tokens = same  # eval() drops the KV entries from here on
            self._cached = []
            llm.eval(toks[same:])
            self._cached = toks
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
            p = np.exp(logits - logits.max())
            prob = float(p[self._ends].sum() / p.sum())
            self._last = (toks, prob)
        return prob
