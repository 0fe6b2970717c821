"""Voice-to-voice latency through OpenAI's Realtime API (``WS /v1/realtime``) against the page's ``/ws``.

Both are the same session behind a different edge: what this measures is what the Realtime edge
adds (24 kHz in and out, base64 JSON, the resampling both ways). The five services run as processes
with their embedded defaults. Each held-out clip (bench/voice.py's) is spoken once into each edge, in
turn, each edge holding one conversation: into ``/ws`` at 16 kHz by ``voice_turn`` (the e2e tests'
real-time client), into ``/v1/realtime`` at 24 kHz by the official ``openai`` client, at real time in
20 ms frames, then silence as a live mic sends. The clock starts at the clip's end of speech (the
same energy rule for both) and stops at the first reply audio received: a binary frame on ``/ws``, a
``response.output_audio.delta`` on ``/v1/realtime``. After each turn the client waits until the reply
would have played, so the next clip does not talk over it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import websockets

from bench.stack import stack
from bench.stats import percentile
from bench.voice import HELD_OUT

FRAME_MS = 20


def _to_24k(pcm16: bytes) -> bytes:
    from rvchat_common.audio import Resampler, float_to_pcm16, pcm16_to_float

    return float_to_pcm16(Resampler(16000, 24000)(pcm16_to_float(pcm16)))


async def realtime_turn(conn, pcm16: bytes, pad_s: float = 1.0, timeout: float = 60.0) -> dict:
    """One utterance into /v1/realtime as a mic would send it; the time from its end of speech to the
    first audio delta, and the reply's audio length."""
    from rvchat_app.testing import speech_end_seconds

    pcm24 = _to_24k(pcm16)
    step = 24000 * 2 * FRAME_MS // 1000
    silence = bytes(step)
    frames = [pcm24[i : i + step] for i in range(0, len(pcm24), step)] + [silence] * int(
        pad_s * 1000 / FRAME_MS
    )
    t0 = time.perf_counter()
    speech_end_at = t0 + speech_end_seconds(pcm16)
    out: dict = {"first_audio_at": None, "audio_bytes": 0, "done": asyncio.Event()}

    async def reader() -> None:
        while True:
            event = json.loads(await conn.recv_bytes())
            if event["type"] == "response.output_audio.delta":
                out["first_audio_at"] = out["first_audio_at"] or time.perf_counter()
                out["audio_bytes"] += len(base64.b64decode(event["delta"]))
            elif event["type"] == "response.done":
                out["status"] = event["response"]["status"]
                out["done"].set()
                return

    task = asyncio.create_task(reader())
    try:
        i = 0
        while not out["done"].is_set():
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("no response.done")
            await conn.send(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(frames[i] if i < len(frames) else silence).decode(),
                }
            )
            i += 1
            await asyncio.sleep(max(0.0, t0 + i * FRAME_MS / 1000 - time.perf_counter()))
    finally:
        task.cancel()
    return {
        "latency_s": out["first_audio_at"] - speech_end_at if out["first_audio_at"] else None,
        "audio_s": out["audio_bytes"] / 2 / 24000,
        "status": out.get("status"),
    }


async def _page_session(url: str):
    ws = await websockets.connect(f"{url}/ws", max_size=None)
    hello = json.loads(await ws.recv())
    for _ in range(100):  # until the session's four service links are up
        if all(s["up"] for s in hello["services"]["services"].values()):
            break
        msg = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(msg, str) and json.loads(msg)["type"] == "services":
            hello["services"] = json.loads(msg)
    return ws


async def _run(app_url: str, clips: list[str]) -> dict[str, list[float]]:
    from openai import AsyncOpenAI
    from rvchat_app.testing import load_pcm16, voice_turn
    from rvchat_common.testing import speech_sample

    results: dict[str, list[float]] = {"ws": [], "realtime": [], "ws_failed": [], "realtime_failed": []}
    client = AsyncOpenAI(base_url=f"{app_url}/v1", api_key="unused")
    page = await _page_session(app_url.replace("http", "ws"))
    try:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            while json.loads(await conn.recv_bytes())["type"] != "session.created":
                pass
            for clip in clips:
                pcm = load_pcm16(speech_sample(clip))
                try:
                    r = await voice_turn(page, pcm, pad_s=1.0, frame_ms=FRAME_MS)
                    if r.get("latency_s") is not None:
                        results["ws"].append(r["latency_s"])
                    rate = next((e["sample_rate"] for e in r["events"] if e["type"] == "audio"), 24000)
                    await asyncio.sleep(len(r["audio"]) / 2 / rate + 1.0)  # the reply plays out
                except TimeoutError:
                    results["ws_failed"].append(1.0)
                try:
                    r = await realtime_turn(conn, pcm)
                    if r["latency_s"] is not None:
                        results["realtime"].append(r["latency_s"])
                    await asyncio.sleep(r["audio_s"] + 1.0)
                except TimeoutError:
                    results["realtime_failed"].append(1.0)
                print(f"   {clip}: ws {results['ws'][-1:]}, realtime {results['realtime'][-1:]}", flush=True)
    finally:
        await page.close()
    return results


def run() -> str:
    clips = HELD_OUT * int(os.environ.get("BENCH_REALTIME_ROUNDS", "2"))
    with stack() as procs:
        results = asyncio.run(_run(procs["app"].url, clips))
    lines = [
        "## Realtime API edge: voice-to-voice latency, `/v1/realtime` against `/ws`",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        "| edge | turns | p50 (s) | p90 (s) | mean (s) |",
        "|---|---|---|---|---|",
    ]
    for name in ("ws", "realtime"):
        xs = results[name]
        mean = sum(xs) / len(xs) if xs else float("nan")
        lines.append(
            f"| `{'/ws' if name == 'ws' else '/v1/realtime'}` | {len(xs)} | {percentile(xs, 0.5):.3f} | "
            f"{percentile(xs, 0.9):.3f} | {mean:.3f} |"
        )
    lines.append(
        f"\nTurns with no reply within 60 s: `/ws` {len(results['ws_failed'])}, `/v1/realtime` "
        f"{len(results['realtime_failed'])}."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
