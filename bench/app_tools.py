"""Tools in a conversation on the embedded model: what a turn with a tool call costs, and whether its answer
is right.

main_app as a process over the LLM service (local provider) only, asked through ``POST /api/message`` (text in,
text out; the voice path makes the same two generations). Three kinds of question: arithmetic (main_app names
``calculate``), the time or date (``get_current_time``) and questions with no tool. Rounds repeat the three
kinds, so they share the machine's load. Per kind: the median and p90 time of the whole reply, whether the
tool was called, and whether the answer says the right number (the sum's result, the current hour or weekday).

Run: ``python -m bench.app_tools [--rounds 2] [--out bench/results/app_tools.md]``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from rvchat_common.testing import ServiceProcess

from .stats import percentile

KINDS: dict[str, list[tuple[str, str | None]]] = {  # question, what a right answer says
    "arithmetic (calculate)": [("What is 12 times 7?", "84"), ("What is 345 plus 12?", "357"),
                               ("What is 81 divided by 9?", "9"), ("What is 15 times 15?", "225"),
                               ("What is 1000 minus 1?", "999"), ("What is 17 times 3?", "51")],
    "time or date (get_current_time)": [("What time is it?", "hour"), ("What day is it today?", "day"),
                                        ("What's the date today?", "day"), ("What time is it now?", "hour"),
                                        ("Which day of the week is it?", "day"), ("Tell me the time.", "hour")],
    "no tool": [("What is the capital of France?", None), ("Who wrote Hamlet?", None),
                ("What do bees make?", None), ("What colour is the sky?", None),
                ("How many legs does a spider have?", None), ("Thanks, that's all.", None)],
}


def right(answer: str, want: str | None) -> bool | None:
    if want is None:
        return None
    now = datetime.now().astimezone()
    if want == "hour":
        hours = {str(now.hour), str(now.hour % 12 or 12)}
        return any(re.search(rf"\b0?{h}[:.]\d\d", answer) for h in hours)
    if want == "day":
        return now.strftime("%A") in answer or f"{now:%B} {now.day}" in answer
    return re.search(rf"(?<![\d.]){want}(?![\d])", answer.replace(",", "")) is not None


def run(rounds: int = 2) -> str:
    llm_env = {"LLM_PROVIDER": "local"}
    db = Path(tempfile.mkdtemp()) / "h.sqlite3"
    rows: dict[str, list[tuple[float, bool, bool | None, str]]] = {k: [] for k in KINDS}
    with ServiceProcess("rvchat_llm", "LLM_", llm_env) as llm, \
            ServiceProcess("rvchat_app", "APP_", {"APP_LLM_URL": llm.url, "APP_DB_PATH": str(db)}) as app, \
            httpx.Client(timeout=120) as client:
        client.post(f"{app.url}/api/message", json={"text": "Hello"})  # load the model's prompt cache
        for _ in range(rounds):
            for kind, questions in KINDS.items():
                for question, want in questions:
                    t0 = time.perf_counter()
                    body = client.post(f"{app.url}/api/message", json={"text": question}).json()
                    ms = (time.perf_counter() - t0) * 1000
                    called = bool(body.get("tool_calls"))
                    rows[kind].append((ms, called, right(body["text"], want), body["text"]))
    load = os.getloadavg()[0]
    out = ["## Tools in a conversation (main_app, embedded model)", "",
           f"`python -m bench.app_tools --rounds {rounds}`: main_app over the LLM service (local provider), "
           f"`POST /api/message`, {len(next(iter(KINDS.values())))} questions per kind x {rounds} rounds. "
           f"Load average at the end: {load:.1f} on {os.cpu_count()} cores (other work shares the machine).", "",
           "| kind | replies | tool called | answer right | median ms | p90 ms |", "|---|---|---|---|---|---|"]
    for kind, got in rows.items():
        ms = [r[0] for r in got]
        graded = [r[2] for r in got if r[2] is not None]
        right_s = f"{sum(graded)}/{len(graded)}" if graded else "-"
        out.append(f"| {kind} | {len(got)} | {sum(r[1] for r in got)}/{len(got)} | {right_s} | "
                   f"{statistics.median(ms):.0f} | {percentile(ms, 0.9):.0f} |")
    out += ["", "Answers of the last round:", ""]
    for kind, got in rows.items():
        for (question, _), (ms, called, ok, text) in zip(KINDS[kind], got[-len(KINDS[kind]):]):
            out.append(f"- {question} -> {text!r} ({'tool, ' if called else ''}{ms:.0f} ms"
                       f"{'' if ok is None else ', right' if ok else ', WRONG'})")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench/results/app_tools.md")
    args = parser.parse_args()
    text = run(args.rounds)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
