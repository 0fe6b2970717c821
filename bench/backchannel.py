"""Backchannels and real interruptions over real replies: main_app and the four services as processes,
a page client (``rvchat_app.loopback.LoopbackPage`` without a room: a page with headphones) that plays
the replies on a clock, pauses, resumes and stops as the page does, and talks over them.

Each trial asks for a spoken reply and, once it is playing, plays one recording into the mic:
- an acknowledgement or a sound without words (tests/data/speech/backchannel: a real "uh" and
  "right", Piper's "mm-hm", "okay", "yeah"): the reply must be kept (paused, resumed, played to its
  end, saved whole, no new turn);
- a real utterance (tests/data/speech clips of 1.8-5 s): the reply must stop, within 300 ms of the
  speech's onset (the time from the clip's first loud frame leaving the mic to ``pause_playback``
  reaching the page), and the utterance must be answered.

    .venv/bin/python -m bench.backchannel --rounds 4     # writes bench/results/backchannel.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

from bench.stats import percentile

OUT = Path(__file__).parent / "results" / "backchannel.md"
INTERRUPTIONS = ["mfa_thoughts.wav", "ljspeech_LJ001-0008.wav", "mfa_her.wav", "mfa_longstop.wav",
                 "ljspeech_LJ001-0002.wav", "mfa_english_fast.wav"]
QUESTIONS = ["Tell me about the moon.", "What is a good breakfast?", "Why is the sky blue?",
             "Tell me about dogs.", "How do trees grow?", "What is the ocean like?"]


def playing(page, turn: int) -> bool:
    """Audio of ``turn`` is coming out of the page's speaker now (not paused)."""
    now = page.now_sample()
    return page.paused is None and any(s <= now < e for s, e, t in page.speaker.turn_of if t == turn)


async def trial(app_url: str, clip_path: Path, question: str, kind: str) -> dict:
    from rvchat_app.loopback import LoopbackPage
    from rvchat_app.testing import load_pcm16, speech_start_seconds

    page = await LoopbackPage.open(app_url.replace("http", "ws"), None)  # a page with headphones: no echo
    row: dict = {"clip": clip_path.name, "kind": kind}
    try:
        turn = (await page.ask(question))["turn"]
        while not playing(page, turn):
            await asyncio.sleep(0.01)
        pcm = load_pcm16(clip_path)
        at = page.now_s() + 0.3  # into the reply
        page.talk(pcm, at)
        onset = at + speech_start_seconds(pcm)
        clip_s = len(pcm) / 32000
        row["onset_s"] = round(onset, 3)
        if kind == "interruption":
            try:  # its words are answered; or they never interrupted the reply (judged 6 s after the clip)
                await page.wait_for(lambda e: e["type"] == "transcript" and e["turn"] != turn,
                                    timeout=onset + clip_s + 6.0 - page.now_s())
            except TimeoutError:
                pass
        else:
            # Kept or not, the reply is over once it has played out (or was stopped), and the speech's
            # words (or the resume window) have decided by 3 s after the clip.
            await page.until_played(turn)
            while page.now_s() < onset + clip_s + 3.0 or page.paused is not None:
                await asyncio.sleep(0.05)
        pause = page.of("pause_playback", turn)
        row["paused"] = bool(pause)
        row["pause_ms"] = round((pause[0]["_t"] - onset) * 1000) if pause else None
        resume = page.of("resume_playback", turn)
        row["resumed"] = resume[0]["reason"] if resume else None
        row["stopped"] = bool(page.of("stop_playback", turn))
        row["answered"] = [e["text"] for e in page.of("transcript") if e["turn"] != turn]
        if resume:
            row["words_ms"] = round((resume[0]["_t"] - onset) * 1000)
        stop = page.of("stop_playback", turn)
        if stop:
            row["words_ms"] = round((stop[0]["_t"] - onset) * 1000)
    except TimeoutError as exc:
        row["error"] = f"timeout: {exc}; last events {[e['type'] for e in page.events[-8:]]}"
    finally:
        await page.close()
        await page.ws.close()
    if kind == "backchannel":
        row["kept"] = not row.get("stopped") and not row.get("answered") and "error" not in row
    else:
        row["kept"] = not row.get("stopped")
    return row


