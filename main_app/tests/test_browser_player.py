"""Backchannels in the page, in a real Chromium: the player pausing when the user speaks over a reply and
resuming where it paused (main_app's pause_playback / resume_playback; only the static files needed), and
the turn-taking panel's backchannel settings (against main_app)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from .test_browser_page import browser, page, sent_events  # noqa: F401  (the fixtures)

pytestmark = [pytest.mark.browser]

STATIC = Path(__file__).resolve().parents[1] / "rvchat_app" / "static"


@pytest.fixture(scope="module")
def static_url():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(STATIC))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


# Three 400 ms chunks of a tone for turn 1; the third arrives while playback is paused.
SCRIPT = """async () => {
    const { Player } = await import('/player.js');
    const reports = [];
    const player = new Player((r) => reports.push(r));
    const ctx = player.context();
    const rate = 16000;
    const chunk = () => {
        const pcm = new Int16Array(rate * 0.4);
        for (let i = 0; i < pcm.length; i++) pcm[i] = Math.round(3000 * Math.sin(i / 8));
        return pcm.buffer;
    };
    const header = (index) => ({ type: 'audio', turn: 1, index, text: 'x', sample_rate: rate,
                                 bytes: rate * 0.8, duration_ms: 400 });
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const untilTime = async (t) => { while (ctx.currentTime < t) await sleep(10); };
    player.play(header(0), chunk());
    player.play(header(1), chunk());
    await untilTime(ctx.currentTime + 0.5);  // into the second chunk
    player.pause(1);
    const atPause = player.playedMs(1);
    const reported = reports.at(-1);
    await untilTime(ctx.currentTime + 0.6);  // the context keeps running; the reply does not
    const afterWait = player.playedMs(1);
    player.play(header(2), chunk());  // arrives paused: queued, not played
    const queuedWhilePaused = player.playedMs(1) === afterWait && player.paused;
    player.resume();
    player.replyEnded(1);
    const t0 = ctx.currentTime;
    while (!reports.some((r) => r.done) && ctx.currentTime < t0 + 5) await sleep(20);
    return { atPause, reported, afterWait, queuedWhilePaused, end: reports.at(-1),
             chunksPlayed: player.chunksPlayed, resumedFor: ctx.currentTime - t0 };
}"""


def test_pause_keeps_the_rest_and_resume_plays_it_from_there(static_url, page):  # noqa: F811
    page.goto(f"{static_url}/")  # a directory listing: the same origin, without the app connecting
    out = page.evaluate(SCRIPT)
    assert 400 < out["atPause"] < 800, out  # paused inside the second chunk
    assert out["reported"] == {"type": "playback", "turn": 1, "played_ms": round(out["atPause"])}
    assert out["afterWait"] == out["atPause"]  # nothing played while paused
    assert out["queuedWhilePaused"]
    # Every chunk played to its end, once: what was left of the second, then the third.
    assert out["end"]["done"] is True and out["end"]["played_ms"] == pytest.approx(1200, abs=2)
    assert out["chunksPlayed"] == 3
    assert out["resumedFor"] >= (1200 - out["atPause"]) / 1000 - 0.05


@pytest.mark.models
def test_backchannel_settings_are_shown_and_sent(app_service, page):  # noqa: F811
    """The turn-taking panel shows main_app's backchannel settings, and a change goes out as `config`."""
    sent = sent_events(page)
    page.goto(app_service.url)
    page.wait_for_function("window.rvchat && window.rvchat.events.includes('hello')", timeout=15000)
    shown = page.evaluate("""() => {
        const el = (id) => document.getElementById(id);
        return {on: el('bc').checked, words: el('bc-words').value, resume: el('resume').value,
                range: [el('resume').min, el('resume').max, el('resume').step], disabled: el('resume').disabled,
                out: el('resume-out').textContent};
    }""")
    assert shown["on"] is True and shown["words"].startswith("mm-hm, uh-huh, hmm, yeah")
    assert shown["resume"] == "1500" and shown["out"] == "1500 ms"
    assert shown["range"] == ["200", "5000", "50"] and shown["disabled"] is False
    page.click("#breakdown-panel summary")
    page.fill("#bc-words", "yeah, okay ,, oui")
    page.press("#bc-words", "Enter")
    page.uncheck("#bc")
    page.wait_for_function("window.rvchat.events.filter((t) => t === 'config').length >= 2", timeout=10000)
    assert sent == [{"type": "config", "backchannel_words": ["yeah", "okay", "oui"]},
                    {"type": "config", "backchannels": False}]
    page.wait_for_function("!document.getElementById('bc').checked")
    assert page.locator("#bc-words").input_value() == "yeah, okay, oui"  # as main_app has them now
