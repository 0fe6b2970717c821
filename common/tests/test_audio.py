import base64
import io
import wave

import numpy as np
import pytest

from rvchat_common import audio
from rvchat_common.errors import APIError
from rvchat_common.testing import long_flac

from .conftest import FORMATS, SAMPLE

# Uploads are decoded by PyAV where it is installed (here, and in the STT and TTS images) and by
# libsndfile where it is not (the VAD and main_app images): the decoding tests run on both.
SNDFILE_FORMATS = {"wav", "flac", "mp3", "ogg"}


@pytest.fixture(params=["av", "sndfile"])
def decoder(request, monkeypatch) -> str:
    if request.param == "sndfile":
        monkeypatch.setattr(audio, "_pyav", lambda: None)
    return request.param


def _energy(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_decodes_every_format_to_16k_mono(audio_files, fmt, decoder):
    ref = audio.decode_audio(SAMPLE.read_bytes())
    if decoder == "sndfile" and fmt not in SNDFILE_FORMATS:
        with pytest.raises(APIError) as err:
            audio.decode_audio(audio_files[fmt].read_bytes())
        assert err.value.status == 415 and err.value.code == "unsupported_audio"
        assert "webm and m4a need" in err.value.message
        return
    out = audio.decode_audio(audio_files[fmt].read_bytes())
    assert out.dtype == np.float32 and out.ndim == 1
    # Same duration within codec padding (encoders add up to ~50 ms of priming).
    assert abs(out.size - ref.size) / audio.SAMPLE_RATE < 0.08
    # Same loudness: the signal survived resampling and downmixing. ffmpeg made the stereo files at
    # -3 dB a channel; libswresample's downmix sums the two at -3 dB, libsndfile's is their mean.
    level = 1.0 if decoder == "av" else 2 ** -0.5
    assert _energy(out) == pytest.approx(_energy(ref) * level, rel=0.25)
    assert np.abs(out).max() <= 1.0


def test_wav_decode_is_sample_exact(decoder):
    with wave.open(str(SAMPLE)) as w:
        raw = w.readframes(w.getnframes())
    out = audio.decode_audio(SAMPLE.read_bytes())
    assert np.allclose(out, audio.pcm16_to_float(raw), atol=1e-4)


def test_raw_pcm_is_resampled_from_its_rate():
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)).astype(np.float32)
    out = audio.decode_audio(audio.float_to_pcm16(tone), content_type="audio/pcm", sample_rate=48000)
    assert out.size == 16000
    # The tone is still 440 Hz after resampling.
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / out.size - 440) < 2


@pytest.mark.parametrize(
    "data,ctype,rate,status,code",
    [
        (b"", None, None, 400, "empty_audio"),
        (b"this is plainly not audio at all" * 20, None, None, 415, "unsupported_audio"),
        (b"\x00\x01\x02", "audio/pcm", 16000, 400, "invalid_audio"),
        (b"\x00\x01", "audio/pcm", 100, 400, "invalid_sample_rate"),
    ],
)
def test_bad_audio_is_a_clear_4xx(data, ctype, rate, status, code, decoder):
    with pytest.raises(APIError) as err:
        audio.decode_audio(data, content_type=ctype, sample_rate=rate)
    assert err.value.status == status and err.value.code == code


