"""Voice-to-voice latency as a user feels it: a real Chromium, its fake mic, one conversation.

The five services run as processes with their embedded defaults (what ``make run`` starts). A
headless Chromium opens the page, turns the mic on, and its fake capture device plays a WAV of
several utterances of real read speech, each followed by 14 s of silence (time for the reply to
play), as one conversation. An init script records, in the page's own clock, every binary frame
the page sends (mic PCM) and receives (reply audio).

The end of each utterance is found by Silero VAD without padding (the VAD service's ``/detect``
with ``speech_pad_ms=0``) on the audio the page really sent, so the clock starts where the person
stopped speaking, not where an energy threshold or the pipeline's own endpointing says. Where that
Silero finds no speech at a clip's place in the sent audio (a soft voice after the browser's processing:
mfa_falsetto2), the clock starts at the recording's own speech end, placed where the other clips were
found; such a row says ``"clock": "recording"``. The clock stops at the first binary (reply audio) frame
the page receives after it. The page's per-turn
``latency`` events give the server-side breakdown by stage.

Clips: the speech samples are split in two. ``TUNING`` clips are the ones latency work may be
tuned on; ``HELD_OUT`` clips are for the reported figures only (``BENCH_VOICE_SET=tuning`` runs
the tuning set). The first turn of each conversation is reported separately (cold), then the rest.

``BENCH_VOICE_PAUSE_S=0.6,1.0``: mid-sentence pauses instead. Each clip is cut where bench/turns.py cuts it
(the word boundary nearest its middle) with one of these pauses (each in turn over the runs), and its row
says whether reply audio reached the page before the user finished, whether words of it were heard (a
cut-off: they played before the page paused the reply for the user's speech), whether the turn was committed
in the pause, and whether the last reply answered the whole utterance. What
bench/turns.py counts offline as a cut-off is a commit in the pause; the product drops such a reply and
answers the whole utterance if none of its audio has played when the user goes on.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import statistics
import tempfile
import time
import wave
from pathlib import Path

import httpx
import numpy as np

from bench.stats import percentile

# Read speech of 3-7 s, never used to tune anything: the reported figures.
HELD_OUT = ["ljspeech_LJ001-0004.wav", "librispeech_61-70968-0000.wav", "mfa_english_slow.wav",
            "ljspeech_LJ001-0006.wav", "mfa_falsetto2.wav", "mfa_her.wav", "mfa_thoughts.wav"]
# What latency changes may be tried on.
TUNING = ["mfa_english_fast.wav", "ljspeech_LJ001-0005.wav", "mfa_english_t.wav", "mfa_reallylong.wav",
          "mfa_falsetto.wav", "mfa_longstop.wav", "ljspeech_LJ001-0007.wav"]
GAP_S = 14.0
LEAD_S = 3.0  # before the first utterance: the page connects and the mic starts
CHROMIUM = "/usr/bin/chromium"
RATE = 16000

# Wraps the page's WebSocket: every binary frame sent (mic) and received (reply audio), in page time,
# and the JSON events that explain a turn.
INIT_SCRIPT = """
(() => {
  const B = window.__bench = {sent: [], sentPcm: [], recv: [], events: []};
  const Orig = window.WebSocket;
  class BenchSocket extends Orig {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        const t = performance.now();
        if (typeof e.data !== "string") { B.recv.push(t); return; }
        try {
          const ev = JSON.parse(e.data);
          if (["latency", "transcript", "reply_end", "speech_start", "speech_end", "interrupted",
               "error", "no_speech"].includes(ev.type) || (ev.type === "audio" && ev.index === 0)) {
            B.events.push([t, ev]);
          }
        } catch (err) {}
      });
    }
    send(data) {
      if (typeof data !== "string") {
        const buf = data instanceof ArrayBuffer ? data : data.buffer.slice(data.byteOffset,
                                                                          data.byteOffset + data.byteLength);
        B.sent.push([performance.now(), buf.byteLength]);
        B.sentPcm.push(new Uint8Array(buf.slice(0)));
      }
      return super.send(data);
    }
  }
  window.WebSocket = BenchSocket;
  window.__benchPcm = () => {
    let n = 0; for (const a of B.sentPcm) n += a.length;
    const all = new Uint8Array(n); let o = 0;
    for (const a of B.sentPcm) { all.set(a, o); o += a.length; }
    let s = ""; for (let i = 0; i < all.length; i += 0x8000) s += String.fromCharCode(...all.subarray(i, i + 0x8000));
    return btoa(s);
  };
})();
"""


def _ms(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x * 1000:.0f}"


def clip_audio(clip: str, pause: tuple[int, float] | None = None) -> np.ndarray:
    """A clip at 16 kHz as the mic's file holds it (PCM16 scale), with ``pause`` (sample, seconds) put in."""
    from rvchat_app.testing import load_pcm16
    from rvchat_common.testing import speech_sample

    pcm = np.frombuffer(load_pcm16(speech_sample(clip)), dtype="<i2").astype(np.float32)
    if pause is not None:
        at, seconds = pause
        pcm = np.concatenate([pcm[:at], np.zeros(int(seconds * RATE), dtype=np.float32), pcm[at:]])
    return pcm


