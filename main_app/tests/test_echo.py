"""The self-hearing guard (echo.py) on real recordings played through synthetic rooms.

Fast tests drive :class:`EchoGuard` offline (a reply played through a :class:`Room` into the mic,
20 ms frames at real time); the model tests put its residual through the real Silero VAD with the
barge-in settings, and through main_app over the real services with the loopback page.
"""

from __future__ import annotations

import numpy as np
import pytest
from rvchat_app.echo import HOP, EchoGuard
from rvchat_app.loopback import RATE, Room, guarded, through_room
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
            guard.far(reply, start / RATE)  # the whole reply was sent ahead of time
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
            guard.far(reply, start / RATE)
        if abs(t - pause_s) < 0.01:
            guard.pause(t)
        if abs(t - resume_s) < 0.01:
            guard.resume(t)
    res = np.frombuffer(b"".join(out), dtype="<i2").astype(np.float32)[HOP:] / 32768.0
    after = slice(int((resume_s + 0.5) * RATE), start + heard.size - RATE)
    assert db(res[after]) < db(mic[after]) - 20