def test_truncated_file_keeps_what_decodes_or_says_corrupt(audio_files, decoder):
    data = audio_files["mp3"].read_bytes()
    out = audio.decode_audio(data[: len(data) // 2])
    assert 0.5 < out.size / audio.SAMPLE_RATE < 1.5
    with pytest.raises(APIError) as err:
        audio.decode_audio(SAMPLE.read_bytes()[:30])  # a WAV header cut short
    assert 400 <= err.value.status < 500


def test_too_long_audio_is_413(decoder):
    pcm = audio.float_to_pcm16(np.zeros(16000 * 3, dtype=np.float32))
    with pytest.raises(APIError) as err:
        audio.decode_audio(audio.wav_bytes(pcm, 16000), max_seconds=1)
    assert err.value.status == 413


@pytest.fixture(scope="module")
def three_hour_flac() -> bytes:
    return long_flac(3 * 3600)


def test_a_three_hour_flac_is_refused_from_its_header_before_decoding(three_hour_flac, decoder):
    import time

    t0 = time.perf_counter()
    with pytest.raises(APIError) as err:
        audio.decode_audio(three_hour_flac, "audio/flac", max_seconds=1800)
    assert err.value.status == 413 and err.value.code == "audio_too_long"
    assert "10800 s" in err.value.message
    assert time.perf_counter() - t0 < 0.5  # decoding it all took 38 s and 1.7 GB


def test_without_a_stated_length_decoding_stops_at_the_limit(three_hour_flac, monkeypatch, decoder):
    import tracemalloc

    monkeypatch.setattr(audio, "_check_declared", lambda *a: None)  # a header that says nothing
    tracemalloc.start()
    try:
        with pytest.raises(APIError) as err:
            audio.decode_audio(three_hour_flac, "audio/flac", max_seconds=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.status == 413
    # 60 s at 16 kHz float32 is 3.8 MB; the whole file decoded would be 691 MB.
    assert peak < 20e6, peak


def test_raw_pcm_length_is_checked_before_conversion(monkeypatch):
    pcm = bytes(2 * 4000 * 100)  # 100 s at 4 kHz: the byte count says so
    monkeypatch.setattr(audio, "pcm16_to_float", lambda data: pytest.fail("converted before the check"))
    with pytest.raises(APIError) as err:
        audio.decode_audio(pcm, "audio/pcm", sample_rate=4000, max_seconds=60)
    assert err.value.status == 413 and err.value.code == "audio_too_long"


def test_wav_and_base64_round_trip():
    pcm = audio.float_to_pcm16(np.linspace(-1, 1, 2205, dtype=np.float32))
    wav = audio.wav_bytes(pcm, 22050)
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (22050, 1, 2)
        assert w.readframes(w.getnframes()) == pcm
    payload = audio.base64_audio(pcm, 22050)
    assert base64.b64decode(payload["audio"]) == wav
    assert payload["duration"] == pytest.approx(0.1, abs=1e-3)


def test_streaming_wav_header_is_readable_by_decoders(decoder):
    pcm = audio.float_to_pcm16(np.full(1600, 0.25, dtype=np.float32))
    out = audio.decode_audio(audio.wav_header(16000) + pcm)
    assert out.size == 1600


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stream_resampler_matches_one_shot_resample(rate):
    # Frames of random sizes (1 sample up) give the samples of the whole signal resampled at once:
    # the filter carries its state over frame edges, and the stream clock does not drift.
    t = np.arange(rate * 2) / rate
    x = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    rs = audio.Resampler(rate)
    rng = np.random.default_rng(2)
    out, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 2000))
        out.append(rs(x[i:i + n]))
        i += n
    out.append(rs.flush())
    y = np.concatenate(out)
    ref = audio.resample(x, rate)
    assert y.size == ref.size == 32000
    assert np.max(np.abs(y - ref)) < 1e-4
    # And it is a good resampler: the 300 Hz tone is intact.
    tone = 0.5 * np.sin(2 * np.pi * 300 * np.arange(32000) / 16000)
    assert np.max(np.abs(ref[100:-100] - tone[100:-100])) < 0.02


def test_resampler_passes_16k_through_untouched():
    x = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    rs = audio.Resampler(16000)
    assert rs(x) is not None and np.array_equal(rs(x), x) and rs.flush().size == 0


@pytest.mark.parametrize("rate", [8000, 24000, 44100, 48000])
def test_live_resampler_holds_back_only_its_look_ahead(rate):
    # A mic frame's samples come out with the frame, less 1.6 ms of look-ahead (3.3 ms at 8 kHz):
    # libsoxr's stream held 20-40 ms back, which the end of a live turn would wait for.
    rs = audio.Resampler(rate)
    frame = rate // 50  # 20 ms
    out = 0
    for k in range(1, 51):
        out += rs(np.zeros(frame, np.float32)).size
        assert k * 320 - out <= 0.0035 * 16000, (k, out)


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_resampler_keeps_the_band_and_stops_aliases(rate):
    t = np.arange(rate) / rate
    kept = audio.resample((0.5 * np.sin(2 * np.pi * 7000 * t)).astype(np.float32), rate)
    folded = audio.resample((0.5 * np.sin(2 * np.pi * 8600 * t)).astype(np.float32), rate)
    assert _energy(kept[200:-200]) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)  # 7 kHz passes (-0.3 dB)
    assert _energy(folded[200:-200]) < 0.5 / np.sqrt(2) * 10 ** (-60 / 20)  # 8.6 kHz: 60 dB down
