"""End of turn: how often a silence rule cuts a speaker off mid-sentence, and how long it makes
everyone wait after a finished sentence.

The set (built here from tests/data/speech, real recordings):
- **paused**: each clip cut at a word boundary near its middle (Whisper word timestamps), the two
  halves joined by a pause of 0.4, 0.6, 0.8, 1.0 or 1.2 s: a speaker who stops to think mid-sentence;
- **natural**: the clips as recorded (readers pause at commas; the MFA clips have fillers and stops);
- complete utterances are the same clips' real ends.

Offline replay of what main_app does, with the real models: Silero VAD (the VAD service's turn
detector, 200 ms speculative silence, main_app's resume rule of two loud 32 ms chunks) finds every
pause; at each one Whisper (the STT service's streaming decode) transcribes the words so far, as the
speculative final does. A rule cuts the speaker off when a pause outlasts its hold. Fixed holds
(200/300/500/700 ms) against the adaptive hold of ``rvchat_app.endpointing``.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from bench.stats import percentile

PAUSES_S = (0.4, 0.6, 0.8, 1.0, 1.2)
SPECULATIVE_MS = 200
RESUME_S = 2 * 0.032  # main_app drops a speculative reply after two loud VAD chunks
FIXED_MS = (200, 300, 500, 700)
MAX_CLIP_S = 11.0
RATE = 16000
# Clips whose reference is not a sentence (single words, word lists) say nothing about sentence ends.
SKIP = {"common_voice_en_22058264.wav", "common_voice_en_22058266.wav", "common_voice_en_22058267.wav",
        "mfa_whisper.wav", "mfa_whisper2.wav"}


def pauses(vad_engine, audio: np.ndarray) -> tuple[list[tuple[float, float]], float | None]:
    """The speculative ends inside the speech: (speech_end stamp, time speech resumed was noticed),
    and the stamp of the last speech_end (the real end), in seconds."""
    from rvchat_common.audio import float_to_pcm16
    from rvchat_common.protocol import vad
    from rvchat_vad.turns import TurnConfig, TurnStream

    stream = TurnStream(vad_engine.new_stream(), TurnConfig(min_silence_ms=SPECULATIVE_MS, min_speech_ms=200,
                                                            speech_pad_ms=30))
    tail = np.zeros(int(RATE * 1.5), dtype=np.float32)
    events = stream.feed(float_to_pcm16(np.concatenate([audio, tail])))
    ends = [e.timestamp for e in events if isinstance(e, vad.SpeechEnd)]
    starts = [e.timestamp for e in events if isinstance(e, vad.SpeechStart)]
    out = []
    for end in ends[:-1]:
        nxt = min((s for s in starts if s > end), default=None)
        if nxt is not None:
            # The stamp of a start is padded 30 ms early; main_app notices speech RESUME_S after it starts.
            out.append((end, nxt + 0.03 + RESUME_S))
    return out, (ends[-1] if ends else None)


class EndOfUtterance:
    """P(the user's message ends here) from the embedded LLM: the probability that the next token after
    the words (Whisper's trailing punctuation stripped) is a sentence end or the end of the message."""

    def __init__(self) -> None:
        import llama_cpp

        from rvchat_common.models import gguf_model

        self.llm = llama_cpp.Llama(model_path=str(gguf_model(None)), n_ctx=1024, n_threads=1,
                                   n_threads_batch=1, verbose=False, logits_all=True)
        tok = self.llm.tokenize
        self.ends = sorted({tok(s.encode(), add_bos=False, special=True)[-1] for s in (".", "?", "!", "<|im_end|>")})

    def __call__(self, text: str) -> float:
        words = text.strip().rstrip(".?!,;:…-–— ")
        toks = self.llm.tokenize(f"<|im_start|>user\n{words}".encode(), add_bos=False, special=True)
        self.llm.reset()
        self.llm.eval(toks)
        logits = np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return float(p[self.ends].sum())


def run() -> str:
    from rvchat_app.endpointing import Holds
    from rvchat_app.settings import Settings as AppSettings
    from rvchat_app.testing import load_pcm16
    from rvchat_common.testing import speech_manifest, speech_sample
    from rvchat_stt.engine import WhisperEngine
    from rvchat_vad.engine import SileroEngine

    t0 = time.perf_counter()
    app = AppSettings()
    adaptive = Holds(complete_ms=int(os.environ.get("BENCH_COMPLETE_MS", app.turn_end_complete_ms)),
                     unsure_ms=int(os.environ.get("BENCH_UNSURE_MS", app.vad_min_silence_ms)),
                     incomplete_ms=int(os.environ.get("BENCH_INCOMPLETE_MS", app.turn_end_incomplete_ms)))
    vad_engine = SileroEngine()
    vad_engine.load()
    stt = WhisperEngine()
    stt.load()
    eou = EndOfUtterance()

    def text_upto(audio: np.ndarray, t: float) -> str:
        return stt.transcribe_stream(audio[: int(t * RATE)], "en").text.strip()

    clips = [m for m in speech_manifest() if m["seconds"] <= MAX_CLIP_S and m["file"] not in SKIP]
    items: list[dict] = []  # one per utterance: its pauses (with the words so far) and its end
    for clip in clips:
        audio = np.frombuffer(load_pcm16(speech_sample(clip["file"])), dtype="<i2").astype(np.float32) / 32768
        words = stt.model.transcribe(audio, language="en", word_timestamps=True, beam_size=1)[0]
        words = [w for seg in words for w in seg.words]
        variants = [("natural", audio)]
        if len(words) >= 4:
            # The word boundary nearest the middle (not the first or last two words).
            mid = audio.size / RATE / 2
            cut_after = min(range(1, len(words) - 2), key=lambda i: abs(words[i].end - mid))
            at = int((words[cut_after].end + words[cut_after + 1].start) / 2 * RATE)
            for p in PAUSES_S:
                silence = np.zeros(int(p * RATE), dtype=np.float32)
                variants.append((f"paused {p:.1f} s", np.concatenate([audio[:at], silence, audio[at:]])))
        for kind, a in variants:
            found, end = pauses(vad_engine, a)
            item = {"clip": clip["file"], "kind": kind, "pauses": [], "end_text": None}
            for stamp, resumed in found:
                words = text_upto(a, stamp)
                item["pauses"].append({"length": resumed - stamp, "text": words, "eou": eou(words)})
            if end is not None:
                item["end_text"] = text_upto(a, end + 0.2)
                item["end_eou"] = eou(item["end_text"])
            items.append(item)

    def cut(item: dict, hold_of) -> bool:
        return any(p["length"] >= hold_of(p) / 1000 for p in item["pauses"])

    rules = [(f"fixed {ms} ms", lambda _p, ms=ms: ms) for ms in FIXED_MS]
    rules.append(("adaptive (by the words)", lambda p: adaptive.for_text(p["text"])))
    for theta in (0.2, 0.4, 0.6):
        rules.append((f"LLM end-of-utterance >= {theta}: {adaptive.complete_ms}, else {adaptive.incomplete_ms}",
                      lambda p, th=theta: adaptive.complete_ms if p["eou"] >= th else adaptive.incomplete_ms))
        rules.append((f"LLM end-of-utterance >= {theta}: {adaptive.complete_ms}, else {adaptive.unsure_ms}",
                      lambda p, th=theta: adaptive.complete_ms if p["eou"] >= th else adaptive.unsure_ms))
    with_pauses = [it for it in items if it["pauses"]]
    ended = [it for it in items if it["end_text"] is not None]
    lines = [
        "## End of turn: cut-offs and waits",
        "",
        f"{len(items)} utterances from {len(clips)} clips of tests/data/speech (single words, word lists and "
        f"whispers left out): each clip as recorded, and cut at the word boundary nearest its middle with a "
        f"pause of {', '.join(f'{p:g}' for p in PAUSES_S)} s. Replayed offline with the real models: Silero "
        f"(the VAD service's turn detector, {SPECULATIVE_MS} ms speculative silence; a pause ends when two "
        "loud 32 ms chunks are heard, as in main_app) and Whisper tiny.en (the STT service's streaming decode "
        "of the words so far at each pause). A rule cuts the speaker off when a pause outlasts its hold; the "
        "wait is the hold after the real end. Adaptive: "
        f"{adaptive.complete_ms} ms after a finished sentence, {adaptive.unsure_ms} ms without punctuation, "
        f"{adaptive.incomplete_ms} ms after a comma, a dash or a dangling word. "
        f"Bench time {time.perf_counter() - t0:.0f} s.",
        "",
        "| rule | cut off (all) | cut off (paused) | cut off (natural) | wait after the end, median ms | p90 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, hold_of in rules:
        n_cut = sum(cut(it, hold_of) for it in items)
        paused = [it for it in items if it["kind"] != "natural"]
        natural = [it for it in items if it["kind"] == "natural"]
        waits = [hold_of({"text": it["end_text"], "eou": it["end_eou"]}) for it in ended]
        lines.append(
            f"| {name} | {n_cut}/{len(items)} ({100 * n_cut / len(items):.0f}%) | "
            f"{sum(cut(it, hold_of) for it in paused)}/{len(paused)} | "
            f"{sum(cut(it, hold_of) for it in natural)}/{len(natural)} | "
            f"{statistics.median(waits):.0f} | {percentile(waits, 0.9):.0f} |")
    lines += ["", f"Utterances with at least one pause of {SPECULATIVE_MS} ms or more: {len(with_pauses)}.", "",
              "<details><summary>Pauses and the words before them</summary>", "",
              "| clip | kind | pause ms | words so far | adaptive hold ms | LLM end-of-utterance |",
              "|---|---|---|---|---|---|"]
    for it in items:
        for p in it["pauses"]:
            lines.append(f"| {it['clip'].removesuffix('.wav')} | {it['kind']} | {p['length'] * 1000:.0f} | "
                         f"{p['text'][-60:]} | {adaptive.for_text(p['text'])} | {p['eou']:.2f} |")
        if it["end_text"] is not None:
            lines.append(f"| {it['clip'].removesuffix('.wav')} | {it['kind']} (end) | – | {it['end_text'][-60:]} "
                         f"| {adaptive.for_text(it['end_text'])} | {it['end_eou']:.2f} |")
    lines += ["", "</details>"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