def conversation_wav(path: Path, clips: list[str], rate: int = 48000,
                     pauses: list[tuple[int, float] | None] | None = None) -> list[tuple[float, float]]:
    """The fake mic's WAV: lead silence, then each clip followed by GAP_S of silence; the clips'
    (start, end) in file seconds. ``pauses``: for each clip, None or (sample, seconds): silence of that
    length put into the clip at that sample (a speaker who stops mid-sentence)."""
    parts = [np.zeros(int(RATE * LEAD_S), dtype=np.float32)]
    spans, t = [], LEAD_S
    for k, clip in enumerate(clips):
        pcm = clip_audio(clip, pauses[k] if pauses is not None else None)
        parts += [pcm, np.zeros(int(RATE * GAP_S), dtype=np.float32)]
        spans.append((t, t + pcm.size / RATE))
        t += pcm.size / RATE + GAP_S
    audio = np.concatenate(parts)
    up = np.interp(np.arange(int(audio.size * rate / RATE)) * RATE / rate, np.arange(audio.size), audio)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(up, -32768, 32767).astype("<i2").tobytes())
    return spans


def speech_segments(vad_url: str, pcm: bytes) -> list[dict]:
    """Silero's speech segments ({"start", "end"} in seconds) of the sent audio, no padding."""
    r = httpx.post(f"{vad_url}/detect", params={"sample_rate": RATE, "speech_pad_ms": 0, "min_silence_ms": 100},
                   content=pcm, headers={"Content-Type": "audio/pcm"}, timeout=120)
    r.raise_for_status()
    return r.json()["segments"]


def speech_ends(vad_url: str, pcm: bytes, segments: list[dict] | None = None) -> list[tuple[float, float]]:
    """Utterances (start, end) in seconds of the sent audio: Silero, no padding; pauses under 2 s
    belong to the same utterance."""
    utterances: list[list[float]] = []
    for seg in segments if segments is not None else speech_segments(vad_url, pcm):
        if utterances and seg["start"] - utterances[-1][1] < 2.0:
            utterances[-1][1] = seg["end"]
        else:
            utterances.append([seg["start"], seg["end"]])
    return [(a, b) for a, b in utterances]


