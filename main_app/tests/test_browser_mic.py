"""The page's mic resampling, in a real Chromium: static/worklet.js in an OfflineAudioContext at the rates
browsers run at, fed real speech and tones, against the server's resampler (rvchat_common.audio)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from rvchat_app.testing import load_pcm16
from rvchat_common.audio import resample
from rvchat_common.testing import speech_sample

from .test_browser_page import browser, page  # noqa: F401  (the fixtures)
from .test_browser_player import static_url  # noqa: F401

pytestmark = [pytest.mark.browser]

# Renders `signal` (float32 at `rate`, base64) through the mic worklet; returns the 16 kHz PCM16 it posted.
SCRIPT = """async ({rate, signal}) => {
    const bytes = Uint8Array.from(atob(signal), (c) => c.charCodeAt(0));
    const x = new Float32Array(bytes.buffer);
    const ctx = new OfflineAudioContext(1, x.length + Math.round(rate * 0.1), rate);
    await ctx.audioWorklet.addModule('/worklet.js');
    const node = new AudioWorkletNode(ctx, 'mic-processor');
    const frames = [];
    node.port.onmessage = (e) => frames.push(new Uint8Array(e.data.pcm));
    const buffer = ctx.createBuffer(1, x.length, rate);
    buffer.copyToChannel(x, 0);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(node);
    node.connect(ctx.destination);
    source.start();
    await ctx.startRendering();
    let seen = -1;  // frames posted during the render may still be on their way
    while (seen !== frames.length) { seen = frames.length; await new Promise((r) => setTimeout(r, 150)); }
    let s = '';
    for (const f of frames) for (let i = 0; i < f.length; i += 0x8000) s += String.fromCharCode(...f.subarray(i, i + 0x8000));
    return btoa(s);
}"""


def through_page(page, static_url, x: np.ndarray, rate: int) -> np.ndarray:  # noqa: F811
    page.goto(f"{static_url}/")  # a directory listing: the same origin, without the app connecting
    out = page.evaluate(SCRIPT, {"rate": rate, "signal": base64.b64encode(x.astype("<f4").tobytes()).decode()})
    return np.frombuffer(base64.b64decode(out), dtype="<i2").astype(np.float64) / 32768.0


@pytest.mark.parametrize("rate", [44100, 48000, 16000])
def test_the_page_resamples_speech_as_the_server_does(page, static_url, rate):  # noqa: F811
    """The soft half of a falsetto, where Silero lost most of its speech windows after the page's old box
    filter at 44.1 kHz: the page's 16 kHz is the server's resampling of the same signal, to 2 LSB."""
    speech = np.frombuffer(load_pcm16(speech_sample("mfa_falsetto.wav")), "<i2").astype(np.float32) / 32768
    x = resample(speech, 16000, rate)  # what a mic at that rate hands the page
    got = through_page(page, static_url, x, rate)
    want = resample(np.concatenate([x, np.zeros(round(rate * 0.1), np.float32)]), rate, 16000)
    assert got.size >= speech.size - 320  # every whole 20 ms frame of the signal was posted
    n = min(got.size, want.size)
    assert np.abs(got[:n] - want[:n]).max() <= 2 / 32768
    assert np.abs(got[:speech.size] - speech[:min(n, speech.size)]).max() < 0.01  # and it is the recording


@pytest.mark.parametrize("rate", [44100, 48000])
def test_the_page_keeps_speech_band_tones_and_drops_what_would_alias(page, static_url, rate):  # noqa: F811
    t = np.arange(rate) / rate
    for freq, low, high in [(1000, 0.98, 1.02), (6000, 0.98, 1.02), (12000, 0, 1e-3)]:
        got = through_page(page, static_url, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
        middle = got[4000:12000]  # away from the onset and the end
        gain = np.sqrt(2 * np.mean(middle ** 2)) / 0.5
        assert low <= gain <= high, (freq, gain)  # 12 kHz would fold onto 4 kHz: down 60 dB or more
