"""Experiment (not shipped): a trained end-of-utterance head on SmolLM2's last hidden state.

The embedded model's own P(. ? ! <|im_end|>) after the user's words (rvchat_llm/eou.py) tells sentence
ends from mid-sentence pauses only so well: half of bench/turns.py's finished read sentences score under
0.3. LiveKit fine-tuned the same model for it. This fits one linear layer (576 weights and a bias,
logistic regression) on the model's final hidden state at the words' last token, the state the service's
prompt already computes, and scores it on bench/turns.py's cached transcripts against the model's own
probability. bench/results/turns.md has the result: better on text, worse on the speech pauses.

Training text, none of it from tests/data/speech (bench/turns.py's set stays held out), from Debian and
PyPI packages: WordNet's example sentences (``apt-get install wordnet-base``), the fortune cookies
(``apt-get install fortunes``) and chatterbot-corpus's English lines (``pip download chatterbot-corpus
--no-deps``, unzipped; ``EOU_CHATTERBOT=<its data/english directory>``). An utterance is one sentence, or
two following ones; it is complete, and up to two of its word prefixes (cut at a word, the trailing
punctuation taken off as the service takes it off) are not. A prefix that ends a sentence is left out.

    BENCH_TURNS_CACHE=/tmp/turns.json python -m bench.turns   # the replay, once
    BENCH_TURNS_CACHE=/tmp/turns.json python -m bench.eou_head
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import time

import numpy as np

from bench.stats import auc

WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9'’,;:.?!\-\s\"]*$")
SENTENCE_SPLIT = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"])")


def usable(s: str) -> bool:
    n = len(s.split())
    return 3 <= n <= 28 and bool(WORD.match(s)) and s[0].isupper()


def sources(pattern: str, how: str) -> list[str]:
    """The files of one training source, in a fixed order; stop with how to get them if there are none."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"no files at {pattern}: {how}")
    return files


def wordnet() -> list[list[str]]:
    out = []
    for f in sources("/usr/share/wordnet/data.*", "apt-get install wordnet-base"):
        with open(f, encoding="latin-1") as fh:
            lines = fh.read().splitlines()
        for line in lines:
            for s in re.findall(r'"([^"]+)"', line):
                s = s.strip()
                if usable(s):
                    out.append([s if s[-1] in ".?!" else s + "."])
    return out


def fortunes() -> list[list[str]]:
    out = []
    for f in sources("/usr/share/games/fortunes/*", "apt-get install fortunes"):
        if "." in os.path.basename(f) or os.path.isdir(f):
            continue
        with open(f, encoding="latin-1") as fh:
            text = fh.read()
        for entry in text.split("\n%\n"):
            lines = [ln.strip() for ln in entry.splitlines() if ln.strip() and not ln.strip().startswith("--")]
            body = " ".join(lines)
            if not body or any(c in body for c in "<>|_{}[]()=*#@/\\"):
                continue
            sents = [s.strip() for s in SENTENCE_SPLIT.split(body)]
            sents = [s.strip('"') for s in sents if usable(s.strip('"'))]
            if sents:
                out.append(sents)
    return out


def chatterbot() -> list[list[str]]:
    d = os.environ.get("EOU_CHATTERBOT")
    if not d:
        return []
    out = []
    for f in sources(os.path.join(d, "*.yml"), "EOU_CHATTERBOT=<chatterbot_corpus/data/english>"):
        with open(f, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        for line in lines:
            m = re.match(r"^\s*-\s+(?:-\s+)?(.+)$", line)
            if not m:
                continue
            s = m.group(1).strip().strip("'\"")
            if usable(s):
                out.append([s])
    return out


def utterances(rng: random.Random, n: int) -> list[str]:
    groups = wordnet() + fortunes() + chatterbot()
    rng.shuffle(groups)
    out = []
    for g in groups:
        i = rng.randrange(len(g))
        u = g[i]
        if i + 1 < len(g) and rng.random() < 0.3:
            u = u + " " + g[i + 1]
        out.append(u)
        if len(out) >= n:
            break
    return out


class States:
    """The service's end-of-utterance prompt (``EndOfUtterance.tokens``) on a context that keeps every
    token's final hidden state (embeddings on, unpooled), the same GGUF."""

    def __init__(self) -> None:
        import llama_cpp
        from rvchat_llm.eou import EndOfUtterance

        self.eou = EndOfUtterance()
        self.eou.load()  # its tokens() and the model's own probability, for comparison
        self.llm = llama_cpp.Llama(model_path=str(self.eou.path), n_ctx=256, n_batch=256, n_threads=1,
                                   n_threads_batch=1, verbose=False, embedding=True, logits_all=True,
                                   pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)

    def run(self, tokens: list[int]) -> None:
        self.llm.n_tokens = 0
        self.llm.eval(tokens)

    def state(self, i: int = -1) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_embeddings_ith(self.llm._ctx.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_embd(),)).astype(np.float64)

    def of(self, text: str) -> np.ndarray:
        self.run(self.eou.tokens(text))
        return self.state()