def placed(utterances: list[tuple[float, float]], spans: list[tuple[float, float]],
           tolerance_s: float = 1.5) -> list[tuple[float, float] | None]:
    """Each clip's utterance in the sent audio, by where the clip is in the mic's file, or None.

    The sent audio starts wherever the page started the mic, so the file's clips are found at an
    offset: the one that places most utterances within ``tolerance_s`` of a clip's start. Matching
    the k-th utterance found to the k-th clip shifted every later row by one when Silero missed a
    soft one (mfa_falsetto2): its row got the next clip's reply, and the last "no speech found".
    """
    if not utterances:
        return [None] * len(spans)
    offsets = [u[0] - c[0] for u in utterances for c in spans]

    def matches(offset: float) -> list[tuple[float, float] | None]:
        out: list[tuple[float, float] | None] = []
        for c0, _ in spans:
            near = [u for u in utterances if abs(u[0] - (c0 + offset)) < tolerance_s]
            out.append(min(near, key=lambda u: abs(u[0] - (c0 + offset))) if near else None)
        return out

    best = max(offsets, key=lambda o: (sum(m is not None for m in matches(o)), -abs(o)))
    return matches(best)


def recording_speech(vad_url: str, clip: str, pause: tuple[int, float] | None) -> tuple[float, float] | None:
    """Where the clip's speech starts and ends in the clip itself (seconds): the same Silero, on the recording."""
    pcm = clip_audio(clip, pause)
    segments = speech_segments(vad_url, np.clip(pcm, -32768, 32767).astype("<i2").tobytes())
    return (segments[0]["start"], segments[-1]["end"]) if segments else None


