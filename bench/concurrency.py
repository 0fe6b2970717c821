"""Several voice conversations at once on one box: latency per turn against the number of sessions.

The five services run as processes with their defaults (``make run``; any ``VAD_`` ... ``APP_``
variable in the environment reaches them, so a setting can be compared without editing code).
For each session count N (1, 2, 4, 8), N WebSocket clients open main_app's ``/ws`` as the page
does and, staggered by ``STAGGER_S``, each speaks its own recordings of real read speech
(bench/voice.py's held-out clips, a different rotation per session) at real time in 20 ms frames,
then silence while the reply plays, as a person waits for the answer (until its playback has
ended, at most ``MAX_WAIT_S``), and ``GAP_S`` more before the next recording. Each client is the
page of the tests and the other benches, ``rvchat_app.loopback.LoopbackPage`` without a room (a
headset: no echo), so it plays the reply's audio as the page's player does (gapless, 30 ms after it
arrives; pausing and resuming on ``pause_playback`` / ``resume_playback``) and reports its playback
to main_app the same way, so main_app knows when the assistant stops speaking.

Latency per turn: from the end of speech in the recording (Silero without padding: the VAD
service's ``/detect`` with ``speech_pad_ms=0`` on the clip) to the first binary reply frame the
client receives for that turn. A turn with no reply audio before the next recording starts is
unanswered; ``error`` events and refused sessions are errors.

Settings by environment, for quick runs: ``BENCH_CONC_SESSIONS`` (``1,2,4,8``),
``BENCH_CONC_RECORDINGS`` (4 per session), ``BENCH_CONC_GAP_S`` (1: the pause after a reply),
``BENCH_CONC_MAX_WAIT_S`` (15: the longest wait for a reply), ``BENCH_CONC_STAGGER_S`` (1.3),
``BENCH_CONC_MIN_TURNS`` (8: a level with fewer turns than this is repeated, so the one-session
figure is not a p90 of four numbers), ``BENCH_CONC_CLIPS`` (other clips, comma-separated),
``BENCH_CONC_JSON`` (a file for the raw rows, with the events around each unanswered turn).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import numpy as np

from bench.stats import percentile
from bench.voice import HELD_OUT, _ms, speech_ends

if TYPE_CHECKING:
    from rvchat_app.loopback import LoopbackPage

RATE = 16000
FRAME_MS = 20
FRAME = RATE * FRAME_MS // 1000  # samples
LEAD_S = 1.0  # silence before the first recording: the session's service streams settle


def _env_list(name: str, default: str) -> list[int]:
    return [int(x) for x in os.environ.get(name, default).split(",") if x.strip()]


SESSIONS = _env_list("BENCH_CONC_SESSIONS", "1,2,4,8")
RECORDINGS = int(os.environ.get("BENCH_CONC_RECORDINGS", "4"))
# A fixed 12 s gap had users talk over the end of long replies (a 27-word reply plays ~10 s), where
# the raised barge-in threshold can miss a soft voice: a bench artefact, not what a user does.
GAP_S = float(os.environ.get("BENCH_CONC_GAP_S", "1"))
MAX_WAIT_S = float(os.environ.get("BENCH_CONC_MAX_WAIT_S", "15"))
SETTLE_S = 2.0  # after a recording, how long silence goes on before "no reply in progress" can count
STAGGER_S = float(os.environ.get("BENCH_CONC_STAGGER_S", "1.3"))
MIN_TURNS = int(os.environ.get("BENCH_CONC_MIN_TURNS", "8"))
QUEUES = ("stt", "tts", "llm")  # services whose model queue is read from /metrics
STAGES = ["stt_ms", "llm_first_token_ms", "tts_first_audio_ms", "total_ms"]


@dataclass
class Clip:
    name: str
    pcm: bytes
    speech: tuple[float, float]  # (start, end) of speech in the clip, seconds (Silero, no padding)


@dataclass
class Script:
    """What one session says: lead silence, then each clip, each followed by silence while its
    reply plays (see ``converse``)."""

    clips: list[Clip]


class _TimedSocket:
    """The WebSocket under a :class:`LoopbackPage`, noting when each mic frame leaves (``sent_at``), so
    that a sample's capture time is measured, not assumed from the page's clock."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.sent_at: list[float] = []

    async def send(self, msg: str | bytes) -> None:
        await self.ws.send(msg)
        if isinstance(msg, bytes):
            self.sent_at.append(time.perf_counter())

    def __aiter__(self):
        return self.ws.__aiter__()


