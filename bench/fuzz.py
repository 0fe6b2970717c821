"""Schemathesis against every service's OpenAPI, long: at least 2,000 requests per service.

Each service runs as a real process with its real model; schemathesis (one worker, so the load
stays modest on a 2-core machine) generates requests from the service's own OpenAPI with a fixed
seed and checks every answer: no 5xx, status codes, content types and bodies as documented. The
suite runs the same checks with a small budget (tests/test_fuzz.py); this records the long run.

    .venv/bin/python -m bench fuzz          # or: python -m bench.fuzz [MAX_EXAMPLES] [MAX_TIME_S]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.stack import rss_mb, stack

from rvchat_common.testing import FUZZ_CHECKS as CHECKS
from rvchat_common.testing import FUZZ_REQUEST_TIMEOUT_S as REQUEST_TIMEOUT_S
from rvchat_common.testing import FUZZ_SEED as SEED
from rvchat_common.testing import run_schemathesis


# Replies of at most 64 tokens: the fuzz is about the API, and a 2,048-token generation per valid
# request (the first long run: 934 requests in 420 s, a few over 120 s on the busy 2-core box) would
# leave the LLM short of 2,000 requests. The local model's cancellation is tested on its own.
STACK_ENV = {"LLM_MAX_TOKENS": "32", "LLM_MAX_TOKENS_LIMIT": "64"}
# The LLM answers the slowest (it generates for every valid request): twice the time.
TIME_FACTOR = {"llm": 2.0}


def run(max_examples: int = 400, max_time_s: float = 900.0, only: list[str] | None = None) -> str:
    rows = []
    with stack(STACK_ENV) as procs:
        for name, proc in procs.items():
            if only and name not in only:
                continue
            before = rss_mb(proc.proc.pid)
            print(f"   fuzzing {name} ...", flush=True)
            r = run_schemathesis(proc.url, max_examples, max_time_s * TIME_FACTOR.get(name, 1.0))
            alive = proc.alive()
            rows.append((name, r, before, rss_mb(proc.proc.pid) if alive else 0.0, alive))
    lines = [
        "## Fuzzing (schemathesis)",
        "",
        f"Schemathesis {_version()} against each service's own OpenAPI, the real models behind it, one "
        f"worker, seed {SEED}, up to {max_examples} examples per operation and {max_time_s:.0f} s per "
        f"service (the LLM twice that); checks: {CHECKS.replace(',', ', ')}. A request unanswered in "
        f"{REQUEST_TIMEOUT_S} s counts as an error (hang). LLM replies are capped at 64 tokens "
        f"({', '.join(f'{k}={v}' for k, v in STACK_ENV.items())}). `.venv/bin/python -m bench.fuzz "
        "[MAX_EXAMPLES] [MAX_TIME_S] [SERVICE ...]`.",
        "",
        "| service | operations | requests | failures (5xx, schema) | errors (hangs) | time "
        "| RSS before -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r, before, after, alive in rows:
        died = "" if alive else " (DIED)"
        lines.append(f"| {name} | {r['operations']} | {r['generated']} | {r['unique_failures']} | "
                     f"{r['errored']} | {r['seconds']:.0f} s | {before:.0f} -> {after:.0f} MB{died} |")
    failed = [(n, r) for n, r, *_ in rows if r["unique_failures"] or r["errored"]]
    lines += ["", "No failures." if not failed else "Failures:"]
    for name, r in failed:
        lines += ["", f"### {name}", "```", r["output_tail"][-2500:], "```"]
    return "\n".join(lines) + "\n"


def _version() -> str:
    from importlib.metadata import version

    return version("schemathesis")


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[1:3]]
    section = run(int(args[0]) if args else 400, args[1] if len(args) > 1 else 900.0, sys.argv[3:] or None)
    out = Path(__file__).parent / "results" / "fuzz.md"
    out.write_text(section)
    print(section)