async def run(app_url: str, rounds: int) -> list[dict]:
    from rvchat_common.testing import SPEECH_DIR

    acks = [json.loads(line) for line in (SPEECH_DIR / "backchannel" / "manifest.jsonl").read_text().splitlines()]
    rows = []
    i = 0
    for r in range(rounds):
        for clip in acks:
            rows.append(await trial(app_url, SPEECH_DIR / "backchannel" / clip["file"],
                                    QUESTIONS[i % len(QUESTIONS)], "backchannel"))
            i += 1
            print(json.dumps(rows[-1]), flush=True)
        for name in INTERRUPTIONS:
            rows.append(await trial(app_url, SPEECH_DIR / name, QUESTIONS[i % len(QUESTIONS)], "interruption"))
            i += 1
            print(json.dumps(rows[-1]), flush=True)
    return rows


def report(rows: list[dict], note: str) -> str:
    acks = [r for r in rows if r["kind"] == "backchannel"]
    real = [r for r in rows if r["kind"] == "interruption"]
    kept = sum(r["kept"] for r in acks)
    stopped = [r for r in real if r.get("stopped")]
    pause_ms = [r["pause_ms"] for r in real if r.get("pause_ms") is not None]
    within = sum(1 for ms in pause_ms if ms <= 300)
    ack_pause = [r["pause_ms"] for r in acks if r.get("pause_ms") is not None]
    words = [r["words_ms"] for r in acks if r.get("words_ms") is not None]
    lines = [
        "# Backchannels and false interruptions (bench/backchannel.py)", "",
        note, "",
        "| | count | result |", "|---|---|---|",
        (f"| replies with an acknowledgement or a wordless sound over them | {len(acks)} | **{kept} kept** "
         f"(paused {sum(r.get('paused', False) for r in acks)}, resumed {sum(bool(r.get('resumed')) for r in acks)}, "
         f"cancelled {sum(bool(r.get('stopped')) for r in acks)}, answered as a turn "
         f"{sum(bool(r.get('answered')) for r in acks)}) |"),
        (f"| replies with a real utterance over them | {len(real)} | **{len(stopped)} stopped**, "
         f"{sum(bool(r.get('answered')) for r in real)} answered |"),
        (f"| real utterances paused within 300 ms of speech onset | {len(pause_ms)} | **{within}** "
         f"(median {statistics.median(pause_ms):.0f} ms, p90 {percentile(pause_ms, 0.9):.0f}, "
         f"max {max(pause_ms):.0f}) |") if pause_ms else "| real utterances paused | 0 | - |",
    ]
    if ack_pause:
        lines.append(f"| acknowledgements: onset to pause | {len(ack_pause)} | median "
                     f"{statistics.median(ack_pause):.0f} ms |")
    if words:
        lines.append(f"| acknowledgements: onset to resume (the words are in) | {len(words)} | median "
                     f"{statistics.median(words):.0f} ms, max {max(words):.0f} |")
    lines += ["", "Per clip:", "", "| clip | kind | trials | kept | paused | resumed as | onset to pause ms |",
              "|---|---|---|---|---|---|---|"]
    for clip in dict.fromkeys(r["clip"] for r in rows):
        rs = [r for r in rows if r["clip"] == clip]
        reasons = ", ".join(sorted({str(r["resumed"]) for r in rs if r.get("resumed")})) or "-"
        ms = [r["pause_ms"] for r in rs if r.get("pause_ms") is not None]
        lines.append(f"| {clip} | {rs[0]['kind']} | {len(rs)} | {sum(r['kept'] for r in rs)} | "
                     f"{sum(r.get('paused', False) for r in rs)} | {reasons} | {', '.join(map(str, ms)) or '-'} |")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r['clip']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--app", help="an app already running (its URL); default: start the stack here")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--note", default="", help="what else ran, the settings of an --app")
    args = ap.parse_args()
    t0 = time.time()
    if args.app:
        rows = asyncio.run(run(args.app, args.rounds))
    else:
        from bench.stack import stack

        with stack() as procs:
            rows = asyncio.run(run(procs["app"].url, args.rounds))
    note = (f"{len(rows)} trials, {time.time() - t0:.0f} s, {os.cpu_count()} CPUs, default settings "
            "(APP_BACKCHANNELS=true, APP_RESUME_WINDOW_MS=1500, barge-in VAD threshold 0.7, minimum speech "
            "200 ms), embedded models (tiny.en, SmolLM2-135M, Piper joe). No echo in the mic: the page client "
            "plays the replies on a clock only." + (f" {args.note}" if args.note else ""))
    text = report(rows, note)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
