"""The self-hearing guard (echo.py) on real recordings played through synthetic rooms.

Fast tests drive :class:`EchoGuard` offline (a reply played through a :class:`Room` into the mic,
20 ms frames at real time); the model tests put its residual through the real Silero VAD with the
barge-in settings, and through main_app over the real services with the loopback page.
"""

from __future__ import annotations

import numpy as np
import pytest
from rvchat_app.echo import HOP, PAGE_LEAD_S, EchoGuard
from rvchat_app.loopback import RATE, Room, guarded, talked_over, through_room
from rvchat_app.testing import load_pcm16
from rvchat_common.testing import speech_sample

REPLY = "ljspeech_LJ001-0001.wav"  # 9.7 s of a female reader: the assistant's voice offline
USER = "mfa_thoughts.wav"  # a male voice, 9 dB quieter than the reply: a hard user to hear over it


def clip(name: str) -> np.ndarray:
    return np.frombuffer(load_pcm16(speech_sample(name)), dtype="<i2").astype(np.float32) / 32768.0


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-20))


def active(x: np.ndarray) -> np.ndarray:
    """The 20 ms frames of ``x`` within 30 dB of its loudest (where someone speaks)."""
    frames = x[: x.size // 320 * 320].reshape(-1, 320)
    level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20)
    return level > level.max() - 30


def test_with_no_reply_playing_the_residual_is_the_mic():
    mic = clip(USER)
    res = guarded(mic, np.zeros(0, np.float32), 0, EchoGuard())
    sent = (np.clip(mic, -1, 1) * 32767).astype("<i2").astype(np.float32) / 32768.0
    valid = mic.size // 320 * 320 // HOP * HOP - HOP  # the last partial frame is still inside the guard
    assert np.max(np.abs(res[:valid] - sent[:valid])) <= 1 / 32768


@pytest.mark.parametrize("delay_ms,gain_db", [(50, -6), (150, -12), (250, -20)])
def test_the_echo_is_found_and_taken_out(delay_ms, gain_db):
    reply = clip(REPLY)
    room = Room(delay_ms=delay_ms, gain_db=gain_db)
    mic, start = through_room(reply, room)
    guard = EchoGuard()
    res = guarded(mic, reply, start, guard)
    assert guard.delay is not None and abs(guard.delay * HOP / RATE * 1000 - delay_ms) <= 32
    # After the first 2 s (the delay is found, the gains learnt), the echo is at least 20 dB down.
    late = slice(start + 2 * RATE, start + reply.size)
    assert db(res[late]) < db(mic[late]) - 20, (db(mic[late]), db(res[late]))


def test_the_user_talking_over_the_reply_is_kept():
    reply, user = clip(REPLY), clip(USER)
    room = Room(delay_ms=150, gain_db=-12)
    at = 4.0
    mic, start = through_room(reply, room, user=user, user_at_s=at)
    res = guarded(mic, reply, start, EchoGuard())
    span = slice(int(at * RATE), int(at * RATE) + user.size)
    speaking = np.repeat(active(user), 320)
    n = min(speaking.size, mic.size - span.start)
    spoken = np.zeros(mic.size, bool)
    spoken[span.start:span.start + n] = speaking[:n]
    # Where the user speaks, most of their voice is left (bins under the echo's margin go): within 4 dB;
    # where only the echo is, next to nothing.
    assert db(res[spoken]) > db(user[:n][speaking[:n]]) - 4, (db(res[spoken]), db(user[:n][speaking[:n]]))
    echo_only = np.zeros(mic.size, bool)
    echo_only[start + 2 * RATE:start + reply.size] = True
    echo_only[span] = False
    assert db(res[echo_only]) < db(mic[echo_only]) - 20


def test_with_headphones_the_guard_stands_aside():
    """The reply plays but never reaches the mic: within a few seconds the user is heard as if unguarded."""
    reply, user = clip(REPLY), clip(USER)
    at = 4.0
    mic, start = through_room(reply, Room(gain_db=-200), user=user, user_at_s=at)
    guard = EchoGuard()
    res = guarded(mic, reply, start, guard)
    span = slice(int(at * RATE), int(at * RATE) + user.size)
    assert guard.delay is None and guard.no_echo
    assert db(res[span]) > db(mic[span]) - 0.5, (db(res[span]), db(mic[span]))


