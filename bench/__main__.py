"""Run the benchmarks and assemble bench/REPORT.md.

Each ``bench/<name>.py`` has ``run() -> str`` returning a Markdown section; the
section is kept in ``bench/results/<name>.md`` so one benchmark can be re-run
without the others, and REPORT.md is rebuilt from all saved sections.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["vad", "stt", "tts", "llm", "answers", "tools", "voice", "echo", "concurrency", "wyoming"]


def main(argv: list[str]) -> int:
    names = argv or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    for name in names:
        print(f"== bench {name}", flush=True)
        t0 = time.perf_counter()
        section = importlib.import_module(f"bench.{name}").run()
        (results / f"{name}.md").write_text(section.rstrip() + "\n")
        print(f"   done in {time.perf_counter() - t0:.0f} s", flush=True)
    parts = [
        "# Benchmark report",
        "",
        f"Machine: {platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}. "
        "Regenerate with `make bench` (or `.venv/bin/python -m bench NAME` for one section).",
        "",
    ]
    for name in ORDER:
        path = results / f"{name}.md"
        if path.exists():
            parts += [path.read_text(), ""]
    (HERE / "REPORT.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
