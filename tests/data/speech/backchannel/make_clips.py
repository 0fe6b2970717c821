"""How the clips in this folder were made (run once; the WAVs are committed): two cut out of the MFA
recordings one level up, three said by the project's Piper voice; 150 ms of silence either side.

    .venv/bin/python tests/data/speech/backchannel/make_clips.py
"""

from __future__ import annotations

import wave

import numpy as np

from rvchat_app.testing import load_pcm16
from rvchat_common.audio import float_to_pcm16, resample
from rvchat_common.testing import SPEECH_DIR, speech_sample

RATE = 16000
OUT = SPEECH_DIR / "backchannel"


def write(name: str, audio: np.ndarray) -> None:
    pad = np.zeros(int(0.15 * RATE), np.float32)
    with wave.open(str(OUT / name), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(float_to_pcm16(np.concatenate([pad, audio.astype(np.float32), pad])))


def cut(clip: str, start: float, end: float, fade: float = 0.02) -> np.ndarray:
    """``start``-``end`` s of a recording, faded in and out (the times: faster-whisper base's words)."""
    audio = np.frombuffer(load_pcm16(speech_sample(clip)), "<i2").astype(np.float32) / 32768
    part = audio[int(start * RATE):int(end * RATE)].copy()
    n = int(fade * RATE)
    part[:n] *= np.linspace(0, 1, n)
    part[-n:] *= np.linspace(1, 0, n)
    return part


def main() -> None:
    write("uh_mfa_cold.wav", cut("mfa_cold_corpus.wav", 0.18, 1.06))
    write("right_mfa_reallylong.wav", cut("mfa_reallylong.wav", 2.64, 2.86))

    from rvchat_tts.engine import PiperEngine
    from rvchat_tts.settings import Settings
    from rvchat_tts.voices import VoiceCatalog

    s = Settings()
    engine = PiperEngine(VoiceCatalog(s.voice, s.voices_dir, s.voice_aliases, s.allow_voice_paths))
    engine.load()
    voice = engine.ensure_voice(s.voice)
    for name, text in [("piper_mmhmm.wav", "Mm-hmm."), ("piper_okay.wav", "Okay."), ("piper_yeah.wav", "Yeah.")]:
        audio = np.frombuffer(engine.synthesize(text, voice), "<i2").astype(np.float32) / 32768
        write(name, resample(audio, engine.sample_rate(voice), RATE))


if __name__ == "__main__":
    main()
