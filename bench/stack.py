"""The five services as real processes on free ports, for the fuzz and soak benchmarks."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rvchat_common.testing import ServiceProcess

SERVICES = {  # name -> (module, env prefix)
    "vad": ("rvchat_vad", "VAD_"),
    "stt": ("rvchat_stt", "STT_"),
    "tts": ("rvchat_tts", "TTS_"),
    "llm": ("rvchat_llm", "LLM_"),
    "app": ("rvchat_app", "APP_"),
}


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (no psutil needed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def stack(env: dict[str, str] | None = None) -> Iterator[dict[str, ServiceProcess]]:
    """Start VAD, STT, TTS, LLM (local model) and main_app wired to them; stop them all at the end."""
    procs: dict[str, ServiceProcess] = {}
    db = Path(tempfile.mkdtemp(prefix="rvchat-bench-")) / "rvchat.sqlite3"
    try:
        for name, (module, prefix) in SERVICES.items():
            extra = {f"{prefix}LOG_LEVEL": "warning", **(env or {})}
            if name == "llm":
                extra.setdefault("LLM_PROVIDER", "local")
            if name == "app":
                extra.update({f"APP_{n.upper()}_URL": p.url for n, p in procs.items()})
                extra["APP_DB_PATH"] = str(db)
            procs[name] = ServiceProcess(module, prefix, extra).start()
        yield procs
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()
