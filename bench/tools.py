"""LLM tool calling on the embedded model: what tools cost a reply, and what the auto choice decides.

The LLM service (local provider, one copy of the model) as a process; the questions asked three ways:
without tools, with two tools and ``tool_choice: auto``, and with ``required``. Each way asks all its
questions in a row, as turns of a conversation would: the system prompt (and the tools) are in the
prompt cache, each question is new. Rounds repeat the three ways, so they share the machine's load.
Time to the first piece (a text delta or a tool call's first piece, /v1 streamed) and to the end;
for auto, whether it called. Greedy, max_tokens 48.

Run: ``python -m bench.tools [--rounds 3] [--out bench/results/tools.md]`` (or ``python -m bench tools``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import httpx

from rvchat_common.testing import ServiceProcess

from .stats import percentile

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "set_timer", "description": "Start a timer",
        "parameters": {"type": "object", "properties": {"minutes": {"type": "number"}},
                       "required": ["minutes"]}}},
]
# (question, whether a tool would be the right answer)
QUESTIONS = [
    ("What's the weather in Paris?", True), ("Set a timer for five minutes.", True),
    ("Is it raining in London right now?", True), ("Start a 10 minute timer.", True),
    ("Tell me a joke.", False), ("What is the capital of France?", False),
    ("Why is the sky blue?", False), ("Thanks, that's all.", False),
]
SYSTEM = "You are a helpful voice assistant. Answer in one or two short, simple English sentences."


def ask(client: httpx.Client, url: str, question: str, mode: str) -> tuple[float, float, bool, int]:
    """(ms to the first piece, ms to the end, whether it called a tool, prompt tokens)."""
    body: dict = {"model": "any", "stream": True, "max_tokens": 48, "temperature": 0,
                  "stream_options": {"include_usage": True},
                  "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
    if mode != "none":
        body |= {"tools": TOOLS, "tool_choice": mode}
    t0 = time.perf_counter()
    first, called, prompt = None, False, 0
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            prompt = (chunk.get("usage") or {}).get("prompt_tokens", prompt)
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls"):
                    first = first or time.perf_counter()
                called = called or bool(delta.get("tool_calls"))
    end = time.perf_counter()
    return ((first or end) - t0) * 1000, (end - t0) * 1000, called, prompt


def run(rounds: int = 3) -> str:
    """The Markdown section (``python -m bench tools`` keeps it in bench/results/tools.md)."""
    svc = ServiceProcess("rvchat_llm", "LLM_", {"LLM_PROVIDER": "local", "LLM_INSTANCES": "1"}).start()
    modes = ("none", "auto", "required")
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    prompts: dict[str, list[int]] = {m: [] for m in modes}
    auto_calls: dict[bool, list[bool]] = {True: [], False: []}
    load0 = os.getloadavg()[0]
    try:
        with httpx.Client(timeout=120) as client:
            for _ in range(rounds):
                for m in modes:
                    ask(client, svc.url, "Hello", m)  # the conversation's system prompt into the cache
                    for question, wants_tool in QUESTIONS:
                        first, total, called, prompt = ask(client, svc.url, question, m)
                        times[m].append((first, total))
                        prompts[m].append(prompt)
                        if m == "auto":
                            auto_calls[wants_tool].append(called)
    finally:
        svc.stop()
    load1 = os.getloadavg()[0]
    rows = []
    for m in modes:
        firsts = [f for f, _ in times[m]]
        totals = [t for _, t in times[m]]
        rows.append(f"| {m} | {statistics.median(prompts[m]):.0f} | {statistics.median(firsts):.0f} | "
                    f"{percentile(firsts, 0.9):.0f} | {statistics.median(totals):.0f} |")
    n = len(QUESTIONS) // 2 * rounds
    yes, no = sum(auto_calls[True]), sum(auto_calls[False])
    right = yes + (n - no)
    text = f"""## LLM tool calling (local provider, SmolLM2-135M-Instruct Q4_1)

{len(QUESTIONS)} questions x {rounds} rounds, asked without tools, with 2 tools and `tool_choice: auto`,
and with `required` (`python -m bench.tools`): one copy of the model, each way's questions in a row as the
turns of a conversation (its system prompt and tools cached, each question new). /v1 streamed, greedy,
max_tokens 48. First piece: a text delta or a tool call's first piece. Load average {load0:.1f} at the start,
{load1:.1f} at the end (2 cores, shared with whatever else ran).

| tools | prompt tokens median | first piece median ms | first piece p90 ms | whole reply median ms |
|---|---|---|---|---|
{chr(10).join(rows)}

`auto` called a tool on {yes} of {n} requests that wanted one and on {no} of {n} that did not ({right} of
{2 * n} right). The tool descriptions lengthen the prompt (the prompt cache keeps them after the first request
of a conversation); `auto` adds its one constrained choice before the answer or the call; `required` with
two tools chooses the name first.
"""
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/tools.md")
    args = parser.parse_args()
    text = run(args.rounds)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
