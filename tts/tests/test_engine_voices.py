"""The Piper engine in-process (real voice) and the voice catalog: determinism, cancel, LRU, aliases,
and each voice's language, which decides how its text is read."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from fastapi.testclient import TestClient

from rvchat_common.models import embedded_piper_voice
from rvchat_tts.app import create_app
from rvchat_tts.engine import Cancelled, CancelToken, PiperEngine
from rvchat_tts.settings import Settings
from rvchat_tts.voices import VoiceCatalog

from .conftest import pcm_to_float, rms

pytestmark = pytest.mark.models

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


# -- the voice's language ------------------------------------------------------------------------

@pytest.fixture()
def german_voices(tmp_path):
    """The embedded model under German names: one config with a language code, one with espeak's only."""
    model, config = embedded_piper_voice()
    cfg = json.loads(config.read_text(encoding="utf-8"))
    german = {**cfg, "language": {"code": "de_DE", "family": "de", "region": "DE"}, "espeak": {"voice": "de"}}
    espeak_only = {k: v for k, v in german.items() if k != "language"}
    for name, voice_cfg in (("de_DE-test-medium", german), ("de-espeak-only", espeak_only)):
        (tmp_path / f"{name}.onnx").symlink_to(model)
        (tmp_path / f"{name}.onnx.json").write_text(json.dumps(voice_cfg), encoding="utf-8")
    return tmp_path


def test_a_voice_language_comes_from_its_config(german_voices) -> None:
    catalog = VoiceCatalog(JOE, str(german_voices))
    assert catalog.language(JOE) == catalog.language(None) == catalog.language("alloy") == "en_US"
    assert catalog.language("de_DE-test-medium") == "de_DE"
    assert catalog.language("de-espeak-only") == "de"
    assert catalog.language("no-such-voice") == "en_US"  # the default voice speaks for it
    languages = {v["name"]: v["language"] for v in catalog.listing()}
    assert languages == {JOE: "en_US", "de_DE-test-medium": "de_DE", "de-espeak-only": "de"}


class RecordingEngine:
    """Records what each voice is asked to read; 0.1 s of silence per sentence."""

    def __init__(self, catalog: VoiceCatalog) -> None:
        self.catalog = catalog
        self.read: list[tuple[str, str]] = []

    def load(self) -> None:
        pass

    def cancel_token(self) -> CancelToken:
        return CancelToken()

    def sample_rate(self, voice: str) -> int:
        return 16000

    def ensure_voice(self, name: str) -> str:
        return name

    def synthesize(self, text: str, voice: str, speed: float = 1.0,
                   cancel: CancelToken | None = None) -> bytes:
        self.read.append((voice, str(text)))
        return b"\0\0" * 1600


def test_a_german_voice_is_read_in_german_over_http_and_websocket(german_voices) -> None:
    # The routes and the WebSocket clean text before they know the voice; the Speaker reads each
    # sentence again for the voice that speaks it.
    engine = RecordingEngine(VoiceCatalog(JOE, str(german_voices)))
    with TestClient(create_app(Settings(log_json=False), engine)) as client:
        r = client.post("/synthesize", json={"text": "Ich habe 42 Äpfel.", "voice": "de_DE-test-medium"})
        assert r.status_code == 200
        r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Es sind -5 Grad.",
                                                  "voice": "de-espeak-only", "response_format": "pcm"})
        assert r.status_code == 200
        assert client.post("/synthesize", json={"text": "I have 42 apples."}).status_code == 200
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["voice"] == JOE
            ws.send_json({"type": "config", "voice": "de_DE-test-medium"})
            assert ws.receive_json() == {"type": "ready", "sample_rate": 16000, "voice": "de_DE-test-medium"}
            ws.send_json({"type": "text", "text": "Im Jahr 1984 waren es 21 Tage."})
            ws.send_json({"type": "flush"})
            event = ws.receive_json()
            assert event["type"] == "audio" and event["text"] == "Im Jahr 1984 waren es 21 Tage."
            assert len(ws.receive_bytes()) == event["bytes"]
            assert ws.receive_json() == {"type": "done", "sentences": 1}
    assert engine.read == [
        ("de_DE-test-medium", "Ich habe zweiundvierzig Äpfel."),
        ("de-espeak-only", "Es sind minus fünf Grad."),
        (JOE, "I have forty-two apples."),
        ("de_DE-test-medium", "Im Jahr neunzehnhundertvierundachtzig waren es einundzwanzig Tage."),
    ]
