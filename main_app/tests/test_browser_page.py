"""The page's own behaviour in a real Chromium: settings shown as main_app has them, the mic released when
turned off, and each reply's bubble found by its turn."""

from __future__ import annotations

import json
import wave

import pytest

from rvchat_app.testing import app_env
from rvchat_common.testing import ServiceProcess

pytestmark = [pytest.mark.browser, pytest.mark.models]

CHROMIUM = "/usr/bin/chromium"

# Values a slider cannot land on with the old hard-coded ranges (max 1500, step 25): the page must show
# them as they are, and leave them alone until the user moves a slider.
ENV = {"APP_VAD_MIN_SILENCE_MS": "2000", "APP_VAD_MIN_SPEECH_MS": "235", "APP_VAD_THRESHOLD": "0.37"}


@pytest.fixture(scope="module")
def app_custom(services, tmp_path_factory):
    """A second main_app over the same services, with turn-taking settings of its own."""
    proc = ServiceProcess("rvchat_app", "APP_",
                          app_env(services, tmp_path_factory.mktemp("app_custom") / "rvchat.sqlite3", **ENV))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Chromium whose fake mic plays silence (nothing here needs a voice turn)."""
    from playwright.sync_api import sync_playwright

    wav = tmp_path_factory.mktemp("mic") / "silence.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(b"\0\0" * 48000 * 2)
    args = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


def sent_events(page) -> list[dict]:
    """Every JSON event the page sends on its WebSockets (filled in as they go)."""
    events: list[dict] = []

    def on_frame(payload: str | bytes) -> None:
        if isinstance(payload, str):  # binary frames are mic audio
            events.append(json.loads(payload))

    def on_ws(ws):
        ws.on("framesent", on_frame)

    page.on("websocket", on_ws)
    return events


def test_sliders_take_ranges_and_values_from_the_server(app_custom, page):
    sent = sent_events(page)
    page.goto(app_custom.url)
    page.wait_for_function("window.rvchat && window.rvchat.events.includes('hello')", timeout=15000)

    sliders = page.evaluate("""() => Object.fromEntries(['thr', 'sil', 'minsp'].map((id) => {
        const el = document.getElementById(id);
        return [id, {min: el.min, max: el.max, step: el.step, disabled: el.disabled,
                     shown: document.getElementById(id + '-out').textContent}];
    }))""")
    assert sliders == {
        "thr": {"min": "0.05", "max": "0.95", "step": "0.01", "disabled": False, "shown": "0.37"},
        "sil": {"min": "100", "max": "3000", "step": "10", "disabled": False, "shown": "2000 ms"},
        "minsp": {"min": "50", "max": "2000", "step": "10", "disabled": False, "shown": "235 ms"},
    }
    assert page.locator("#sil").input_value() == "2000"
    assert page.evaluate("document.getElementById('text').maxLength") == 4000

    # The user moves one slider by one step: only that value is sent, and main_app's answer is shown.
    page.click("#breakdown-panel summary")
    page.focus("#sil")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("window.rvchat.events.includes('config')", timeout=10000)
    # Frames go out in order, so a config sent on connect would come before this one.
    assert sent == [{"type": "config", "min_silence_ms": 1990}]
    page.wait_for_function("document.getElementById('sil-out').textContent === '1990 ms'")
    assert page.locator("#minsp-out").inner_text() == "235 ms"  # not the slider's nearest step


MIC_LIVE = "window.rvchat.micOn && window.rvchat.micTrackStates().join() === 'live'"
MIC_RELEASED = "!window.rvchat.micOn && window.rvchat.micTrackStates().join() === 'ended'"


def test_turning_the_mic_off_releases_it(app_service, page):
    page.goto(app_service.url)
    page.wait_for_function("window.rvchat && window.rvchat.connected", timeout=15000)
    page.click("#mic")
    page.wait_for_function(MIC_LIVE, timeout=10000)
    page.click("#mic")
    # A stopped track is what turns the browser's mic indicator off.
    page.wait_for_function(MIC_RELEASED)
    assert page.get_attribute("#mic", "aria-pressed") == "false"
    page.click("#mic")  # and on again: the mic is asked for again
    page.wait_for_function(MIC_LIVE, timeout=10000)


def play_script(app_service, page, events: list[dict]) -> None:
    """Open the page with its /ws answered by a script instead of main_app: a hello, then ``events``."""
    routes = []
    page.route_web_socket("**/ws*", lambda ws: routes.append(ws))
    page.goto(app_service.url)
    page.wait_for_function("window.rvchat && window.rvchat.connected", timeout=10000)
    assert routes, "the page did not open /ws"
    services = {"services": {}, "modes": {"voice_in": True, "voice_out": True, "chat": True}, "notice": ""}
    hello = {"type": "hello", "conversation_id": None, "state": "listening", "input_sample_rate": 16000,
             "config": {"threshold": 0.5, "min_silence_ms": 500, "min_speech_ms": 200, "voice_out": True},
             "services": services}
    for ev in [hello, *events]:
        routes[-1].send(json.dumps(ev))


def test_bubbles_are_found_by_turn(app_service, page):
    """main_app scripted through a mocked /ws: a late `interrupted` of turn 1 arrives while turn 2 streams."""
    script = [
        {"type": "transcript", "turn": 1, "text": "Tell me about otters.", "source": "text", "message_id": 1},
        {"type": "reply_start", "turn": 1, "voice": True},
        {"type": "reply_delta", "turn": 1, "text": "Otters hold hands. They sleep on water."},
        {"type": "stop_playback", "turn": 1, "reason": "new message"},
        {"type": "transcript", "turn": 2, "text": "And seals?", "source": "text", "message_id": 3},
        {"type": "reply_start", "turn": 2, "voice": True},
        {"type": "reply_delta", "turn": 2, "text": "Seals"},
        {"type": "interrupted", "turn": 1, "spoken_text": "Otters hold hands.",
         "full_text": "Otters hold hands. They sleep on water.", "cancelled": ["llm"], "played_ms": 900,
         "message_id": 2, "reason": "new message"},
        {"type": "reply_delta", "turn": 2, "text": " bark."},
        {"type": "partial", "text": "what abo"},
        {"type": "transcript", "turn": 3, "text": "What about whales?", "source": "voice", "message_id": 5},
    ]
    play_script(app_service, page, script)
    page.wait_for_function("window.rvchat.events.length >= 12", timeout=10000)

    bubbles = page.evaluate("""() => [...document.querySelectorAll('#messages .msg')].map((m) => ({
        cls: m.className, turn: m.dataset.turn,
        said: m.querySelector('.body').firstChild?.textContent || '',
        unsaid: m.querySelector('.unsaid')?.textContent || '',
        meta: m.querySelector('.meta')?.textContent || ''}))""")
    assert bubbles == [
        {"cls": "msg user", "turn": "1", "said": "Tell me about otters.", "unsaid": "", "meta": ""},
        {"cls": "msg assistant", "turn": "1", "said": "Otters hold hands.", "unsaid": " They sleep on water.",
         "meta": "interrupted"},
        {"cls": "msg user", "turn": "2", "said": "And seals?", "unsaid": "", "meta": ""},
        {"cls": "msg assistant", "turn": "2", "said": "Seals bark.", "unsaid": "", "meta": ""},
        # The partial bubble became turn 3's message in place.
        {"cls": "msg user", "turn": "3", "said": "What about whales?", "unsaid": "", "meta": "spoken"},
    ]


def test_the_rest_of_an_utterance_replaces_its_first_part(app_service, page):
    """The user went on before any word of the reply to their first part was heard: main_app answers the whole
    utterance as the same stored message, and the page shows it once, without the unheard reply."""
    script = [
        {"type": "transcript", "turn": 1, "text": "Hi.", "source": "text", "message_id": 1},
        {"type": "reply_start", "turn": 1, "voice": True},
        {"type": "reply_delta", "turn": 1, "text": "Hello!"},
        {"type": "reply_end", "turn": 1, "text": "Hello!", "message_id": 2, "interrupted": False},
        {"type": "transcript", "turn": 2, "text": "The weather", "source": "voice", "message_id": 3},
        {"type": "reply_start", "turn": 2, "voice": True},
        {"type": "reply_delta", "turn": 2, "text": "The weather is"},
        {"type": "pause_playback", "turn": 2},
        {"type": "stop_playback", "turn": 2, "reason": "barge-in"},
        {"type": "partial", "text": "in Paris"},
        {"type": "transcript", "turn": 3, "text": "The weather in Paris tomorrow?", "source": "voice",
         "message_id": 3},
        {"type": "interrupted", "turn": 2, "spoken_text": "", "full_text": "The weather is", "cancelled": ["llm"],
         "played_ms": 0, "message_id": 4, "reason": "barge-in"},
        {"type": "reply_start", "turn": 3, "voice": True},
        {"type": "reply_delta", "turn": 3, "text": "Sunny."},
    ]
    play_script(app_service, page, script)
    page.wait_for_function(f"window.rvchat.events.length >= {len(script) + 1}", timeout=10000)
    bubbles = page.evaluate("""() => [...document.querySelectorAll('#messages .msg')].map((m) => [
        m.className, m.dataset.turn, m.querySelector('.body').textContent])""")
    assert bubbles == [["msg user", "1", "Hi."], ["msg assistant", "1", "Hello!"],
                       ["msg user", "3", "The weather in Paris tomorrow?"], ["msg assistant", "3", "Sunny."]]


def test_per_turn_bookkeeping_is_bounded(app_service, page):
    page.goto(app_service.url)
    page.wait_for_function("window.rvchat !== undefined", timeout=10000)
    kept = page.evaluate("""async () => {
        const { RecentMap } = await import('/static/player.js');
        const m = new RecentMap(3);
        for (let turn = 1; turn <= 10; turn++) m.set(turn, turn * 100);
        m.set(8, 1);  // updating a turn keeps it among the recent ones
        m.set(11, 1);
        return [...m.keys()];
    }""")
    assert kept == [10, 8, 11]
