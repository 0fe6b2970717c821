"""LLM: time to first token and tokens/s, the service (HTTP SSE, WebSocket) vs llama-cpp-python in-process.

Same GGUF (the embedded SmolLM2-135M-Instruct in the service's quantisation), same chat template, greedy,
same prompts. Each run uses a different question so the prompt is not entirely cached (the system prompt
prefix is, in both).

``python -m bench.llm --quants`` instead compares the embedded model's quantisations in-process, one
thread as the service runs it: prompt evaluation of 20 and 200 tokens, and 64 tokens generated
(``LLM_EMBEDDED_QUANT``, rvchat_llm/gguf.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time

import httpx
from rvchat_common.testing import ServiceProcess
from rvchat_llm.gguf import embedded_gguf

SYSTEM = "You are a helpful assistant."
TOPICS = ["the moon", "honey bees", "the river Nile", "volcanoes", "the piano", "penguins", "trains"]
MAX_TOKENS = 64
ROUNDS = 2
N_CTX, THREADS = 2048, 2


def _messages(topic: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Tell me about {topic} in three sentences."}]


def _rate(n_tokens: int, first: float, last: float) -> float | None:
    return (n_tokens - 1) / (last - first) if n_tokens > 1 and last > first else None


def load_library():
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llama_cpp.Llama(str(embedded_gguf()), n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS,
                          verbose=False)
    fmt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                              bos_token="<|im_start|>")
    llm.create_completion(llm.tokenize(b"Hi", add_bos=False), max_tokens=1)  # warm, as the service does
    return llm, fmt


def bench_library(llm, fmt, topics: list[str]) -> list[tuple[float, float | None, int]]:
    out = []
    for topic in topics:
        t0 = time.perf_counter()
        tokens = llm.tokenize(fmt(messages=_messages(topic)).prompt.encode(), add_bos=False, special=True)
        first = last = None
        n = 0
        for chunk in llm.create_completion(tokens, max_tokens=MAX_TOKENS, temperature=0.0, top_k=20,
                                           top_p=0.9, min_p=0.1, stream=True):
            if chunk["choices"][0]["text"]:
                now = time.perf_counter()
                first = first or now
                last = now
                n += 1
        out.append(((first - t0) * 1000, _rate(n, first, last), n))
    return out


def bench_http(url: str, topics: list[str]) -> list[tuple[float, float | None, int]]:
    out = []
    with httpx.Client(timeout=120) as client:
        for topic in topics:
            t0 = time.perf_counter()
            first = last = None
            n = 0
            body = {"messages": _messages(topic), "max_tokens": MAX_TOKENS, "stream": True, "temperature": 0}
            with client.stream("POST", url + "/generate", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"type": "delta"' in line:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        n += 1
            out.append(((first - t0) * 1000, _rate(n, first, last), n))
    return out


async def _bench_ws(ws_url: str, topics: list[str]) -> list[tuple[float, float | None, int]]:
    import websockets

    out = []
    async with websockets.connect(ws_url + "/ws") as ws:
        for topic in topics:
            t0 = time.perf_counter()
            first = last = None
            n = 0
            await ws.send(json.dumps({"type": "generate", "messages": _messages(topic),
                                      "max_tokens": MAX_TOKENS, "temperature": 0}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if event["type"] == "delta":
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    n += 1
                elif event["type"] in ("done", "error"):
                    break
            out.append(((first - t0) * 1000, _rate(n, first, last), n))
    return out


def _row(name: str, runs: list[tuple[float, float | None, int]]) -> str:
    ttft = [r[0] for r in runs]
    rates = [r[1] for r in runs if r[1]]
    return (f"| {name} | {statistics.median(ttft):.0f} | {min(ttft):.0f}–{max(ttft):.0f} | "
            f"{statistics.median(rates):.1f} | {max(rates):.1f} | "
            f"{statistics.median(r[2] for r in runs):.0f} |")


def run() -> str:
    llm, fmt = load_library()
    lib, http, ws = [], [], []
    with ServiceProcess("rvchat_llm", "LLM_", {"LLM_PROVIDER": "local", "LLM_N_CTX": str(N_CTX),
                                               "LLM_N_THREADS": str(THREADS)}) as svc:
        bench_http(svc.url, TOPICS[:2])  # settle the service (allocations, connection)
        # Interleaved per question, so a load spike from elsewhere hits all three paths alike.
        for _ in range(ROUNDS):
            for i, topic in enumerate(TOPICS):
                lib += bench_library(llm, fmt, [topic])
                http += bench_http(svc.url, [topic])
                # Another question for WS: the same one would hit the service's KV cache whole.
                ws += asyncio.run(_bench_ws(svc.ws_url, [TOPICS[(i + 3) % len(TOPICS)]]))
    load = os.getloadavg()[0]
    return "\n".join([
        f"## LLM (local provider, {embedded_gguf().name})",
        "",
        f"{len(TOPICS)} different questions x {ROUNDS} rounds (system + user, ~35 prompt tokens), "
        "greedy, max_tokens "
        f"{MAX_TOKENS}, n_ctx {N_CTX}, {THREADS} threads. Time to first token (TTFT) is measured by the "
        "client from sending the request to receiving the first token; tokens/s from the first to the "
        f"last token. Load average during the run: {load:.1f} on {os.cpu_count()} cores (other "
        "services' benchmarks/tests may share the CPU).",
        "",
        "| path | TTFT median ms | TTFT range ms | tokens/s median | tokens/s best | tokens per reply |",
        "|---|---|---|---|---|---|",
        _row("llama-cpp-python in-process", lib),
        _row("service HTTP /generate (SSE)", http),
        _row("service WebSocket /ws", ws),
        "",
        "The service adds HTTP/JSON framing, a thread hop per token (worker thread -> event loop) "
        "and the loopback network; the difference between the rows is that overhead. On a shared, "
        "loaded CPU the medians mostly measure the load; the best-case columns (minimum TTFT, best "
        "tokens/s) compare the paths more fairly.",
    ])


def quants(repeats: int = 5) -> str:
    """The embedded model's quantisations side by side, interleaved, one thread (the service's setting)."""
    import llama_cpp

    files = {q: embedded_gguf(q) for q in ("q4_1", "q8_0", "f16")}
    models = {q: llama_cpp.Llama(str(f), n_ctx=N_CTX, n_threads=1, n_threads_batch=1, verbose=False)
              for q, f in files.items()}
    text = " ".join(f"Tell me about {t} in three sentences." for t in TOPICS * 4).encode()
    prompt = b"<|im_start|>user\nTell me about the moon.<|im_end|>\n<|im_start|>assistant\n"
    times: dict[str, dict[str, list[float]]] = {q: {"20": [], "200": [], "gen": []} for q in files}
    replies: dict[str, str] = {}
    for _ in range(repeats):
        for q, llm in models.items():
            toks = llm.tokenize(text)
            for n in (20, 200):
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(toks[:n])
                times[q][str(n)].append((time.perf_counter() - t0) * 1000)
            llm.reset()
            t0 = time.perf_counter()
            out = llm.create_completion(llm.tokenize(prompt, add_bos=False, special=True), max_tokens=64,
                                        temperature=0.0)
            times[q]["gen"].append((time.perf_counter() - t0) * 1000 / max(1, out["usage"]["completion_tokens"]))
            replies[q] = out["choices"][0]["text"]
    rows = [f"| {files[q].name} | {files[q].stat().st_size / 1e6:.0f} MB | "
            f"{statistics.median(t['20']):.0f} | {statistics.median(t['200']):.0f} | "
            f"{statistics.median(t['gen']):.1f} | {replies[q][:60].strip()!r}... |" for q, t in times.items()]
    return "\n".join([
        (f"Prompt evaluation and generation by quantisation, in-process, one thread, {repeats} interleaved "
         f"repetitions (medians); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores."),
        "",
        ("| file | size | 20 prompt tokens, ms | 200 prompt tokens, ms | ms per generated token | greedy reply to "
         "'Tell me about the moon.' |"),
        "|---|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    import sys

    print(quants() if "--quants" in sys.argv[1:] else run())