def test_a_stopped_reply_no_longer_masks_the_user():
    """Barge-in: the page stops playing; the user's words after it are not taken for the reply's echo."""
    reply, user = clip(REPLY), clip(USER)
    room = Room(delay_ms=150, gain_db=-12)
    stop_s, at = 4.0, 4.2
    played = reply[: int((stop_s - 1.0) * RATE)]  # the reply starts at 1.0 s and is cut at stop_s
    mic, start = through_room(played, room, user=user, user_at_s=at, tail_s=8.0)
    guard = EchoGuard()
    pcm = (np.clip(mic, -1, 1) * 32767).astype("<i2").tobytes()
    out = []
    for i in range(len(pcm) // 640):
        t = (i + 1) * 320 / RATE
        out.append(guard.near(pcm[i * 640:(i + 1) * 640], t))
        if i == 0:
            guard.far(reply, start / RATE - PAGE_LEAD_S)  # the whole reply, sent as it starts
        if abs(t - stop_s) < 0.01:
            guard.stop(t)
    res = np.frombuffer(b"".join(out), dtype="<i2").astype(np.float32)[HOP:] / 32768.0
    echo = slice(start + 2 * RATE, int(stop_s * RATE))
    assert db(res[echo]) < db(mic[echo]) - 20  # the echo was taken out while the reply played
    words = slice(int((at + 0.5) * RATE), int(at * RATE) + user.size - HOP)  # past the echo's ring-out
    assert db(res[words]) > db(mic[words]) - 0.5  # and nothing of the user's words after it


def test_pause_and_resume_move_the_reference():
    """A backchannel pause: the page holds the rest of the reply and plays it on after the resume."""
    reply = clip(REPLY)
    room = Room(delay_ms=100, gain_db=-10)
    pause_s, resume_s = 4.0, 5.5
    first = reply[: int((pause_s - 1.0) * RATE)]
    heard = np.concatenate([first, np.zeros(int((resume_s - pause_s) * RATE), np.float32),
                            reply[first.size:]])
    mic, start = through_room(heard, room)
    guard = EchoGuard()
    pcm = (np.clip(mic, -1, 1) * 32767).astype("<i2").tobytes()
    out = []
    for i in range(len(pcm) // 640):
        t = (i + 1) * 320 / RATE
        out.append(guard.near(pcm[i * 640:(i + 1) * 640], t))
        if i == 0:
            guard.far(reply, start / RATE - PAGE_LEAD_S)
        if abs(t - pause_s) < 0.01:
            guard.pause(t)
        if abs(t - resume_s) < 0.01:
            guard.resume(t)
    res = np.frombuffer(b"".join(out), dtype="<i2").astype(np.float32)[HOP:] / 32768.0
    after = slice(int((resume_s + 0.5) * RATE), start + heard.size - RATE)
    assert db(res[after]) < db(mic[after]) - 20


# --------------------------------------------------------------------------- the real Silero VAD
@pytest.fixture(scope="module")
def silero():
    from rvchat_vad.engine import SileroEngine

    engine = SileroEngine()
    engine.load()
    return engine


@pytest.fixture(scope="module")
def tts_reply() -> np.ndarray:
    """A reply in the assistant's real voice (Piper, the embedded default), at 16 kHz."""
    from rvchat_common.audio import resample
    from rvchat_tts.engine import PiperEngine
    from rvchat_tts.voices import VoiceCatalog

    voice = "en_US-joe-medium"
    engine = PiperEngine(VoiceCatalog(voice))
    engine.load()
    pcm = engine.synthesize("The capital of France is Paris. It is a lovely city with many museums, cafes and "
                            "old bridges over the river. Would you like to hear more about its history?", voice)
    rate = engine.sample_rate(voice)
    return resample(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, rate, RATE)


def speech_starts(engine, audio: np.ndarray) -> list[float]:
    """Where the VAD would say speech starts, with main_app's settings while the assistant speaks
    (APP_BARGE_IN_THRESHOLD 0.7, APP_VAD_MIN_SPEECH_MS 200): the seconds at which it would say so."""
    from rvchat_vad.turns import TurnConfig, TurnDetector

    stream = engine.new_stream()
    detector = TurnDetector(TurnConfig(threshold=0.7, min_speech_ms=200, min_silence_ms=500), 512 / RATE)
    starts = []
    for i in range(audio.size // 512):
        for event in detector.step(i * 512 / RATE, stream(audio[i * 512:(i + 1) * 512])):
            if event.type == "speech_start":
                starts.append((i + 1) * 512 / RATE)
    return starts


ROOMS = [(d, g) for d in (50, 150, 250) for g in (-6, -12, -20)]


@pytest.mark.models
@pytest.mark.parametrize("delay_ms,gain_db", ROOMS)
def test_the_vad_does_not_hear_the_echo_but_hears_the_user(silero, tts_reply, delay_ms, gain_db):
    room = Room(delay_ms=delay_ms, gain_db=gain_db, seed=delay_ms)
    mic, start = through_room(tts_reply, room)
    assert speech_starts(silero, mic), "without the guard the VAD hears the echo (else this test shows nothing)"
    assert speech_starts(silero, guarded(mic, tts_reply, start, EchoGuard())) == []
    # The user talks over the reply 2 s into it: the VAD hears them.
    user = clip(USER)
    onset = silero.detect(user, threshold=0.5, min_speech_ms=100, min_silence_ms=100, speech_pad_ms=0)[0][0]
    at = start / RATE + 2.0
    mic, start = through_room(tts_reply, room, user=user, user_at_s=at)
    starts = speech_starts(silero, guarded(mic, tts_reply, start, EchoGuard()))
    assert starts and starts[0] > at + onset, (starts, at + onset)


def level_db(x: np.ndarray) -> float:
    """The level of ``x`` where someone speaks (its 20 ms frames within 30 dB of its loudest)."""
    frames = x[: x.size // 320 * 320].reshape(-1, 320)
    return db(frames[active(x)])


# The user talks over the start of a fresh guard's first reply (a recording as the reply: Piper's voice differs
# from one synthesis to the next, and so would the outcome). Before the harmonic search and the per-delay bound
# (echo.py), the guard, its delay not yet found, took out everything under the loudest reply at -6 dB: these
# were heard 332-492 ms after the onset or not at all; now 204-268 ms (unguarded, this VAD takes 204-248).
# (room delay ms, room gain dB, user, user's level against the reply dB, speech onset into the reply s)
FIRST_REPLY = [(50, -6, USER, -6, 0.3), (150, -6, "common_voice_en_22058264.wav", -6, 0.3),
               (100, -12, USER, -12, 0.3), (250, -6, USER, -12, 0.3),
               (200, -20, "common_voice_en_22058264.wav", -12, 0.3), (100, -12, "librispeech_61-70968-0000.wav", -6, 0.3),
               (150, -200, "common_voice_en_22058264.wav", -6, 0.3), (150, -200, "common_voice_en_22058264.wav", -12, 0.5)]


@pytest.mark.models
@pytest.mark.parametrize("delay_ms,gain_db,name,user_db,onset_s", FIRST_REPLY)
def test_the_user_is_heard_over_the_start_of_the_first_reply(silero, delay_ms, gain_db, name, user_db, onset_s):
    """A fresh guard (a new session), the user as loud as the echo or quieter, talking 0.1-0.5 s into the reply."""
    reply = clip(REPLY)
    room = Room(delay_ms=delay_ms, gain_db=gain_db, seed=delay_ms)
    if gain_db > -100:  # the echo alone does not start speech (with headphones there is none to test)
        mic, start = through_room(reply, room)
        assert speech_starts(silero, mic), "unguarded, the VAD hears this echo"
        assert speech_starts(silero, guarded(mic, reply, start, EchoGuard())) == []
    user = clip(name)
    onset = silero.detect(user, threshold=0.5, min_speech_ms=100, min_silence_ms=100, speech_pad_ms=0)[0][0]
    cut = max(0, int((onset - 0.3) * RATE))  # the recording from 0.3 s before its speech
    user, onset = user[cut:], onset - cut / RATE
    user = user * 10 ** ((level_db(reply) + user_db - level_db(user)) / 20)
    lead = 1.0
    mic, start = through_room(reply, room, lead_s=lead, user=user, user_at_s=lead + onset_s - onset, tail_s=3.0)
    starts = speech_starts(silero, guarded(mic, reply, start, EchoGuard()))
    at = lead + onset_s
    # Heard, and not for the echo before the user spoke: within 300 ms of audio of the onset (the VAD's own
    # 200 ms minimum speech included).
    assert starts and at < starts[0] < at + 0.3, (starts, at)


# A user says "No." (one short word: what the echo's words most easily take the place of) 1-3.5 s into the reply,
# through three rooms; the reply pauses 0.3 s after their onset, as a barge-in does. STT hears from 0.3 s before
# the onset (the pre-roll) to the end of the recording. Offline over 6 Piper syntheses, the guard's residual
# gave STT the word 11-15 times of 18, the bare mic 2-4 ("friend now", "the beauty of the city").
OVER_THE_REPLY = [(d, g, into) for d, g in ((50, -12), (100, -10), (150, -6)) for into in (1.0, 1.5, 2.0, 2.5, 3.0, 3.5)]


@pytest.mark.models
def test_stt_hears_the_users_words_not_the_echos(tts_reply, silero):
    from rvchat_common.testing import normalise
    from rvchat_stt.engine import WhisperEngine

    stt = WhisperEngine()
    stt.load()
    user = clip("common_voice_en_22058264.wav")
    onset = silero.detect(user, threshold=0.5, min_speech_ms=100, min_silence_ms=100, speech_pad_ms=0)[0][0]
    heard = {"mic": [], "guarded": []}
    for delay_ms, gain_db, into in OVER_THE_REPLY:
        room = Room(delay_ms=delay_ms, gain_db=gain_db, seed=delay_ms)
        mic, played, start, span = talked_over(tts_reply, room, user, onset, into)
        for name, audio in (("mic", mic), ("guarded", guarded(mic, played, start, EchoGuard(), stt=True))):
            heard[name].append(stt.transcribe_stream(audio[span], "en").text)
    right = {name: sum(0 < len(set(normalise(t))) and set(normalise(t)) <= {"no", "nope"} for t in texts)
             for name, texts in heard.items()}
    assert right["guarded"] >= 10 and right["guarded"] >= right["mic"] + 5, (right, heard)


# --------------------------------------------------------------------------- main_app over the real services
QUESTION = "Tell me about Paris in three sentences."


@pytest.fixture(scope="module")
def unguarded_app(services, tmp_path_factory):
    """main_app as it was: no guard, only the raised barge-in threshold while the assistant speaks."""
    from rvchat_app.testing import app_env
    from rvchat_common.testing import ServiceProcess

    env = app_env(services, tmp_path_factory.mktemp("unguarded") / "rvchat.sqlite3", APP_ECHO_GUARD="false")
    with ServiceProcess("rvchat_app", "APP_", env) as proc:
        yield proc


def self_interruptions(page, turn: int) -> list[dict]:
    return [e for e in page.events if e.get("turn") == turn and e["type"] in ("pause_playback", "stop_playback")]


async def test_loopback_the_assistant_does_not_interrupt_itself(app_service, unguarded_app):
    from rvchat_app.loopback import LoopbackPage

    room = Room(delay_ms=150, gain_db=-6)  # a loud speakerphone
    for app, guard in ((app_service, True), (unguarded_app, False)):
        page = await LoopbackPage.open(app.ws_url, room)
        try:
            first = await page.ask(QUESTION)
            await page.until_played(first["turn"])
            config = page.of("hello")[0]["config"]
        finally:
            await page.close()
        assert config["echo_guard"] is guard
        played = page.speaker.played_ms(first["turn"], page.now_sample())
        if guard:
            assert self_interruptions(page, first["turn"]) == [], page.events
            assert page.of("reply_end", first["turn"]) and played > 2000
        else:  # the same room without the guard: the assistant stops for its own voice
            assert self_interruptions(page, first["turn"])


# A reader who starts at full voice. USER's first words ("I have a") are soft: under an echo as loud they are misheard
# about 1 time in 5 whether STT hears the mic or the guard's residual (bench/results/echo.md), where the words
# after the reply paused never are; a short word under the echo is test_stt_hears_the_users_words_not_the_echos.
TALKER = "librispeech_61-70968-0000.wav"


async def test_loopback_the_user_still_interrupts(app_service):
    from rvchat_app.loopback import LoopbackPage

    page = await LoopbackPage.open(app_service.ws_url, Room(delay_ms=100, gain_db=-10))
    try:
        first = await page.ask(QUESTION)
        at = first["_t"] + 1.5  # the user talks 1.5 s into the reply
        page.talk(load_pcm16(speech_sample(TALKER)), at)
        stop = await page.wait_for(lambda e: e["type"] in ("pause_playback", "stop_playback")
                                   and e.get("turn") == first["turn"], 30)
        interrupted = await page.wait_for(lambda e: e["type"] == "interrupted" and e["turn"] == first["turn"], 30)
        answer = await page.wait_for(lambda e: e["type"] == "transcript" and e["turn"] > first["turn"], 30)
    finally:
        await page.close()
    assert stop["_t"] > at  # stopped for the user, not before
    assert len(interrupted["spoken_text"]) < len(interrupted["full_text"])  # cut off where the user spoke
    # What STT heard is the user's words, not the assistant's.
    from rvchat_common.testing import speech_manifest, wer

    reference = next(m["text"] for m in speech_manifest() if m["file"] == TALKER)
    assert wer(reference, answer["text"]) <= 0.4, answer["text"]