def run_conversation(app_url: str, vad_url: str, clips: list[str], workdir: Path,
                     pauses: list[tuple[int, float] | None] | None = None) -> list[dict]:
    """One conversation in Chromium; a row per utterance. ``pauses``: see :func:`conversation_wav`; a row
    of a paused clip says whether the assistant was heard, or took the turn, before the user finished."""
    from playwright.sync_api import sync_playwright

    from rvchat_common.testing import speech_manifest, wer

    refs = {m["file"]: m["text"] for m in speech_manifest()}
    wav = workdir / "mic.wav"
    spans = conversation_wav(wav, clips, pauses=pauses)
    length = spans[-1][1] + GAP_S
    args = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-gpu", "--disable-quic"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_page()
            page.add_init_script(INIT_SCRIPT)
            page.goto(app_url)
            page.wait_for_function("window.rvchat && window.rvchat.connected", timeout=30000)
            page.click("#mic")
            page.wait_for_function("window.rvchat.micStarted", timeout=15000)
            deadline = time.monotonic() + length + 5
            while time.monotonic() < deadline:
                time.sleep(1.0)
            data = page.evaluate("({sent: window.__bench.sent, recv: window.__bench.recv, "
                                 "events: window.__bench.events})")
            pcm = base64.b64decode(page.evaluate("window.__benchPcm()"))
        finally:
            browser.close()

    # Page time of every sent sample: each frame was sent right after its last sample was captured.
    sent = data["sent"]
    ends = np.cumsum([n // 2 for _, n in sent])
    times = np.array([t for t, _ in sent]) / 1000

    def page_time(sample: int) -> float:
        i = min(int(np.searchsorted(ends, sample)), len(ends) - 1)
        return float(times[i] - (ends[i] - sample) / RATE)

    segments = speech_segments(vad_url, pcm)
    found = placed(speech_ends(vad_url, pcm, segments), spans)
    recv = np.array(data["recv"]) / 1000
    events = [(t / 1000, ev) for t, ev in data["events"]]
    # Each clip's speech in the sent audio: where the clock's Silero found it, else (a soft voice after the
    # browser's processing: mfa_falsetto2) the recording's own speech, placed by the offset at which the other
    # clips were found, rather than leave it out of the figures.
    own = [recording_speech(vad_url, clip, pauses[k] if pauses is not None else None) for k, clip in enumerate(clips)]
    # The file's place in the sent audio: the found clips' speech starts against their recordings'.
    starts = [f[0] - (spans[k][0] + o[0]) for k, (f, o) in enumerate(zip(found, own)) if f is not None and o is not None]
    offset = statistics.median(starts) if starts else None
    where: list[tuple[float, float, str] | None] = []
    deltas: list[int | None] = []
    for k in range(len(clips)):
        o, at = own[k], spans[k][0] + offset if offset is not None else None
        if found[k] is not None:
            where.append((*found[k], "sent"))
            # How far the sent audio's speech end is from the recording's (the browser's processing).
            deltas.append(round((found[k][1] - (at + o[1])) * 1000) if o is not None and at is not None else None)
        else:
            where.append((at + o[0], at + o[1], "recording") if o is not None and at is not None else None)
            deltas.append(None)
    rows = []
    for k, clip in enumerate(clips):
        row = {"clip": clip, "latency": None, "turns": 0, "wer": None, "stages": {}}
        rows.append(row)
        if where[k] is None:
            row["error"] = "no speech found at its place in the sent audio"
            continue
        start, end, clock = where[k]
        if clock == "recording":
            row["clock"] = clock
        if deltas[k] is not None:
            row["clock_vs_recording_ms"] = deltas[k]
        t_end = page_time(int(end * RATE))
        # Up to where the next recording's speech is (or would be, were it not found).
        nxt = next((u for u in where[k + 1:] if u is not None), None)
        t_next = page_time(int(nxt[0] * RATE)) if nxt is not None else float("inf")
        t_start = page_time(int(start * RATE))
        after = recv[(recv > t_end) & (recv < t_next)]
        if after.size:
            row["latency"] = float(after[0] - t_end)
        mine = [ev for t, ev in events if t_start <= t < t_next]
        transcripts = [ev["text"] for ev in mine if ev["type"] == "transcript"]
        row["turns"], row["transcripts"] = len(transcripts), transcripts
        if transcripts:
            row["wer"] = wer(refs[clip], " ".join(transcripts))
        if pauses is not None and pauses[k] is not None:
            # The pause as the clock's Silero hears it: the longest silence inside the utterance.
            inside = [sg for sg in segments if start <= sg["start"] and sg["end"] <= end]
            gaps = [(b["start"] - a["end"], a["end"]) for a, b in itertools.pairwise(inside)]
            if gaps:
                gap, at = max(gaps)
                t_pause = page_time(int(at * RATE))
                early = bool(((recv > t_pause) & (recv < t_end)).any())
                stopped = [ev for t, ev in events if ev["type"] == "interrupted" and t_pause < t < t_next]
                row["pause"] = {
                    "inserted_s": pauses[k][1], "heard_s": gap,
                    # Reply audio reached the page before the user had finished.
                    "audio_early": early,
                    # ... and was heard: words of it played before the page paused and stopped it, or it
                    # played on over the user.
                    "cut_off": any(ev.get("spoken_text") for ev in stopped) or (early and not stopped),
                    # The turn was committed in the pause (its transcript shown): dropped and merged, if no
                    # audio of it was played, when the user went on.
                    "committed_early": any(t_pause < t < t_end for t, ev in events if ev["type"] == "transcript"
                                           and t_start <= t),
                    # What the last reply answered: the last transcript, against the whole utterance.
                    "last_wer": wer(refs[clip], transcripts[-1]) if transcripts else None,
                }
        first_audio = [ev for ev in mine if ev["type"] == "audio"]
        if first_audio:
            row["first_chunk"] = {"text": first_audio[0]["text"], "ms": first_audio[0]["duration_ms"]}
        replies = [ev["text"] for ev in mine if ev["type"] == "reply_end"]
        row["reply"] = replies[0] if replies else None
        lat = [ev for ev in mine if ev["type"] == "latency"]
        if lat:
            row["stages"] = {k2: v / 1000 for k2, v in lat[-1].items() if k2.endswith("_ms")}
    return rows


def _summary(rows: list[dict]) -> dict:
    lat = [r["latency"] for r in rows if r["latency"] is not None]
    return {"n": len(lat), "median": statistics.median(lat) if lat else float("nan"), "p90": percentile(lat, 0.9),
            "min": min(lat, default=float("nan")), "max": max(lat, default=float("nan"))}


def middle_cuts(clips: list[str]) -> dict[str, int | None]:
    """Where bench/turns.py cuts each clip for a mid-sentence pause (the word boundary nearest its middle)."""
    from rvchat_app.testing import load_pcm16
    from rvchat_common.testing import speech_sample
    from rvchat_stt.engine import WhisperEngine

    from bench.turns import middle_cut

    stt = WhisperEngine()
    stt.load()
    return {c: middle_cut(stt, np.frombuffer(load_pcm16(speech_sample(c)), dtype="<i2").astype(np.float32) / 32768)
            for c in clips}


def run() -> str:
    from rvchat_app.testing import app_env
    from rvchat_common.testing import ServiceProcess

    which = os.environ.get("BENCH_VOICE_SET", "held_out")
    clips = TUNING if which == "tuning" else HELD_OUT
    runs = int(os.environ.get("BENCH_VOICE_RUNS", "2"))
    pause_s = [float(x) for x in os.environ.get("BENCH_VOICE_PAUSE_S", "").split(",") if x.strip()]
    cuts = middle_cuts(clips) if pause_s else {}
    t0 = time.perf_counter()
    services = {name: ServiceProcess(f"rvchat_{name}", f"{name.upper()}_",
                                     {"LLM_PROVIDER": "local"} if name == "llm" else {})
                for name in ("vad", "stt", "tts", "llm")}
    all_rows: list[list[dict]] = []
    try:
        for svc in services.values():
            svc.start()
        with tempfile.TemporaryDirectory() as tmp, \
                ServiceProcess("rvchat_app", "APP_", app_env(services, Path(tmp) / "db.sqlite3")) as app:
            for i in range(runs):
                # Each run is a new page and a new conversation; clips rotate so each is first once in a while.
                order = clips[i % len(clips):] + clips[:i % len(clips)]
                # Each clip gets each pause in turn over the runs.
                pauses = [(cuts[c], pause_s[(k + i) % len(pause_s)]) if cuts.get(c) is not None else None
                          for k, c in enumerate(order)] if pause_s else None
                all_rows.append(run_conversation(app.url, services["vad"].url, order, Path(tmp), pauses))
    finally:
        for svc in services.values():
            svc.stop()
    rows = [r for conv in all_rows for r in conv]
    first = [conv[0] for conv in all_rows]
    warm = [r for conv in all_rows for r in conv[1:]]
    s_all, s_first, s_warm = _summary(rows), _summary(first), _summary(warm)
    stages = ["endpoint_ms", "commit_ms", "stt_ms", "transcript_ms", "llm_first_token_ms", "first_token_ms",
              "tts_first_audio_ms", "total_ms"]
    lines = [
        "## Voice to voice in a real browser",
        "",
        f"Headless Chromium, fake mic playing {len(clips)} utterances of read speech ({which.replace('_', '-')} set: "
        f"{', '.join(c.removesuffix('.wav') for c in clips)}), each followed by {GAP_S:.0f} s of silence, as one "
        f"conversation; {runs} conversations (new page each, clips rotated). Clock: end of speech in the audio "
        "the page sent (Silero VAD, no padding) -> first binary frame (reply audio) received by the page. "
        f"Embedded defaults (`make run`). Bench time {time.perf_counter() - t0:.0f} s.",
        "",
        "| | turns | median ms | p90 ms | min | max |",
        "|---|---|---|---|---|---|",
        f"| **all turns** | {s_all['n']} | **{_ms(s_all['median'])}** | **{_ms(s_all['p90'])}** | "
        f"{_ms(s_all['min'])} | {_ms(s_all['max'])} |",
        f"| first turn of a conversation | {s_first['n']} | {_ms(s_first['median'])} | {_ms(s_first['p90'])} | "
        f"{_ms(s_first['min'])} | {_ms(s_first['max'])} |",
        f"| later turns (warm) | {s_warm['n']} | {_ms(s_warm['median'])} | {_ms(s_warm['p90'])} | "
        f"{_ms(s_warm['min'])} | {_ms(s_warm['max'])} |",
        "",
        "Server-side stages (main_app's `latency` event; from the VAD's speech end, which is stamped where the "
        "silence began):",
        "",
        "| stage | median ms | p90 ms |",
        "|---|---|---|",
    ]
    for st in stages:
        xs = [r["stages"][st] for r in rows if st in r["stages"]]
        if xs:
            lines.append(f"| {st.removesuffix('_ms')} | {_ms(statistics.median(xs))} | {_ms(percentile(xs, 0.9))} |")
    split = sum(1 for r in rows if r["turns"] > 1)
    unanswered = sum(1 for r in rows if r["latency"] is None)
    # Where the bench's own Silero found no utterance in the sent audio, the recording's speech end is the clock.
    unplaced = sum(1 for r in rows if r.get("error"))
    unplaced_note = f" ({unplaced} of them not found in the sent audio or the recording)" if unplaced else ""
    from_recording = sum(1 for r in rows if r.get("clock") == "recording")
    deltas = [r["clock_vs_recording_ms"] for r in rows if "clock_vs_recording_ms" in r]
    if from_recording:
        unplaced_note += (f"; {from_recording} timed from the recording's own speech end, as the clock's Silero found no "
                          f"speech at their place in the sent audio (elsewhere the sent audio's end was a median "
                          f"{statistics.median(deltas) if deltas else float('nan'):.0f} ms from the recording's)")
    wers = [r["wer"] for r in rows if r["wer"] is not None]
    paused = [r["pause"] for r in rows if "pause" in r]
    if pause_s:
        lines += ["", (f"Each clip cut at the word boundary nearest its middle, with a pause of "
                  f"{' or '.join(f'{p:g}' for p in pause_s)} s (the clock's Silero heard "
                  f"{_ms(min((p['heard_s'] for p in paused), default=None))}-"
                  f"{_ms(max((p['heard_s'] for p in paused), default=None))} ms). The clock stops at the end of "
                  f"the second half. Of {len(paused)} paused utterances: reply audio reached the page before the "
                  f"user had finished in {sum(p['audio_early'] for p in paused)}, and words of it were heard (played "
                  f"before the page paused it) in {sum(p['cut_off'] for p in paused)} (cut off); the turn "
                  f"was committed in the pause in {sum(p['committed_early'] for p in paused)}; the last reply "
                  f"answered the whole utterance (its transcript's WER under 0.3) in "
                  f"{sum(p['last_wer'] is not None and p['last_wer'] < 0.3 for p in paused)}.")]
    lines += ["", f"Utterances split into more than one turn: {split}/{len(rows)}; without a reply: {unanswered}"
              f"{unplaced_note}; "
              f"mean WER of the turns' transcripts: {statistics.mean(wers):.3f}." if wers else "", "",
              "<details><summary>Per utterance</summary>", "", "| run | clip | latency ms | turns | WER |",
              "|---|---|---|---|---|"]
    for i, conv in enumerate(all_rows):
        for r in conv:
            w = "–" if r["wer"] is None else f"{r['wer']:.2f}"
            p = r.get("pause")
            note = "" if p is None else (f" (pause {p['inserted_s']:g} s: {'cut off' if p['cut_off'] else 'not cut off'}"
                                         f"{', committed early' if p['committed_early'] else ''})")
            lines.append(f"| {i + 1} | {r['clip'].removesuffix('.wav')}{note} | {_ms(r['latency'])} | {r['turns']} "
                         f"| {w} |")
    lines += ["", "</details>"]
    raw = Path(os.environ.get("BENCH_VOICE_JSON", "")) if os.environ.get("BENCH_VOICE_JSON") else None
    if raw:
        raw.write_text(json.dumps(all_rows, indent=1))
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
