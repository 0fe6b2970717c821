"""Audio fixtures made from a real speech sample with ffmpeg, once per session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rvchat_common.testing import speech_sample

SAMPLE = speech_sample("ljspeech_LJ001-0002.wav")  # 1.9 s of speech, 16 kHz mono

# format -> ffmpeg output arguments
FORMATS = {
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "ogg": ["-ar", "48000", "-c:a", "libopus", "-b:a", "32k"],
    "webm": ["-ar", "48000", "-c:a", "libopus", "-b:a", "32k"],
    "m4a": ["-c:a", "aac", "-b:a", "64k"],
}


@pytest.fixture(scope="session")
def audio_files(tmp_path_factory) -> dict[str, Path]:
    if not shutil.which("ffmpeg"):
        pytest.fail("ffmpeg is missing: run `make test` (it installs the test's Debian packages)")
    out = tmp_path_factory.mktemp("audio")
    files = {}
    for ext, args in FORMATS.items():
        path = out / f"sample.{ext}"
        # Stereo at 44.1 kHz (48 kHz for opus), so decoding must resample and downmix too.
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(SAMPLE), "-ar", "44100", "-ac", "2",
                        *args, str(path)], check=True)
        files[ext] = path
    return files
