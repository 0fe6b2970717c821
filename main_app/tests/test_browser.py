"""A real Chromium loads the page, hears a WAV through its fake mic, shows the turn and plays the reply."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from rvchat_app.testing import load_pcm16
from rvchat_common.testing import speech_sample

pytestmark = [pytest.mark.browser, pytest.mark.models]

CHROMIUM = "/usr/bin/chromium"


def fake_mic_wav(path, clip: str, silence_s: float = 10.0, rate: int = 48000) -> None:
    """Speech then a long silence: Chromium loops the file, and the reply must fit in the gap."""
    pcm = np.frombuffer(load_pcm16(speech_sample(clip)), dtype="<i2").astype(np.float32)
    lead = np.zeros(int(16000 * 0.5), dtype=np.float32)
    audio = np.concatenate([lead, pcm, np.zeros(int(16000 * silence_s), dtype=np.float32)])
    up = np.interp(np.arange(int(audio.size * rate / 16000)) * 16000 / rate, np.arange(audio.size), audio)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(up, -32768, 32767).astype("<i2").tobytes())


def test_page_hears_speech_and_plays_the_reply(app_service, tmp_path):
    from playwright.sync_api import sync_playwright

    wav = tmp_path / "mic.wav"
    fake_mic_wav(wav, "librispeech_61-70968-0000.wav")
    args = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_page()
            logs: list[str] = []
            page.on("console", lambda m: logs.append(m.text))
            page.goto(app_service.url)
            page.wait_for_function("window.rvchat && window.rvchat.connected", timeout=15000)
            page.click("#mic")
            page.wait_for_function("window.rvchat.micStarted", timeout=10000)
            page.wait_for_function("window.rvchat.transcripts.length >= 1", timeout=60000)
            page.wait_for_function("window.rvchat.replies.length >= 1", timeout=90000)
            page.wait_for_function("window.rvchat.audioChunksPlayed >= 1", timeout=60000)
            stats = page.evaluate("({t: window.rvchat.transcripts, r: window.rvchat.replies, "
                                  "played: window.rvchat.playedMs, chunks: window.rvchat.audioChunksPlayed, "
                                  "lat: window.rvchat.latencies, cid: window.rvchat.conversationId})")
            assert "wizard" in stats["t"][0].lower(), (stats, logs)
            assert stats["r"][0].strip()
            assert stats["played"] > 200 and stats["chunks"] >= 1
            assert stats["lat"] and stats["lat"][0]["total_ms"] > 0
            # The page shows the turn, remembers the conversation, and lists it.
            assert page.locator(".msg.user").first.inner_text().strip()
            assert page.locator(".msg.assistant").first.inner_text().strip()
            assert stats["cid"] and f"c={stats['cid']}" in page.url
            page.wait_for_selector("#conv-list li", timeout=20000)
            # A reload resumes the same conversation with its messages.
            page.reload()
            page.wait_for_function("window.rvchat && window.rvchat.connected", timeout=15000)
            page.wait_for_selector(".msg.user", timeout=10000)
            assert page.evaluate("window.rvchat.conversationId") == stats["cid"]
        finally:
            browser.close()
