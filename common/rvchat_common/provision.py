"""Provision the embedded models: ``python -m rvchat_common.provision [--check]``.

Idempotent: files already in place are only checked. ``--check`` also loads
each model with its library, to prove the files are usable.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import models


def _size(path) -> str:
    from pathlib import Path

    p = Path(path)
    total = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return f"{total / 1e6:.0f} MB"


def provision(check: bool = False) -> int:
    steps = [
        ("Silero VAD (ONNX)", lambda: models.silero_vad_file()),
        ("faster-whisper tiny.en", lambda: models.whisper_model("tiny.en")),
        ("faster-whisper base", lambda: models.whisper_model("base")),
        ("Piper en_US-joe-medium", lambda: models.embedded_piper_voice()[0]),
        ("SmolLM2-135M-Instruct GGUF", lambda: models.smollm2_gguf()),
    ]
    failed = 0
    for i, (label, fn) in enumerate(steps, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(steps)}] {label} ...", end=" ", flush=True)
        try:
            path = fn()
            print(f"ok ({_size(path)}, {time.perf_counter() - t0:.1f} s) {path}", flush=True)
        except Exception as exc:
            failed += 1
            print(f"FAILED: {exc}", flush=True)
    if check and not failed:
        failed += _load_all()
    return 1 if failed else 0


def _load_all() -> int:
    """Load every model with its library (slow: only for --check)."""
    print("loading each model to check it ...", flush=True)
    try:
        import onnxruntime
        onnxruntime.InferenceSession(str(models.silero_vad_file()))
        from faster_whisper import WhisperModel
        WhisperModel(models.whisper_model("tiny.en"), device="cpu", compute_type="int8")
        from piper import PiperVoice
        PiperVoice.load(str(models.embedded_piper_voice()[0]))
        from llama_cpp import Llama
        Llama(str(models.smollm2_gguf()), n_ctx=256, verbose=False)
    except Exception as exc:
        print(f"model check FAILED: {exc}", flush=True)
        return 1
    print("all models load", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="also load each model")
    args = parser.parse_args(argv)
    return provision(check=args.check)


if __name__ == "__main__":
    sys.exit(main())
