"""Voice-to-voice latency: end of the user's speech -> first reply audio byte at the client.

Two ways over the same clips (tests/data/speech, those up to ~10 s):

1. Through main_app: the four services and main_app as real processes on this
   machine, one browser-like WebSocket session, each clip streamed in 20 ms
   frames paced at real time followed by silence (the mic keeps running). The
   client measures from the end of speech in the clip to the first reply PCM
   frame it receives; main_app's per-stage breakdown comes with each turn.
2. In-process: the same models called directly (faster-whisper, llama_cpp,
   piper), no HTTP or WebSocket, both sequentially (whole reply, then whole
   synthesis) and streamed (first sentence to Piper as soon as it is complete).
   The endpointing wait (the VAD's silence rule) is a policy, not a cost of the
   split, so the same measured wait is added to both in-process figures.

Also: how often each silence setting cuts a speaker off mid-sentence on the
clips (VAD stream: a speech_end before the clip's speech really ended).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rvchat_app.settings import Settings as AppSettings

MAX_CLIP_S = 10.5
SILENCES = (200, 300, 350, 400, 500, 700)
# One thread each for the LLM and Piper: during a turn they run at the same time on 2 cores, and
# llama.cpp / ONNX Runtime thread pools that spin on a busy core slow down several-fold
# (measured: SmolLM2 2-8 tok/s with 2 threads vs 35-47 tok/s with 1 under load).
THREADS = {"llm": os.environ.get("BENCH_LLM_THREADS", "1"), "tts": os.environ.get("BENCH_TTS_THREADS", "1")}


def _clips() -> list[dict]:
    from rvchat_common.testing import speech_manifest

    return [m for m in speech_manifest() if m["seconds"] <= MAX_CLIP_S]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _ms(x: float) -> str:
    return f"{x * 1000:.0f}" if x == x else "–"


# --------------------------------------------------------------------------- through main_app
async def _app_turns(app_ws_url: str, clips: list[dict]) -> list[dict]:
    import websockets

    from rvchat_app.testing import events_of, load_pcm16, voice_turn
    from rvchat_common.testing import speech_sample, wer

    rows = []
    async with websockets.connect(app_ws_url + "/ws", max_size=None) as ws:
        await asyncio.sleep(1.5)  # the session's service streams connect
        warm = load_pcm16(speech_sample("mfa_thoughts.wav"))
        for clip in [None] + clips:
            pcm = warm if clip is None else load_pcm16(speech_sample(clip["file"]))
            try:
                r = await voice_turn(ws, pcm, pad_s=1.0, timeout=30, extra_silence_s=25)
            except asyncio.TimeoutError:  # e.g. whispered speech the VAD never takes for a turn
                if clip is not None:
                    rows.append({"file": clip["file"], "seconds": clip["seconds"], "turns": 0, "wer": 1.0,
                                 "stages": {}, "latency": None, "error": "no reply"})
                await ws.send(json.dumps({"type": "interrupt"}))
                await _drain(ws)
                continue
            ends = events_of(r, "reply_end")
            if ends:  # a page would now play the audio; say it is played so the next turn starts clean
                await ws.send(json.dumps({"type": "playback", "turn": ends[-1]["turn"], "done": True}))
            await _drain(ws)
            if clip is None:
                continue
            transcripts = events_of(r, "transcript")
            lat = events_of(r, "latency")
            first_after = None
            # Audio counted only once the whole clip was spoken (a mid-sentence cut answers early).
            t_end = r["speech_end_at"]
            rows.append({
                "file": clip["file"], "seconds": clip["seconds"],
                "latency": r.get("latency_s") if r.get("latency_s", -1) > 0 else first_after,
                "stages": lat[-1] if lat else {}, "turns": len(transcripts),
                "wer": wer(clip["text"], " ".join(t["text"] for t in transcripts)) if transcripts else 1.0,
                "reply": ends[-1]["text"] if ends else "", "t_end": t_end,
            })
    return rows


async def _drain(ws, quiet_s: float = 1.0) -> None:
    """Read (and drop) events until the session has been quiet for a moment, sending silence like a mic."""
    silence = b"\x00\x00" * 320
    last = time.perf_counter()
    while time.perf_counter() - last < quiet_s:
        await ws.send(silence)
        try:
            await asyncio.wait_for(ws.recv(), 0.02)
            last = time.perf_counter()
        except asyncio.TimeoutError:
            pass


async def _vad_cutoffs(vad_ws_url: str, clips: list[dict]) -> dict[int, int]:
    """For each min_silence_ms: clips where the VAD ended the turn before the speech really ended."""
    import websockets

    from rvchat_app.testing import load_pcm16, speech_end_seconds
    from rvchat_common.testing import speech_sample

    out = {}
    for silence in SILENCES:
        cut = 0
        for clip in clips:
            pcm = load_pcm16(speech_sample(clip["file"]))
            true_end = speech_end_seconds(pcm)
            async with websockets.connect(vad_ws_url + "/ws", max_size=None) as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "config", "threshold": 0.5, "min_silence_ms": silence,
                                          "min_speech_ms": 200, "speech_pad_ms": 30}))
                data = pcm + b"\x00\x00" * 16000
                for i in range(0, len(data), 3200):
                    await ws.send(data[i:i + 3200])
                await ws.send(json.dumps({"type": "flush"}))
                ends = []
                while True:
                    ev = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if ev["type"] == "speech_end":
                        ends.append(ev["timestamp"])
                    elif ev["type"] == "flushed":
                        break
            # A turn end more than 0.3 s before the real end of speech cut the speaker off.
            if any(e < true_end - 0.3 for e in ends):
                cut += 1
        out[silence] = cut
    return out


def _through_app(clips: list[dict]) -> tuple[list[dict], dict[int, int]]:
    from rvchat_app.testing import app_env
    from rvchat_common.testing import ServiceProcess

    os.environ.setdefault("OMP_NUM_THREADS", "2")
    specs = {"vad": ("rvchat_vad", "VAD_", {}), "stt": ("rvchat_stt", "STT_", {}),
             "tts": ("rvchat_tts", "TTS_", {"TTS_ONNX_THREADS": THREADS["tts"]}),
             "llm": ("rvchat_llm", "LLM_", {"LLM_PROVIDER": "local", "LLM_N_THREADS": THREADS["llm"]})}
    procs = {n: ServiceProcess(m, p, e) for n, (m, p, e) in specs.items()}
    try:
        for p in procs.values():
            p.start(wait_ready=False)
        for p in procs.values():
            p.wait("/readyz", 300)
        db = Path(tempfile.mkdtemp()) / "bench.sqlite3"
        with ServiceProcess("rvchat_app", "APP_", app_env(procs, db)) as app:
            rows = asyncio.run(_app_turns(app.ws_url, clips))
        cutoffs = asyncio.run(_vad_cutoffs(procs["vad"].ws_url, clips))
    finally:
        for p in procs.values():
            p.stop()
    return rows, cutoffs


# --------------------------------------------------------------------------- in-process
def _in_process(clips: list[dict], endpoint_s: float) -> list[dict]:
    import numpy as np
    from faster_whisper import WhisperModel
    from llama_cpp import Llama
    from piper import PiperVoice

    from rvchat_app.settings import Settings
    from rvchat_app.testing import load_pcm16
    from rvchat_common import models
    from rvchat_common.testing import speech_sample
    from rvchat_common.sentences import SentenceSplitter

    settings = Settings()
    whisper = WhisperModel(models.whisper_model("tiny.en"), device="cpu", compute_type="int8")
    nt = int(THREADS["llm"])
    llm = Llama(model_path=str(models.smollm2_gguf()), n_ctx=2048, n_threads=nt, n_threads_batch=nt, verbose=False)
    voice = PiperVoice.load(str(models.embedded_piper_voice()[0]))

    def stt(audio: np.ndarray) -> str:
        segments, _ = whisper.transcribe(audio, language="en", beam_size=1, condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments)

    def tts(text: str) -> bytes:
        return b"".join(c.audio_int16_bytes for c in voice.synthesize(text))

    history: list[dict] = []  # the same context window main_app sends
    window_start = 0

    def chat(text: str):
        nonlocal window_start
        if len(history) + 1 - window_start > settings.history_messages:
            window_start = max(0, len(history) - 2)  # main_app's jumping window (prompt cache reuse)
        context = history[window_start:] + [{"role": "user", "content": text}]
        return llm.create_chat_completion(
            messages=[{"role": "system", "content": settings.system_prompt}] + context,
            max_tokens=settings.max_tokens, temperature=settings.temperature, stream=True)

    rows = []
    for i, clip in enumerate([None] + clips):
        pcm = load_pcm16(speech_sample((clip or clips[0])["file"]))
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        # Streamed: STT, then LLM tokens into the splitter; the first segment goes to Piper at once.
        t0 = time.perf_counter()
        text = stt(audio)
        t_stt = time.perf_counter()
        splitter = SentenceSplitter()
        first = None
        t_tok = None
        reply = ""
        for chunk in chat(text):
            delta = chunk["choices"][0]["delta"].get("content") or ""
            if delta and t_tok is None:
                t_tok = time.perf_counter()
            reply += delta
            done = splitter.push(delta)
            if done:
                first = done[0]
                break
        if first is None:
            rest = splitter.flush()
            first = rest[0] if rest else reply
        first_audio = tts(first)
        t_audio = time.perf_counter()
        # Sequential: the whole reply (same 3-sentence cap), then its whole synthesis.
        s0 = time.perf_counter()
        text2 = stt(audio)
        full = ""
        for chunk in chat(text2):
            full += chunk["choices"][0]["delta"].get("content") or ""
            if settings.max_reply_sentences and len(SentenceSplitter().push(full + " ")) >= settings.max_reply_sentences:
                break
        whole = tts(full.strip() or "Okay.")
        s1 = time.perf_counter()
        history.extend([{"role": "user", "content": text2}, {"role": "assistant", "content": full.strip()}])
        if clip is None:
            continue  # warm-up
        rows.append({"file": clip["file"], "stt": t_stt - t0, "llm": (t_tok or t_stt) - t_stt,
                     "tts": t_audio - (t_tok or t_stt), "streamed": endpoint_s + (t_audio - t0),
                     "sequential": endpoint_s + (s1 - s0), "first_bytes": len(first_audio),
                     "whole_bytes": len(whole)})
    return rows


# --------------------------------------------------------------------------- report
def run() -> str:
    clips = _clips()
    t_start = time.perf_counter()
    app_rows, cutoffs = _through_app(clips)
    ok = [r for r in app_rows if r.get("latency")]
    lat = [r["latency"] for r in ok]
    stage = lambda key: [r["stages"][key] / 1000 for r in ok if key in r["stages"]]  # noqa: E731
    endpoint = statistics.median(stage("endpoint_ms")) if stage("endpoint_ms") else 0.35
    proc_rows = _in_process(clips, endpoint)
    lines = [
        "## Voice to voice (main_app)",
        "",
        f"{len(clips)} clips of tests/data/speech up to {MAX_CLIP_S:g} s, each streamed at real time in 20 ms "
        "frames into main_app's `/ws` (one session, service connections reused across turns), then silence. "
        "Latency = end of speech in the clip (energy-based) -> first reply PCM frame at the client. "
        f"Defaults: VAD min_silence {AppSettings().vad_min_silence_ms} ms, threshold 0.5; STT tiny.en; LLM SmolLM2-135M (local, "
        f"{THREADS['llm']} thread); Piper joe-medium ({THREADS['tts']} ONNX thread). "
        f"Machine shared with other work while measured; total bench time {time.perf_counter() - t_start:.0f} s.",
        "",
        "| | median | p90 | min | max |",
        "|---|---|---|---|---|",
        f"| **speech end -> first audio at client (ms)** | **{_ms(statistics.median(lat))}** | {_ms(_pct(lat, .9))} "
        f"| {_ms(min(lat))} | {_ms(max(lat))} |" if lat else "| no turn answered | | | | |",
    ]
    for key, label in (("endpoint_ms", "silence wait until VAD speech_end"), ("stt_ms", "speech_end -> final transcript"),
                       ("llm_first_token_ms", "transcript -> first LLM token"),
                       ("tts_first_audio_ms", "first token -> first audio sent"),
                       ("total_ms", "server: speech end -> first audio sent")):
        xs = stage(key)
        if xs:
            lines.append(f"| {label} | {_ms(statistics.median(xs))} | {_ms(_pct(xs, .9))} | {_ms(min(xs))} | "
                         f"{_ms(max(xs))} |")
    answered = len(ok)
    multi = sum(1 for r in app_rows if r.get("turns", 0) > 1)
    wers = [r["wer"] for r in app_rows if "wer" in r]
    lines += [
        "",
        f"Turns answered: {answered}/{len(clips)}; clips split into more than one turn: {multi}; "
        f"mean WER of the transcripts: {statistics.mean(wers):.3f}." if wers else "",
        "",
        "### Same turns in-process (no HTTP/WebSocket)",
        "",
        "faster-whisper tiny.en (greedy), llama_cpp SmolLM2 (same prompt, max_tokens, 3-sentence cap), Piper, "
        f"called directly one after another; the same silence wait ({_ms(endpoint)} ms, the measured median) is added.",
        "",
        "| | median | p90 |",
        "|---|---|---|",
    ]
    for key, label in (("stt", "STT of the utterance"), ("llm", "LLM first token"), ("tts", "first token -> first sentence synthesised"),
                       ("streamed", "**in-process streamed: speech end -> first audio**"),
                       ("sequential", "in-process sequential (whole reply, whole synthesis)")):
        xs = [r[key] for r in proc_rows]
        lines.append(f"| {label} | {_ms(statistics.median(xs))} | {_ms(_pct(xs, .9))} |")
    if lat and proc_rows:
        cost = statistics.median(lat) - statistics.median([r["streamed"] for r in proc_rows])
        lines += ["", f"Cost of the microservice split (median through main_app minus median in-process streamed): "
                  f"{cost * 1000:+.0f} ms. main_app hides most of the STT time by streaming audio to STT while the "
                  "user speaks (its final is often ready a few ms after `end`), which the in-process sequential "
                  "path cannot."]
    lines += ["", "### Silence to end a turn vs. cutting speakers off", "",
              "Clips (of the same set) where the VAD ended the turn more than 0.3 s before the speech really ended:",
              "", "| min_silence_ms | " + " | ".join(str(s) for s in SILENCES) + " |",
              "|---" * (len(SILENCES) + 1) + "|",
              "| clips cut off | " + " | ".join(str(cutoffs[s]) for s in SILENCES) + " |", "",
              "<details><summary>Per clip (through main_app)</summary>", "",
              "| clip | s | latency ms | stt | llm | tts | turns | WER |", "|---|---|---|---|---|---|---|---|"]
    for r in app_rows:
        st = r.get("stages", {})
        lines.append(f"| {r['file']} | {r.get('seconds', '')} | {_ms(r['latency']) if r.get('latency') else '–'} | "
                     f"{st.get('stt_ms', '–')} | {st.get('llm_first_token_ms', '–')} | {st.get('tts_first_audio_ms', '–')} | "
                     f"{r.get('turns', '–')} | {r.get('wer', 1):.2f} |")
    lines += ["", "</details>"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