def samples(m: States, text: str, rng: random.Random, negatives: int) -> list[tuple[np.ndarray, int]]:
    """The hidden states of ``text`` (complete) and of up to ``negatives`` of its word prefixes, from one
    evaluation of the whole prompt."""
    full = m.eou.tokens(text)
    if len(full) > len(m.eou._prefix) + 40:
        return []
    words = text.split()
    cuts = [k for k in range(1, len(words)) if words[k - 1][-1] not in ".?!"]
    rng.shuffle(cuts)
    wanted: list[tuple[int, int]] = [(len(full) - 1, 1)]
    for k in cuts[:negatives]:
        toks = m.eou.tokens(" ".join(words[:k]))
        if toks != full[:len(toks)]:
            continue  # tokenised differently from inside the whole text: its state is not in this pass
        wanted.append((len(toks) - 1, 0))
    m.run(full)
    return [(m.state(i), label) for i, label in wanted]


def fit(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 600) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method, classes weighted equally."""
    cw = np.where(y == 1, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9))
    xb = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(x.shape[1] + 1)
    for _ in range(steps):
        z = xb @ theta
        p = 1 / (1 + np.exp(-z))
        g = xb.T @ (cw * (p - y)) / len(x) + l2 * np.r_[theta[:-1], 0]
        hdiag = cw * p * (1 - p)
        hess = (xb * hdiag[:, None]).T @ xb / len(x) + l2 * np.diag(np.r_[np.ones(x.shape[1]), 0])
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(theta)), g)
        theta -= step
        if np.abs(step).max() < 1e-7:
            break
    return theta[:-1], float(theta[-1])


def ends_against_pauses(score: list[float], is_end: list[bool]) -> str:
    x, y = np.array(score), np.array(is_end, dtype=float)
    counts = ", ".join(f">= {th:g}: {int((x[y == 1] >= th).sum())} / {int((x[y == 0] >= th).sum())}"
                       for th in (0.1, 0.3, 0.5, 0.9))
    return f"AUC {auc(x[y == 1], x[y == 0]):.3f}; ends / pauses {counts}"


def main() -> None:
    cache = os.environ.get("BENCH_TURNS_CACHE")
    if not cache or not os.path.exists(cache):
        raise SystemExit("BENCH_TURNS_CACHE=<file>: bench/turns.py's replay, to score the head on (see the docstring)")
    rng = random.Random(int(os.environ.get("EOU_SEED", "11")))
    texts = utterances(rng, int(os.environ.get("EOU_UTTERANCES", "6000")))
    print(f"{len(texts)} utterances, e.g.:", *texts[:5], sep="\n  ")
    m = States()
    t0 = time.perf_counter()
    xs, ys, group = [], [], []
    for j, t in enumerate(texts):
        for h, label in samples(m, t, rng, negatives=2):
            xs.append(h)
            ys.append(label)
            group.append(j)
        if j % 1000 == 999:
            print(f"  {j + 1} utterances, {len(xs)} states, {time.perf_counter() - t0:.0f} s", flush=True)
    x, y, group = np.array(xs), np.array(ys, dtype=float), np.array(group)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xz = (x - mean) / std
    held = group % 5 == 0  # whole utterances held out
    best = None
    for l2 in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
        w, b = fit(xz[~held], y[~held], l2)
        score = xz[held] @ w + b
        a = auc(score[y[held] == 1], score[y[held] == 0])
        print(f"  l2 {l2:g}: held-out text AUC {a:.4f}")
        if best is None or a > best[0]:
            best = (a, l2)
    w, b = fit(xz, y, best[1])
    print(f"text: {len(y)} states ({int(y.sum())} complete), l2 {best[1]:g}, held-out AUC {best[0]:.4f}")

    with open(cache) as f:
        items = json.load(f)[0]
    texts = [(p["text"], False) for it in items for p in it["pauses"]]
    texts += [(it["end_text"], True) for it in items if it.get("end_text") is not None]
    head = [float(1 / (1 + np.exp(-(((m.of(t) - mean) / std) @ w + b)))) for t, _ in texts]
    own = [m.eou.probability(t) for t, _ in texts]
    is_end = [e for _, e in texts]
    print(f"bench/turns.py's {sum(is_end)} ends and {len(is_end) - sum(is_end)} pauses:")
    print("  the model's own P(end):", ends_against_pauses(own, is_end))
    print("  the trained head:      ", ends_against_pauses(head, is_end))


if __name__ == "__main__":
    main()
