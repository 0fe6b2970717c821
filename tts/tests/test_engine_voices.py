"""The Piper engine in-process (real voice) and the voice catalog: determinism, cancel, LRU, aliases."""

from __future__ import annotations

import shutil
import threading

import pytest

from rvchat_common.models import embedded_piper_voice
from rvchat_tts.engine import Cancelled, PiperEngine
from rvchat_tts.voices import VoiceCatalog

from .conftest import pcm_to_float, rms

JOE = "en_US-joe-medium"


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    eng = PiperEngine(VoiceCatalog(JOE), noise_scale=0.0, noise_w=0.0)
    eng.load()
    return eng


@pytest.fixture()
def voices_dir(tmp_path):
    """A voices folder holding copies of the embedded voice under other names."""
    model, config = embedded_piper_voice()
    for name in ("en_US-amy-medium", "en_US-ryan-medium", "custom-voice"):
        (tmp_path / f"{name}.onnx").symlink_to(model)
        shutil.copyfile(config, tmp_path / f"{name}.onnx.json")
    return tmp_path


def test_noise_free_synthesis_is_deterministic(engine) -> None:
    a = engine.synthesize("Same text, same sound.", JOE)
    b = engine.synthesize("Same text, same sound.", JOE)
    assert a == b and rms(pcm_to_float(a)) > 0.03


def test_speed_scales_length(engine) -> None:
    normal = len(engine.synthesize("A sentence of moderate length.", JOE, 1.0))
    fast = len(engine.synthesize("A sentence of moderate length.", JOE, 2.0))
    assert 1.6 < normal / fast < 2.4


def test_cancel_from_another_thread_abandons_synthesis(engine) -> None:
    token = engine.cancel_token()
    text = " ".join(f"This is sentence {i} of a very long answer." for i in range(40))  # ~20 s of work
    timer = threading.Timer(0.3, token.cancel)
    timer.start()
    with pytest.raises(Cancelled):
        engine.synthesize(text, JOE, 1.0, token)
    timer.join()
    # A cancelled token refuses new work; a fresh one works.
    with pytest.raises(Cancelled):
        engine.synthesize("Hello.", JOE, 1.0, token)
    assert engine.synthesize("Hello.", JOE, 1.0, engine.cancel_token())


def test_aliases_prefer_installed_voices_of_the_right_kind(voices_dir) -> None:
    catalog = VoiceCatalog(JOE, str(voices_dir))
    aliases = catalog.aliases()
    assert aliases["en_female"] == aliases["nova"] == aliases["shimmer"] == "en_US-amy-medium"
    assert aliases["en_male"] == aliases["onyx"] == JOE
    assert aliases["alloy"] == aliases["default"] == JOE
    assert catalog.resolve("EN_US-RYAN-MEDIUM").voice == "en_US-ryan-medium"
    assert catalog.resolve("custom-voice").voice == "custom-voice"
    names = {v["name"] for v in catalog.listing()}
    assert names == {JOE, "en_US-amy-medium", "en_US-ryan-medium", "custom-voice"}


def test_unknown_names_and_paths_fall_back_to_the_default(voices_dir) -> None:
    catalog = VoiceCatalog(JOE, str(voices_dir))
    for name in ("nope", "../../etc/passwd", str(voices_dir / "custom-voice.onnx"), "x" * 5000):
        resolved = catalog.resolve(name)
        assert resolved.voice == JOE and resolved.fallback
    assert not catalog.resolve(None).fallback and catalog.resolve("").voice == JOE
    # Paths only when the operator allows them.
    permissive = VoiceCatalog(JOE, None, allow_paths=True)
    path = str(voices_dir / "custom-voice.onnx")
    assert permissive.resolve(path).voice == path and not permissive.resolve(path).fallback


def test_operator_aliases_override_builtin_ones(voices_dir) -> None:
    extra = '{"en_female": "en_US-ryan-medium", "robot": "custom-voice", "ghost": "not-installed"}'
    catalog = VoiceCatalog(JOE, str(voices_dir), extra)
    assert catalog.resolve("en_female").voice == "en_US-ryan-medium"
    assert catalog.resolve("robot").voice == "custom-voice"
    assert catalog.resolve("ghost").voice == JOE
    assert VoiceCatalog(JOE, None, "not json").resolve("robot").fallback  # bad setting: ignored, logged


def test_voices_load_lazily_into_a_bounded_cache(voices_dir) -> None:
    eng = PiperEngine(VoiceCatalog(JOE, str(voices_dir)), cache_size=2, noise_scale=0.0, noise_w=0.0)
    eng.load()
    assert list(eng._voices) == [JOE]
    eng.synthesize("Amy speaks.", "en_US-amy-medium")
    assert list(eng._voices) == [JOE, "en_US-amy-medium"]
    eng.synthesize("Ryan speaks.", "en_US-ryan-medium")
    assert list(eng._voices) == [JOE, "en_US-ryan-medium"]  # amy evicted, the default kept
    # Same model file under another name: same audio.
    assert eng.synthesize("Same voice.", "custom-voice") == eng.synthesize("Same voice.", JOE)


def test_a_broken_voice_file_falls_back_to_the_default(tmp_path) -> None:
    model, config = embedded_piper_voice()
    (tmp_path / "broken.onnx").write_bytes(b"this is not an onnx model")
    shutil.copyfile(config, tmp_path / "broken.onnx.json")
    eng = PiperEngine(VoiceCatalog(JOE, str(tmp_path)))
    eng.load()
    assert eng.ensure_voice("broken") == JOE
