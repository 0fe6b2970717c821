"""The self-hearing guard: does the assistant interrupt itself, and does the user still interrupt it?

The five services run as processes with their embedded defaults, main_app twice: with the guard
(``APP_ECHO_GUARD``, the default) and without it (only the raised barge-in threshold). The client is
:class:`rvchat_app.loopback.LoopbackPage`: a ``/ws`` page whose speaker plays the reply as the page's
player does and whose mic hears it back through a synthetic room (delay 50-250 ms, -6 to -20 dB,
a direct path, early reflections and a 250 ms RT60 tail), with a -70 dBFS noise floor. One session per
room (a room does not change within a conversation), typed questions, the reply spoken and played out.

- Self-interruptions: replies during which main_app paused or stopped playback with nobody talking.
- Real interruptions: a recording of a person (tests/data/speech) mixed into the mic 1.0-2.5 s into a
  reply. Detected = playback paused or stopped for that reply; the time is from the speech's onset
  (Silero, no padding, on the clip) to the ``pause_playback`` / ``stop_playback`` event at the page.
- Cost: the guard alone on 10 s of echo, per 20 ms mic frame, in this process.

``python -m bench.echo --stt``: what STT makes of a user talking over a reply (offline, in this process, a
minute or two): 3 users x 3 Piper replies x 3 rooms x 3 times into the reply, the reply paused 0.3 s after
the user's onset (as a barge-in does), the STT service's streaming decode of the audio from 0.3 s before the
onset to the end of the recording: from the bare mic, and from the guard's residual at several margins.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.stats import percentile

DELAYS = (50, 100, 150, 200, 250)
GAINS = (-6, -12, -20)
QUESTIONS = ["Tell me about Paris in three sentences.", "What is the tallest mountain in the world?",
             "How do bees make honey?", "Why is the sky blue?", "What should I cook for dinner tonight?",
             "Tell me a short story about a cat.", "How does a rainbow form?", "What is the capital of Japan?"]
USERS = ["mfa_thoughts.wav", "ljspeech_LJ001-0004.wav", "common_voice_en_22058264.wav"]
STOPS = ("pause_playback", "stop_playback")


def onset_s(vad_url: str, pcm16: bytes) -> float:
    import httpx

    r = httpx.post(f"{vad_url}/detect", params={"sample_rate": 16000, "speech_pad_ms": 0, "min_silence_ms": 100},
                   content=pcm16, headers={"Content-Type": "audio/pcm"}, timeout=60)
    r.raise_for_status()
    return r.json()["segments"][0]["start"]


async def room_session(ws_url: str, room, replies: int, user: tuple[bytes, float] | None, k: int,
                       first_at: float | None = None) -> list[dict]:
    """``replies`` questions in one session through ``room``; with ``user`` (pcm, onset), the last one is
    talked over: 1.0-2.5 s into it, or with ``first_at`` (one reply, the session's first) that many seconds
    into it, where the guard has not found the echo's delay yet. A row per reply."""
    from rvchat_app.loopback import PLAYER_LEAD_S, LoopbackPage

    page = await LoopbackPage.open(ws_url, room, seed=k)
    rows = []
    try:
        for i in range(replies):
            question = QUESTIONS[(k + i) % len(QUESTIONS)]
            first = await page.ask(question)
            turn = first["turn"]
            row = {"room": (room.delay_ms, room.gain_db), "turn": turn}
            talk_at = None
            if user is not None and i == replies - 1:
                if first_at is None:
                    talk_at = first["_t"] + 1.0 + 0.5 * (k % 4)
                    page.talk(user[0], talk_at)
                    row["onset"] = talk_at + user[1]
                else:
                    # The recording from 50 ms before its speech, whose onset comes first_at s after the reply
                    # starts to play (the page plays a chunk PLAYER_LEAD_S after it arrives).
                    pcm = user[0][int(max(0.0, user[1] - 0.05) * 16000) * 2:]
                    onset = min(user[1], 0.05)
                    talk_at = first["_t"] + PLAYER_LEAD_S + first_at - onset
                    page.talk(pcm, talk_at)
                    row["onset"] = talk_at + onset
                    row["first_at"] = first_at
            await page.until_played(turn)
            stops = [e for e in page.events if e.get("turn") == turn and e["type"] in STOPS]
            if talk_at is None:
                row["self"] = bool(stops)
            else:
                before = [e for e in stops if e["_t"] < row["onset"]]
                after = [e for e in stops if e["_t"] >= row["onset"]]
                row["self"] = bool(before)
                row["detected_s"] = after[0]["_t"] - row["onset"] if after and not before else None
                await asyncio.sleep(3.0)  # the user's turn is answered; let it go by
            row["played_s"] = page.speaker.played_ms(turn, page.now_sample()) / 1000
            rows.append(row)
    finally:
        await page.close()
    return rows


def guard_cost_us() -> float:
    """Mean time of EchoGuard.near per 20 ms mic frame with a reply playing (10 s of echo)."""
    from rvchat_app.echo import EchoGuard
    from rvchat_app.loopback import Room, through_room
    from rvchat_app.testing import load_pcm16
    from rvchat_common.audio import float_to_pcm16
    from rvchat_common.testing import speech_sample

    reply = np.frombuffer(load_pcm16(speech_sample("ljspeech_LJ001-0001.wav")), "<i2").astype(np.float32) / 32768
    mic, start = through_room(reply, Room(delay_ms=150, gain_db=-12))
    pcm = float_to_pcm16(mic)
    guard = EchoGuard()
    frames = len(pcm) // 640
    t0 = time.perf_counter()
    for i in range(frames):
        guard.near(pcm[i * 640:(i + 1) * 640], (i + 1) * 0.02)
        if i == 0:
            guard.far(reply, start / 16000 - 0.03)
    return (time.perf_counter() - t0) / frames * 1e6


def run() -> str:
    from rvchat_app.loopback import Room
    from rvchat_app.testing import app_env, load_pcm16
    from rvchat_common.testing import ServiceProcess, speech_sample

    per_room = int(os.environ.get("BENCH_ECHO_REPLIES", "7"))  # guarded replies per room (15 rooms)
    per_room_off = int(os.environ.get("BENCH_ECHO_REPLIES_OFF", "2"))
    rooms = [Room(delay_ms=d, gain_db=g, seed=d - g) for d in DELAYS for g in GAINS]
    rooms = rooms[: int(os.environ.get("BENCH_ECHO_ROOMS", len(rooms)))]
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    services = {name: ServiceProcess(f"rvchat_{name}", f"{name.upper()}_",
                                     {"LLM_PROVIDER": "local"} if name == "llm" else {})
                for name in ("vad", "stt", "tts", "llm")}
    results: dict[str, list[dict]] = {"on": [], "off": []}
    raw = Path(os.environ["BENCH_ECHO_JSON"]) if os.environ.get("BENCH_ECHO_JSON") else None  # rows as they come

    def session(app, mode: str, room, replies: int, user, k: int, first_at: float | None = None,
                **tags) -> list[dict] | None:
        """One session's rows (with ``tags``), added to the results as they come; None if it timed out."""
        try:
            rows = asyncio.run(room_session(app.ws_url, room, replies, user, k, first_at=first_at))
        except TimeoutError:
            return None
        for r in rows:
            r.update(tags)
        results[mode] += rows
        if raw:
            raw.write_text(json.dumps(results, indent=1))
        return rows

    try:
        for svc in services.values():
            svc.start()
        users = [(load_pcm16(speech_sample(u)), 0.0) for u in USERS]
        users = [(pcm, onset_s(services["vad"].url, pcm)) for pcm, _ in users]
        with tempfile.TemporaryDirectory() as tmp:
            for mode, replies in (("on", per_room), ("off", per_room_off)):
                env = app_env(services, Path(tmp) / f"{mode}.sqlite3",
                              APP_ECHO_GUARD="true" if mode == "on" else "false")
                with ServiceProcess("rvchat_app", "APP_", env) as app:
                    for k, room in enumerate(rooms):
                        # The last reply of each session is talked over (guard on; off, it has paused itself).
                        user = users[k % len(users)] if mode == "on" else None
                        rows = session(app, mode, room, replies + (user is not None), user, k)
                        if rows is None:
                            # Without the guard the assistant can answer its own echo, and a question's reply
                            # may never get to speak: the room counts as lost, the run goes on.
                            print(f"   echo {mode} room {room.delay_ms:.0f} ms {room.gain_db:+.0f} dB: lost (timeout)")
                            results.setdefault(f"{mode}_lost", []).append({"room": (room.delay_ms, room.gain_db)})
                            continue
                        print(f"   echo {mode} room {room.delay_ms:.0f} ms {room.gain_db:+.0f} dB: "
                              f"{sum(r['self'] for r in rows)}/{len(rows)} self, "
                              f"{[round(r['detected_s'], 3) if r.get('detected_s') is not None else None for r in rows if 'onset' in r]}",
                              flush=True)
                    # The user talks over the first reply of a fresh session, 0.1-0.5 s into it: before the
                    # guard has found the echo's delay.
                    if mode == "on" and os.environ.get("BENCH_ECHO_FIRST", "1") == "1":
                        for k, room in enumerate(rooms):
                            first_at = (0.1, 0.3, 0.5)[k % 3]
                            rows = session(app, mode, room, 1, users[k % len(users)], 200 + k, first_at=first_at)
                            if rows is None:
                                print(f"   echo first room {room.delay_ms:.0f} ms {room.gain_db:+.0f} dB: lost (timeout)")
                                continue
                            print(f"   echo first room {room.delay_ms:.0f} ms {room.gain_db:+.0f} dB at {first_at} s: "
                                  f"{[round(r['detected_s'], 3) if r.get('detected_s') is not None else None for r in rows]}"
                                  f"{' self' if rows[0]['self'] else ''}", flush=True)
                    # No echo at all (headphones): how fast a barge-in is without the guard's help or harm.
                    for k in range(len(USERS)):
                        session(app, mode, Room(gain_db=-200), 1, users[k], 100 + k, headphones=True)
    finally:
        for svc in services.values():
            svc.stop()
    cost = guard_cost_us()
    return report(results, cost, time.perf_counter() - t0, load0, os.getloadavg()[0])


def _ms(x: float | None) -> str:
    return "–" if x is None or np.isnan(x) else f"{x * 1000:.0f}"


def report(results: dict[str, list[dict]], cost_us: float, seconds: float, load0: float, load1: float) -> str:
    intro = ("main_app over the real services (embedded defaults), the loopback page of "
             "`rvchat_app/loopback.py`: its mic hears its own speaker through a synthetic room (delay "
             f"{', '.join(str(d) for d in DELAYS)} ms x level {', '.join(str(g) for g in GAINS)} dB, early "
             "reflections, 250 ms RT60 tail, -70 dBFS noise), one session per room, typed questions whose replies "
             "are spoken and played out. A self-interruption is a reply paused or stopped with nobody talking. "
             f"A real interruption is a recording ({', '.join(u.removesuffix('.wav') for u in USERS)}) mixed in "
             "1.0-2.5 s into the last reply of each session; its time runs from the speech's onset (Silero, no "
             "padding) to the `pause_playback`/`stop_playback` event at the page. "
             f"Bench time {seconds:.0f} s; load average {load0:.1f} at the start, {load1:.1f} at the end "
             "(other engineers' jobs shared the two cores).")
    header = ("| main_app | replies (echo only) | self-interruptions | per 100 replies | replies talked over | "
              "detected | median ms | p90 ms | max ms |")
    lines = ["## Self-hearing guard: echo loopback", "", intro, "", header, "|---|---|---|---|---|---|---|---|---|"]
    for mode, label in (("off", "without the guard (APP_ECHO_GUARD=false)"), ("on", "**with the guard** (default)")):
        rows = [r for r in results[mode] if not r.get("headphones") and "first_at" not in r]
        alone = [r for r in rows if "onset" not in r]
        n_self = sum(r["self"] for r in alone)
        talked = [r for r in rows if "onset" in r]
        det = [r["detected_s"] for r in talked if r.get("detected_s") is not None]
        lines.append(f"| {label} | {len(alone)} | {n_self} | {100 * n_self / max(1, len(alone)):.0f} | "
                     f"{len(talked) or '–'} | {f'{len(det)}/{len(talked)}' if talked else '–'} | "
                     f"{_ms(statistics.median(det)) if det else '–'} | {_ms(percentile(det, 0.9)) if det else '–'} | "
                     f"{_ms(max(det)) if det else '–'} |")
    first = [r for r in results["on"] if "first_at" in r]
    if first:
        det = [r["detected_s"] for r in first if r.get("detected_s") is not None]
        lines += ["", ("The first reply of a fresh session talked over 0.1-0.5 s after it starts to play (the guard "
                       "has not found the echo's delay yet), one session per room:"), "",
                  ("| main_app | replies talked over | paused before the user spoke | detected | median ms | p90 ms | "
                   "max ms | within 300 ms |"), "|---|---|---|---|---|---|---|---|",
                  (f"| with the guard | {len(first)} | {sum(r['self'] for r in first)} | {len(det)}/{len(first)} | "
                   f"{_ms(statistics.median(det)) if det else '–'} | {_ms(percentile(det, 0.9)) if det else '–'} | "
                   f"{_ms(max(det)) if det else '–'} | {sum(d <= 0.3 for d in det)} |")]
    lines += ["", "Barge-in with no echo at all (headphones), the same recordings:", "",
              "| main_app | detected | median ms | max ms |", "|---|---|---|---|"]
    for mode, label in (("off", "without the guard"), ("on", "with the guard")):
        rows = [r for r in results[mode] if r.get("headphones")]
        det = [r["detected_s"] for r in rows if r.get("detected_s") is not None]
        lines.append(f"| {label} | {len(det)}/{len(rows)} | {_ms(statistics.median(det)) if det else '–'} | "
                     f"{_ms(max(det)) if det else '–'} |")
    lines += ["", (f"The guard's cost: {cost_us:.0f} µs of CPU per 20 ms mic frame with a reply playing "
                   f"({cost_us / 20000 * 100:.1f}% of one core per voice session), in this process."), "",
              "<details><summary>Per room (guard on)</summary>", "",
              ("| room | replies | self-interruptions | talked over: detected after ms | first reply: talked over at "
               "s, detected after ms |"), "|---|---|---|---|---|"]
    by_room: dict = {}
    for r in results["on"]:
        if not r.get("headphones") and "first_at" not in r:
            by_room.setdefault(tuple(r["room"]), []).append(r)
    firsts = {tuple(r["room"]): r for r in first}
    for (d, g), rows in sorted(by_room.items()):
        alone = [r for r in rows if "onset" not in r]
        talked = [r for r in rows if "onset" in r]
        det = ", ".join(_ms(r.get("detected_s")) for r in talked)
        f = firsts.get((d, g))
        fcell = f"{f['first_at']}: {'paused before' if f['self'] else _ms(f.get('detected_s'))}" if f else "–"
        lines.append(f"| {d:.0f} ms {g:+.0f} dB | {len(alone)} | {sum(r['self'] for r in alone)} | {det} | {fcell} |")
    lines += ["", "</details>"]
    return "\n".join(lines)


STT_USERS = ["mfa_thoughts.wav", "common_voice_en_22058264.wav", "librispeech_61-70968-0000.wav"]
STT_REPLIES = [("Paris is the capital of France, known for its art, fashion and culture. It has many famous landmarks "
                "like the Eiffel Tower."),
               ("Sure. Paris is a beautiful city on the river Seine, with museums, cafes and old bridges everywhere "
                "you look."),
               "The city of Paris is home to more than two million people and is famous for the Louvre museum."]
STT_ROOMS = [(100, -10), (150, -6), (50, -12)]
STT_INTO = (0.8, 1.5, 2.5)
STT_MARGINS = (12.0, 6.0, 3.0, 0.0)


def stt_over_echo() -> str:
    """The table of ``--stt`` (see the module's docstring)."""
    from rvchat_app.echo import EchoGuard
    from rvchat_app.loopback import RATE, Room, guarded, talked_over
    from rvchat_app.settings import Settings
    from rvchat_app.testing import load_pcm16
    from rvchat_common.audio import resample
    from rvchat_common.testing import speech_manifest, speech_sample, wer
    from rvchat_stt.engine import WhisperEngine
    from rvchat_tts.engine import PiperEngine
    from rvchat_tts.voices import VoiceCatalog
    from rvchat_vad.engine import SileroEngine

    def clip(name: str) -> np.ndarray:
        return np.frombuffer(load_pcm16(speech_sample(name)), "<i2").astype(np.float32) / 32768

    t0 = time.perf_counter()
    voice = "en_US-joe-medium"
    tts = PiperEngine(VoiceCatalog(voice))
    tts.load()
    stt, vad = WhisperEngine(), SileroEngine()
    stt.load()
    vad.load()
    replies = [resample(np.frombuffer(tts.synthesize(text, voice), "<i2").astype(np.float32) / 32768,
                        tts.sample_rate(voice), RATE) for text in STT_REPLIES]
    said = {m["file"]: m["text"] for m in speech_manifest()}
    default = Settings().echo_stt_margin_db
    variants = ["mic"] + [f"{m:g} dB" for m in STT_MARGINS]
    rows: dict[str, list[tuple[str, float, str]]] = {v: [] for v in variants}
    for name in STT_USERS:
        user = clip(name)
        onset = vad.detect(user, threshold=0.5, min_speech_ms=100, min_silence_ms=100, speech_pad_ms=0)[0][0]
        for reply in replies:
            for delay_ms, gain_db in STT_ROOMS:
                for into in STT_INTO:
                    room = Room(delay_ms=delay_ms, gain_db=gain_db, seed=delay_ms)
                    mic, played, start, span = talked_over(reply, room, user, onset, into)
                    heard = {"mic": mic}
                    for m in STT_MARGINS:
                        heard[f"{m:g} dB"] = guarded(mic, played, start, EchoGuard(stt_margin_db=m), stt=True)
                    for v, audio in heard.items():
                        text = stt.transcribe_stream(audio[span], "en").text
                        rows[v].append((name, wer(said[name], text), text))
    n = len(rows["mic"])
    lines = ["| STT hears | utterances with WER > 0.4 | mean WER | median WER | worst |", "|---|---|---|---|---|"]
    for v in variants:
        errs = [e for _, e, _ in rows[v]]
        worst = max(rows[v], key=lambda r: r[1])
        label = v if v == "mic" else f"the guard's residual, {v} margin" + (" (default)" if v == f"{default:g} dB" else "")
        lines.append(f"| {label} | {sum(e > 0.4 for e in errs)} of {n} | {statistics.mean(errs):.3f} | "
                     f"{statistics.median(errs):.3f} | {worst[1]:.2f} \"{worst[2].strip()}\" |")
    lines += ["", "By user (utterances with WER > 0.4, mic / " + " / ".join(variants[1:]) + "):", ""]
    for name in STT_USERS:
        counts = [sum(e > 0.4 for u, e, _ in rows[v] if u == name) for v in variants]
        lines.append(f"- {name} (\"{said[name]}\"): " + " / ".join(map(str, counts)) + f" of {n // len(STT_USERS)}")
    lines += ["", f"{time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.2f} at the end."]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(stt_over_echo() if "--stt" in sys.argv[1:] else run())
