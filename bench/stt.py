"""STT benchmark: service overhead vs faster-whisper in-process, real-time factor, stream final latency.

``python -m bench stt``. Starts the STT service as a process (as in production) and
loads the same model in this process; the two never run at the same time.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import wave

import httpx
import numpy as np

from rvchat_common.audio import decode_audio
from rvchat_common.testing import ServiceProcess, speech_manifest, speech_sample, wer

OVERHEAD_CLIPS = ["ljspeech_LJ001-0008.wav", "mfa_thoughts.wav", "ljspeech_LJ001-0004.wav",
                  "jfk_inaugural_1961.wav"]
SHORT_CLIPS = ["common_voice_en_22058266.wav", "ljspeech_LJ001-0008.wav", "mfa_thoughts.wav",
               "mfa_longstop.wav"]
REPEATS = 3
HOLD_S = 0.35  # the orchestrator's default VAD silence before it sends 'end' (APP_VAD_MIN_SILENCE_MS)


def _pcm(name: str, trim: bool = False) -> bytes:
    with wave.open(str(speech_sample(name))) as w:
        pcm = w.readframes(w.getnframes())
    if trim:
        # Cut the recording's own trailing silence: the stream then ends where the speech ends,
        # plus only the silence the caller adds (the orchestrator's VAD hold).
        x = np.frombuffer(pcm, "<i2").astype(np.float32)
        frames = x[: x.size // 320 * 320].reshape(-1, 320)
        rms = np.sqrt((frames ** 2).mean(axis=1))
        last = int(np.flatnonzero(rms > 0.1 * rms.max())[-1]) + 1
        pcm = pcm[: last * 640]
    return pcm


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def _in_process(model_name: str, names: list[str], repeats: int = 1) -> dict[str, list[float]]:
    from faster_whisper import WhisperModel

    from rvchat_common.models import whisper_model

    model = WhisperModel(whisper_model(model_name), device="cpu", compute_type="int8",
                         cpu_threads=os.cpu_count() or 1)
    times: dict[str, list[float]] = {}
    texts: dict[str, str] = {}
    for name in names:
        audio = decode_audio(speech_sample(name).read_bytes())
        for _ in range(repeats):
            t0 = time.perf_counter()
            segments, _ = model.transcribe(audio)
            texts[name] = " ".join(s.text.strip() for s in segments)
            times.setdefault(name, []).append(time.perf_counter() - t0)
    times["_texts"] = texts  # type: ignore[assignment]
    return times


def _service_times(url: str, names: list[str], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for name in names:
        data = speech_sample(name).read_bytes()
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = httpx.post(url + "/transcribe", files={"file": (name, data, "audio/wav")}, timeout=300)
            r.raise_for_status()
            times.setdefault(name, []).append(time.perf_counter() - t0)
    return times


def _ws_final_latency(ws_url: str, name: str, realtime: bool,
                      trailing_silence_s: float = 0.35) -> tuple[float, str]:
    """Stream a clip cut at its speech end in 20 ms frames, plus trailing silence, then 'end'."""
    from websockets.sync.client import connect

    pcm = _pcm(name, trim=True) + b"\0\0" * int(16000 * trailing_silence_s)
    step = 640  # 20 ms
    with connect(ws_url + "/ws", open_timeout=10, max_size=None) as ws:
        json.loads(ws.recv(timeout=10))
        start = time.perf_counter()
        for i in range(0, len(pcm), step):
            ws.send(pcm[i:i + step])
            if realtime:
                # Pace against the clock, as a microphone does.
                ahead = start + (i + step) / 32000 - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
        t0 = time.perf_counter()
        ws.send(json.dumps({"type": "end"}))
        while True:
            event = json.loads(ws.recv(timeout=60))
            if event["type"] == "final":
                return time.perf_counter() - t0, event["text"]


def _latency_table(proc: ServiceProcess, label: str) -> list[str]:
    rows = []
    for realtime in (True, False):
        lat = []
        errs = []
        for name in SHORT_CLIPS:
            ref = next(m["text"] for m in speech_manifest() if m["file"] == name)
            for _ in range(REPEATS):
                t, text = _ws_final_latency(proc.ws_url, name, realtime, HOLD_S if realtime else 0.0)
                lat.append(t)
                errs.append(wer(ref, text))
        mode = f"real time, speech end + {HOLD_S} s silence" if realtime else "all at once, no pause"
        rows.append(f"| {label} | {mode} | {_median_ms(lat):.0f} | {max(lat) * 1000:.0f} | "
                    f"{statistics.mean(errs):.3f} |")
    return rows


def run() -> str:
    manifest = speech_manifest()
    names = [m["file"] for m in manifest]
    seconds = {m["file"]: m["seconds"] for m in manifest}
    lines = ["## STT (faster-whisper)", ""]

    # Service round trip vs in-process, same model, same audio, same (default) decoding options.
    # The two are interleaved run by run, so both see the same machine load.
    from faster_whisper import WhisperModel

    from rvchat_common.models import whisper_model

    model = WhisperModel(whisper_model("tiny.en"), device="cpu", compute_type="int8",
                         cpu_threads=os.cpu_count() or 1)
    direct: dict[str, list[float]] = {}
    service: dict[str, list[float]] = {}
    proc = ServiceProcess("rvchat_stt", "STT_").start()
    try:
        _service_times(proc.url, OVERHEAD_CLIPS, 1)  # warm-up
        for name in OVERHEAD_CLIPS:
            audio = decode_audio(speech_sample(name).read_bytes())
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                list(model.transcribe(audio)[0])
                direct.setdefault(name, []).append(time.perf_counter() - t0)
                service.setdefault(name, []).extend(_service_times(proc.url, [name], 1)[name])
        latency_rows = _latency_table(proc, "early final on (default)")
    finally:
        proc.stop()
    del model
    proc = ServiceProcess("rvchat_stt", "STT_", {"STT_EARLY_FINAL": "false"}).start()
    try:
        latency_rows += _latency_table(proc, "early final off")
    finally:
        proc.stop()

    lines += [
        "### Service round trip vs faster-whisper in-process (tiny.en, int8, beam 5)",
        "",
        f"Median of {REPEATS} runs per clip, service and in-process runs interleaved. The service time "
        "is the whole HTTP round trip (multipart upload, decoding the WAV, VAD speech gate, "
        "transcription, JSON); in-process is `model.transcribe(audio)` on the decoded array.",
        "",
        "| clip | audio s | in-process ms | service ms | overhead ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    ratios = []
    for name in OVERHEAD_CLIPS:
        d, s = _median_ms(direct[name]), _median_ms(service[name])
        ratios.append(s / d)
        lines.append(f"| {name} | {seconds[name]:.1f} | {d:.0f} | {s:.0f} | {s / d:.2f} |")
    lines += ["", f"Mean overhead ratio: **{statistics.mean(ratios):.2f}**.", ""]

    lines += [
        "### Real-time factor (in-process, faster-whisper defaults, all speech samples)",
        "",
        "| model | audio s | processing s | RTF | mean WER |",
        "|---|---:|---:|---:|---:|",
    ]
    total_audio = sum(seconds.values())
    for model in ("tiny.en", "base"):
        res = _in_process(model, names, 1)
        proc_s = sum(sum(v) for k, v in res.items() if k != "_texts")
        texts = res["_texts"]
        mean_wer = statistics.mean(wer(m["text"], texts[m["file"]]) for m in manifest)  # type: ignore[index]
        lines.append(f"| {model} | {total_audio:.0f} | {proc_s:.1f} | {proc_s / total_audio:.3f} | "
                     f"{mean_wer:.3f} |")
    lines += [
        "",
        "### WebSocket: final latency after `end` (tiny.en, short utterances)",
        "",
        f"Clips: {', '.join(SHORT_CLIPS)} ({REPEATS} runs each), streamed in 20 ms PCM16 frames. "
        "'Real time' cuts each clip where its speech ends, paces frames like a microphone and "
        f"adds {HOLD_S} s of silence before `end`, as the voice orchestrator does (it sends `end` once "
        "its VAD has heard that much silence); the early final then usually has the answer ready. "
        "'All at once' measures a cold decode of the whole utterance.",
        "",
        "| service | stream | median ms | max ms | mean WER |",
        "|---|---|---:|---:|---:|",
        *latency_rows,
        "",
        f"Machine: {os.cpu_count()} cores, shared with other work while measured; figures are wall time.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