def _replies(page: LoopbackPage) -> tuple[set[int], set[int]]:
    """The turns whose reply has started, and those whose reply has ended and played out: the
    ``playback`` ``done`` the page reports, or dropped by ``stop_playback`` as the page's player does."""
    started = {e["turn"] for e in page.of("reply_start")}
    ended = {e["turn"] for e in page.events if e["type"] in ("reply_end", "interrupted")}
    stops = page.of("stop_playback")
    if stops:
        ended |= {e["turn"] for e in page.of("reply_start") if e["_t"] <= stops[-1]["_t"]}
    now = page.now_sample()
    playing = {turn for _, end, turn in page.speaker.turn_of if end > now}
    playing |= {turn for _, turn in page.paused or []}
    return started, ended - playing


async def converse(ws_url: str, script: Script, start_at: float) -> dict:
    """One session: open /ws and wait for its service streams, then from ``start_at`` (loop time) be
    the page (rvchat_app.loopback.LoopbackPage, no echo: a headset) and speak the script at real time;
    log what comes back."""
    import websockets
    from rvchat_app.loopback import LoopbackPage

    loop = asyncio.get_running_loop()
    out: dict = {"events": [], "recv": [], "sent_at": [], "spans": [], "refused": None}
    async with websockets.connect(f"{ws_url}/ws", max_size=None, open_timeout=30) as ws:
        hello = json.loads(await ws.recv())
        if hello["type"] != "hello":
            out["refused"] = hello
            return out
        services = hello["services"]["services"]
        while not all(s["up"] for s in services.values()):
            msg = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(msg, str) and (ev := json.loads(msg))["type"] == "services":
                services = ev["services"]
        # Nothing is sent before the session's turn to start (the others connect meanwhile); from then
        # the mic runs without a break, digital silence between the recordings.
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        timed = _TimedSocket(ws)
        page = LoopbackPage(timed, room=None, noise_dbfs=-math.inf)
        page.start()
        try:
            at = int(LEAD_S * RATE)
            for clip in script.clips:
                page.talk(clip.pcm, at / RATE)
                out["spans"].append((at + int(clip.speech[0] * RATE), at + int(clip.speech[1] * RATE)))
                end = at + len(clip.pcm) // 2
                while page.sent < end and ws.close_code is None:
                    await asyncio.sleep(FRAME_MS / 1000)
                ended = loop.time()
                replied = len(_replies(page)[1])
                # Silence while the turn ends and its reply plays, then a pause before the next one.
                while ws.close_code is None:
                    waited = loop.time() - ended
                    started, done = _replies(page)
                    if waited > MAX_WAIT_S or (waited > SETTLE_S and not started - done
                                               and len(done) > replied):
                        break
                    await asyncio.sleep(FRAME_MS / 1000)
                await asyncio.sleep(GAP_S)
                if ws.close_code is not None:
                    break
                # The next recording starts on a frame the mic has not sent yet.
                at = (page.sent // FRAME + 2) * FRAME
            await asyncio.sleep(0.5)
        finally:
            await page.close()
    for ev in page.events:
        t = page.t0 + ev["_t"]
        if ev["type"] == "audio":  # the header of a binary reply frame, which follows at once
            out["recv"].append((t, ev["turn"]))
        else:
            out["events"].append((t, ev))
    out["sent_at"] = timed.sent_at
    return out


def turns_of(script: Script, log: dict) -> list[dict]:
    """A row per recording: latency, the turn's server-side stages, errors."""
    if log["refused"] is not None:
        err = log["refused"].get("error", {}).get("code", "refused")
        return [{"clip": c.name, "latency": None, "turns": 0, "refused": err, "errors": 0, "stages": {}}
                for c in script.clips]
    sent = np.array(log["sent_at"])

    def at(sample: int) -> float:
        """When ``sample`` was captured: its frame's send time less the samples after it in that frame."""
        i = min(sample // FRAME, len(sent) - 1)
        return float(sent[i] - ((i + 1) * FRAME - sample) / RATE) if len(sent) else math.inf

    rows = []
    spans = log["spans"]
    for k, (clip, (s0, s1)) in enumerate(zip(script.clips, spans)):
        t_start, t_end = at(s0), at(s1)
        t_next = at(spans[k + 1][0]) if k + 1 < len(spans) else math.inf
        mine = [(t, ev) for t, ev in log["events"] if t_start <= t < t_next]
        turns = {ev["turn"] for _, ev in mine if ev["type"] == "transcript"}
        first = [t for t, turn in log["recv"] if t > t_end and t < t_next and turn in turns]
        lat = [ev for _, ev in mine if ev["type"] == "latency" and ev.get("turn") in turns]
        rows.append({
            "clip": clip.name, "latency": first[0] - t_end if first else None, "turns": len(turns),
            "errors": sum(1 for _, ev in mine if ev["type"] == "error"),
            "error_codes": [ev["error"].get("code") for _, ev in mine if ev["type"] == "error"],
            "stages": {k2: v / 1000 for k2, v in lat[-1].items() if k2.endswith("_ms")} if lat else {},
        })
        if not first:  # what happened instead, for the raw rows
            rows[-1]["events"] = [(round(t - t_end, 3), ev["type"], ev.get("turn"), ev.get("text", "")[:60])
                                  for t, ev in log["events"] if t_start - 15 <= t < min(t_next, t_end + 30)]
    return rows


def queue_totals(services: dict) -> dict[str, tuple[float, float]]:
    """(seconds waited, jobs) so far on each model queue, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for name in QUEUES:
        text = httpx.get(f"{services[name].url}/metrics", timeout=10).text
        total = count = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "inference_queue_wait_seconds_sum":
                    total += s.value
                elif s.name == "inference_queue_wait_seconds_count":
                    count += s.value
        out[name] = (total, count)
    return out


async def level(ws_url: str, scripts: list[Script]) -> list[dict]:
    loop = asyncio.get_running_loop()
    start = loop.time() + 3.0  # every session connected and its streams up before the first speaks
    logs = await asyncio.gather(*(converse(ws_url, s, start + i * STAGGER_S) for i, s in enumerate(scripts)))
    return [turns_of(s, log) for s, log in zip(scripts, logs)]


def _summary(rows: list[dict]) -> dict:
    lat = [r["latency"] for r in rows if r["latency"] is not None]
    nan = float("nan")
    return {"turns": len(rows), "answered": len(lat), "median": statistics.median(lat) if lat else nan,
            "p90": percentile(lat, 0.9), "max": max(lat, default=nan),
            # Unanswered because no turn was heard at all (no transcript: the VAD never ended one).
            "unheard": sum(1 for r in rows if r["latency"] is None and not r["turns"]
                           and not r.get("refused")),
            "errors": sum(r["errors"] for r in rows), "refused": sum(1 for r in rows if r.get("refused"))}


def run() -> str:
    from bench.stack import stack
    from rvchat_app.testing import load_pcm16
    from rvchat_common.testing import speech_sample

    t0 = time.perf_counter()
    results: dict[int, dict] = {}
    with stack() as procs:
        clips = []
        for name in os.environ.get("BENCH_CONC_CLIPS", "").split(",") if os.environ.get("BENCH_CONC_CLIPS") \
                else HELD_OUT:
            pcm = load_pcm16(speech_sample(name))
            utt = speech_ends(procs["vad"].url, pcm)
            clips.append(Clip(name, pcm, (utt[0][0], utt[-1][1])))
        for n in SESSIONS:
            rounds = max(1, math.ceil(MIN_TURNS / (n * RECORDINGS)))
            before = queue_totals(procs)
            conv_rows: list[list[dict]] = []
            for r in range(rounds):
                scripts = []
                for i in range(n):
                    k = (i + r * n) % len(clips)  # each session (and round) starts at another recording
                    scripts.append(Script([clips[(k + j) % len(clips)] for j in range(RECORDINGS)]))
                conv_rows += asyncio.run(level(procs["app"].ws_url, scripts))
                time.sleep(3.0)  # the last replies finish and the sessions close before the next level
            after = queue_totals(procs)
            rows = [r for conv in conv_rows for r in conv]
            waits = {q: (after[q][0] - before[q][0]) / max(1.0, after[q][1] - before[q][1]) for q in QUEUES}
            results[n] = {"rows": conv_rows, "summary": _summary(rows), "rounds": rounds, "waits": waits}
            s = results[n]["summary"]
            print(f"   {n} sessions: median {_ms(s['median'])} ms, p90 {_ms(s['p90'])} ms, "
                  f"{s['answered']}/{s['turns']} answered, {s['errors']} errors", flush=True)
    if os.environ.get("BENCH_CONC_JSON"):
        with open(os.environ["BENCH_CONC_JSON"], "w") as f:
            json.dump({n: {k: v for k, v in r.items()} for n, r in results.items()}, f, indent=1)
    return report(results, time.perf_counter() - t0)


def report(results: dict[int, dict], seconds: float) -> str:
    base = results.get(1, {}).get("summary")
    lines = [
        "## Several conversations at once",
        "",
        f"N WebSocket clients speak into main_app's `/ws` at once as the page does (20 ms frames at "
        f"real time, replies played back and reported), staggered by {STAGGER_S} s, each {RECORDINGS} "
        f"recordings of held-out read speech, each followed by silence until its reply has played (at most "
        f"{MAX_WAIT_S:.0f} s) and {GAP_S:g} s more, each session in its own "
        f"conversation; all five services on this machine ({os.cpu_count()} cores) with their defaults "
        "(`APP_MAX_SESSIONS` 8 admits the eighth). Latency per turn: end of speech in the recording (Silero, "
        "no padding) -> first "
        f"binary reply frame at the client. A level with fewer than {MIN_TURNS} turns is run again (rounds). "
        f"Bench time {seconds:.0f} s.",
        "",
        "| sessions | turns | answered | not heard | median ms | p90 ms | max ms | p90 / 1 session | errors "
        "| refused |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, res in results.items():
        s = res["summary"]
        ratio = "–"
        if base and not math.isnan(base["p90"]) and not math.isnan(s["p90"]):
            ratio = f"{s['p90'] / base['p90']:.2f}"
        lines.append(f"| {n} | {s['turns']} | {s['answered']} | {s['unheard']} | **{_ms(s['median'])}** | "
                     f"**{_ms(s['p90'])}** | {_ms(s['max'])} | {ratio} | {s['errors']} | {s['refused']} |")
    lines += ["", "*Not heard*: no transcript at all for the recording (main_app's VAD never ended a turn "
              "in it); the other unanswered turns were heard and got no reply audio before the next "
              "recording.",
              "", "Server-side stages of the answered turns (main_app's `latency` event, median / p90 ms), "
              "and the mean wait of a job for each model queue (from their `/metrics`):", "",
              "| sessions | " + " | ".join(s.removesuffix("_ms") for s in STAGES) + " | "
              + " | ".join(f"{q} queue wait" for q in QUEUES) + " |",
              "|---|" + "---|" * (len(STAGES) + len(QUEUES))]
    for n, res in results.items():
        rows = [r for conv in res["rows"] for r in conv]
        cells = []
        for st in STAGES:
            xs = [r["stages"][st] for r in rows if st in r["stages"]]
            cells.append(f"{_ms(statistics.median(xs))} / {_ms(percentile(xs, 0.9))}" if xs else "–")
        cells += [_ms(res["waits"][q]) for q in QUEUES]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    codes = sorted({c for res in results.values() for conv in res["rows"] for r in conv
                    for c in r.get("error_codes", [])})
    if codes:
        lines += ["", f"Error codes seen: {', '.join(codes)}."]
    lines += ["", "<details><summary>Per turn (ms, in each session's order)</summary>", ""]
    for n, res in results.items():
        for i, conv in enumerate(res["rows"]):
            cells = ", ".join(f"{r['clip'].removesuffix('.wav')} {_ms(r['latency'])}" for r in conv)
            lines.append(f"- {n} sessions, #{i + 1}: {cells}")
    lines += ["", "</details>"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
