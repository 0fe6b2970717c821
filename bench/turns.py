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
(200/300/500/700 ms) against the adaptive hold of ``rvchat_app.endpointing``: by the words alone
(``Holds.for_text``, APP_TURN_END_EOU off) and with the LLM service's end-of-utterance probability
(``Holds.for_turn`` over ``rvchat_llm.eou.EndOfUtterance``, the code behind ``POST /v1/eou``), for the
product's defaults and a grid of thresholds and holds to choose them from.

``BENCH_TURNS_CACHE=path``: keep the replayed pauses (transcripts and probabilities) in a JSON file
and reuse it, to try rules without the models. ``BENCH_TURNS_PROMPTS=1``: also score other ways of asking
the model (LiveKit's turn-detector recipe, a conversation before the words) on the same transcripts.
``BENCH_TURNS_SMART_TURN=path``: also score pipecat's Smart Turn v3 audio model (its ONNX file, shipped in the
``pipecat-ai`` wheel: ``pip download pipecat-ai==1.14.0 --no-deps`` and unzip
``pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx``) on the same pauses and ends.

Held-out check: the clips are split in two halves (alternately, by name); the product's rule is reported
on each half, so that a threshold tuned on one half is seen on the other.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

from bench.stats import auc, percentile

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


def end_of_utterance():
    """The LLM service's end-of-utterance model, as the service loads it (rvchat_llm/eou.py)."""
    from rvchat_llm.eou import EndOfUtterance

    eou = EndOfUtterance()
    eou.load()
    return eou


def collect() -> tuple[list[dict], int, float, list[float]]:
    """Every utterance of the set with its pauses (length, words so far, end-of-utterance probability)
    and its end; how many clips; how long the replay took (s); the end-of-utterance answers' cost (ms)."""
    from rvchat_stt.engine import WhisperEngine
    from rvchat_vad.engine import SileroEngine

    t0 = time.perf_counter()
    vad_engine = SileroEngine()
    vad_engine.load()
    stt = WhisperEngine()
    stt.load()
    eou = end_of_utterance()
    eou_ms: list[float] = []

    def probability(text: str) -> float:
        eou._last = ([], 0.0)  # the cost of an answer, not of the cache
        t = time.perf_counter()
        p = eou.probability(text)
        eou_ms.append((time.perf_counter() - t) * 1000)
        return p

    def text_upto(audio: np.ndarray, t: float) -> str:
        return stt.transcribe_stream(audio[: int(t * RATE)], "en").text.strip()

    items: list[dict] = []  # one per utterance: its pauses (with the words so far) and its end
    for clip, kind, a in utterances(stt):
        found, end = pauses(vad_engine, a)
        item = {"clip": clip, "kind": kind, "pauses": [], "end_text": None}
        for stamp, resumed in found:
            words = text_upto(a, stamp)
            item["pauses"].append({"length": resumed - stamp, "text": words, "eou": probability(words)})
        if end is not None:
            item["end_text"] = text_upto(a, end + 0.2)
            item["end_eou"] = probability(item["end_text"])
        items.append(item)
    return items, len({it["clip"] for it in items}), time.perf_counter() - t0, eou_ms


def middle_cut(stt, audio: np.ndarray) -> int | None:
    """The sample of the word boundary nearest the middle of ``audio`` (float, 16 kHz), not before the
    second word or after the third-last (Whisper word timestamps); None under 4 words."""
    words = stt.model.transcribe(audio, language="en", word_timestamps=True, beam_size=1)[0]
    words = [w for seg in words for w in seg.words]
    if len(words) < 4:
        return None
    mid = audio.size / RATE / 2
    cut_after = min(range(1, len(words) - 2), key=lambda i: abs(words[i].end - mid))
    return int((words[cut_after].end + words[cut_after + 1].start) / 2 * RATE)


def utterances(stt):
    """(clip, kind, audio) of the set: each clip as recorded, and cut at its middle with each pause."""
    from rvchat_app.testing import load_pcm16
    from rvchat_common.testing import speech_manifest, speech_sample

    for clip in [m for m in speech_manifest() if m["seconds"] <= MAX_CLIP_S and m["file"] not in SKIP]:
        audio = np.frombuffer(load_pcm16(speech_sample(clip["file"])), dtype="<i2").astype(np.float32) / 32768
        yield clip["file"], "natural", audio
        at = middle_cut(stt, audio)
        if at is not None:
            for p in PAUSES_S:
                silence = np.zeros(int(p * RATE), dtype=np.float32)
                yield clip["file"], f"paused {p:.1f} s", np.concatenate([audio[:at], silence, audio[at:]])


def smart_turn_scores(items: list[dict], model_path: str) -> None:
    """Pipecat's Smart Turn v3 (an audio end-of-turn model, ONNX) on the same pauses and ends, as ``st`` and
    ``end_st``: the audio from the start up to 200 ms into the silence (as pipecat gives it after its VAD's
    stop), the last 8 s, Whisper log-mel features of the normalised audio (faster-whisper's extractor)."""
    import onnxruntime as ort
    from faster_whisper.feature_extractor import FeatureExtractor
    from rvchat_stt.engine import WhisperEngine
    from rvchat_vad.engine import SileroEngine

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, sess_options=opts)
    features = FeatureExtractor(feature_size=80)
    n = 8 * RATE

    def score(a: np.ndarray) -> float:
        a = a[-n:]
        a = np.pad(a, (n - a.size, 0))
        a = (a - a.mean()) / np.sqrt(a.var() + 1e-7)
        x = features(a)[:, : n // 160][None].astype(np.float32)
        return float(np.asarray(session.run(None, {"input_features": x})[0]).reshape(-1)[0])

    vad_engine = SileroEngine()
    vad_engine.load()
    stt = WhisperEngine()
    stt.load()
    for item, (clip, kind, a) in zip(items, utterances(stt), strict=True):
        found, end = pauses(vad_engine, a)
        assert (item["clip"], item["kind"], len(item["pauses"])) == (clip, kind, len(found)), (clip, kind)
        for p, (stamp, _) in zip(item["pauses"], found):
            p["st"] = score(a[: int((stamp + 0.2) * RATE)])
        if end is not None:
            item["end_st"] = score(a[: int((end + 0.2) * RATE)])


SMOLLM2_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                  "<|im_end|>\n")  # what SmolLM2's chat template puts first when there is no system message
GREETING = "<|im_start|>assistant\nHi! How can I help you today?<|im_end|>\n"
EXCHANGE = ("<|im_start|>system\nYou are a voice assistant. The user's words are transcribed speech.<|im_end|>\n"
            "<|im_start|>user\nwhat's the weather like tomorrow in london<|im_end|>\n"
            "<|im_start|>assistant\nTomorrow in London: cloudy, 14 degrees, light rain in the afternoon.<|im_end|>\n"
            "<|im_start|>user\nok thanks and can you remind me to take an umbrella<|im_end|>\n"
            "<|im_start|>assistant\nSure, I'll remind you at eight.<|im_end|>\n")


def livekit_normalise(text: str) -> str:
    """livekit-plugins-turn-detector's _normalize_text: NFKC, lower case, punctuation removed but ' and -."""
    import re
    import unicodedata

    text = unicodedata.normalize("NFKC", text.lower())
    text = "".join(c for c in text if not (unicodedata.category(c).startswith("P") and c not in "'-"))
    return re.sub(r"\s+", " ", text).strip()


# (name, text before the user's turn, normalisation, the tokens that count as an end)
PROMPTS = [
    ("the product (rvchat_llm/eou.py): trailing punctuation stripped, P(. ? ! or <|im_end|>)", "", "strip", "all"),
    ("LiveKit's recipe: their normalisation, P(<|im_end|>)", "", "livekit", "im_end"),
    ("LiveKit's recipe with SmolLM2's default system turn and an assistant greeting before", SMOLLM2_SYSTEM + GREETING,
     "livekit", "im_end"),
    ("LiveKit's normalisation, P(. ? ! or <|im_end|>)", "", "livekit", "all"),
    ("an assistant greeting before, P(. ? ! or <|im_end|>)", GREETING, "strip", "all"),
    ("a voice-assistant system turn and a two-turn exchange before, P(. ? ! or <|im_end|>)", EXCHANGE, "strip", "all"),
    ("the same with LiveKit's normalisation", EXCHANGE, "livekit", "all"),
]


def prompt_variants(items: list[dict]) -> list[tuple[str, list[list[float]], list[float | None]]]:
    """Each of PROMPTS' probabilities for the replay's transcripts: (name, per utterance its pauses', its end's)."""
    import llama_cpp
    from rvchat_llm.eou import STRIP
    from rvchat_llm.gguf import embedded_gguf

    llm = llama_cpp.Llama(model_path=str(embedded_gguf()), n_ctx=512, n_batch=512, n_threads=1, n_threads_batch=1,
                          verbose=False)

    def tok(s: str) -> list[int]:
        return llm.tokenize(s.encode(), add_bos=False, special=True)

    im_end = tok("<|im_end|>")[-1]
    stops = sorted({tok(s)[-1] for s in (".", "?", "!")})
    out = []
    for name, before, norm, ends in PROMPTS:
        def p_end(text: str, before: str = before, norm: str = norm, ends: str = ends) -> float:
            words = livekit_normalise(text) if norm == "livekit" else text.strip().rstrip(STRIP)
            llm.reset()
            llm.eval(tok(f"{before}<|im_start|>user\n{words}")[-200:])
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            return float(p[im_end] + (p[stops].sum() if ends == "all" else 0.0))

        out.append((name, [[p_end(p["text"]) for p in it["pauses"]] for it in items],
                    [p_end(it["end_text"]) if it["end_text"] is not None else None for it in items]))
    return out


def run() -> str:
    from rvchat_app.endpointing import Holds
    from rvchat_app.settings import Settings as AppSettings

    app = AppSettings()
    unsure = int(os.environ.get("BENCH_UNSURE_MS", app.vad_min_silence_ms))
    words_rule = Holds(complete_ms=int(os.environ.get("BENCH_COMPLETE_MS", app.turn_end_complete_ms)),
                       unsure_ms=unsure,
                       incomplete_ms=int(os.environ.get("BENCH_INCOMPLETE_MS", app.turn_end_incomplete_ms)),
                       midsentence_ms=int(os.environ.get("BENCH_MIDSENTENCE_MS", app.turn_end_midsentence_ms)),
                       midsentence_below=float(os.environ.get("BENCH_EOU_MIDSENTENCE",
                                                              app.turn_end_eou_midsentence)))
    threshold = float(os.environ.get("BENCH_EOU_THRESHOLD", app.turn_end_eou_threshold))
    cache = os.environ.get("BENCH_TURNS_CACHE")
    if cache and os.path.exists(cache):
        with open(cache) as f:
            items, n_clips, took, eou_ms = json.load(f)
    else:
        items, n_clips, took, eou_ms = collect()
        if cache:
            with open(cache, "w") as f:
                json.dump([items, n_clips, took, eou_ms], f)

    def cut(item: dict, hold_of) -> bool:
        return any(p["length"] >= hold_of(p) / 1000 for p in item["pauses"])

    def with_eou(holds: Holds, th: float):
        # Exactly the product's choice (recognition.py -> Holds.for_turn) with the service's probability.
        return lambda p: holds.for_turn(p["text"], p["eou"], th)

    product = f"the product: LLM end-of-utterance >= {threshold:g}: {words_rule.complete_ms}, " \
              f">= {words_rule.midsentence_below:g}: {words_rule.incomplete_ms}, else " \
              f"{words_rule.longest_ms} (APP_TURN_END_EOU defaults)"
    rules = [(f"fixed {ms} ms", lambda _p, ms=ms: ms) for ms in FIXED_MS]
    rules.append(((f"words alone: {words_rule.complete_ms} after a sentence, {words_rule.unsure_ms} unpunctuated, "
                   f"{words_rule.incomplete_ms} after a comma or 'and' (APP_TURN_END_EOU=false)"),
                  lambda p: words_rule.for_text(p["text"])))
    before = Holds(complete_ms=500, unsure_ms=unsure, incomplete_ms=900)
    rules.append(("words alone at the defaults before the LLM's probability (500, 500, 900)",
                  lambda p: before.for_text(p["text"])))
    previous = Holds(complete_ms=300, unsure_ms=unsure, incomplete_ms=700)
    rules.append(("the product before: LLM end-of-utterance >= 0.3: 300, else 700", with_eou(previous, 0.3)))
    longer = Holds(complete_ms=300, unsure_ms=unsure, incomplete_ms=1600)
    rules.append(("one long hold: LLM end-of-utterance >= 0.3: 300, else 1600", with_eou(longer, 0.3)))
    rules.append((f"**{product}**", with_eou(words_rule, threshold)))
    grid = []
    for complete in (300, 500):
        for incomplete in (700, 900, 1200, 1600, 2000):
            for th in (0.1, 0.2, 0.3, 0.5):
                holds = Holds(complete_ms=complete, unsure_ms=unsure, incomplete_ms=incomplete)
                grid.append((f"LLM >= {th:g}: {complete}, else {incomplete}", with_eou(holds, th)))
    tiers = []  # three holds: finished, unsure, mid-sentence
    for incomplete in (700, 900, 1000, 1200):
        for below in (0.003, 0.005, 0.01, 0.02, 0.03, 0.05):
            for mid in (1200, 1600, 2000):
                holds = Holds(complete_ms=300, unsure_ms=unsure, incomplete_ms=incomplete, midsentence_ms=mid,
                              midsentence_below=below)
                tiers.append((f"LLM >= 0.3: 300, >= {below:g}: {incomplete}, else {mid}", with_eou(holds, 0.3)))

    def row(name: str, hold_of, items=items) -> str:
        ended = [it for it in items if it["end_text"] is not None]
        paused = [it for it in items if it["kind"] != "natural"]
        natural = [it for it in items if it["kind"] == "natural"]
        n_cut = sum(cut(it, hold_of) for it in items)
        waits = [hold_of({"text": it["end_text"], "eou": it["end_eou"], "st": it.get("end_st")}) for it in ended]
        return (f"| {name} | {n_cut}/{len(items)} ({100 * n_cut / len(items):.0f}%) | "
                f"{sum(cut(it, hold_of) for it in paused)}/{len(paused)} | "
                f"{sum(cut(it, hold_of) for it in natural)}/{len(natural)} | "
                f"{statistics.median(waits):.0f} | {percentile(waits, 0.9):.0f} |")

    header = ["| rule | cut off (all) | cut off (paused) | cut off (natural) | wait after the end, median ms | p90 ms |",
              "|---|---|---|---|---|---|"]
    lines = [
        "## End of turn: cut-offs and waits",
        "",
        f"{len(items)} utterances from {n_clips} clips of tests/data/speech (single words, word lists and "
        f"whispers left out): each clip as recorded, and cut at the word boundary nearest its middle with a "
        f"pause of {', '.join(f'{p:g}' for p in PAUSES_S)} s. Replayed offline with the real models: Silero "
        f"(the VAD service's turn detector, {SPECULATIVE_MS} ms speculative silence; a pause ends when two "
        "loud 32 ms chunks are heard, as in main_app) and Whisper tiny.en (the STT service's streaming decode "
        "of the words so far at each pause), and the LLM service's end-of-utterance model "
        "(rvchat_llm/eou.py, the code behind POST /v1/eou) on those words. A rule cuts the speaker off when a "
        "pause outlasts its hold; the wait is the hold after the real end (what it adds to voice-to-voice "
        "latency when the reply is ready before it). The holds with the LLM are main_app's own "
        "(rvchat_app.endpointing.Holds.for_turn): words that promise more (a comma, 'and', 'the') hold long "
        f"whatever the probability; the page's turn-end silence ({unsure} ms) bounds both holds. "
        f"Replay {took:.0f} s; one end-of-utterance answer (one thread, nothing cached) took a median "
        f"{statistics.median(eou_ms):.0f} ms, p90 {percentile(eou_ms, 0.9):.0f} ms, max {max(eou_ms):.0f} ms "
        f"({len(eou_ms)} answers; {os.environ.get('BENCH_LOAD_NOTE', 'see the run notes for what else ran')}).",
        "",
        *header,
        *(row(name, hold_of) for name, hold_of in rules),
        "",
        "Candidates (threshold: complete hold, else incomplete hold, in ms):",
        "",
        *header,
        *(row(name, hold_of) for name, hold_of in grid),
        "",
        "Three holds (a third, longest, only for words the model is near-certain go on):",
        "",
        *header,
        *(row(name, hold_of) for name, hold_of in tiers),
    ]
    clips = sorted({it["clip"] for it in items})
    halves = [[it for it in items if clips.index(it["clip"]) % 2 == h] for h in (0, 1)]
    lines += ["", ("Held out: the same rules on each half of the clips (alternately by name; a threshold or hold "
                   "tuned on one half, seen on the other):"), "", *header]
    for name, hold_of in [rules[-1], rules[-2], *[(n, h) for n, h in tiers if n.endswith(": 700, else 1600")]]:
        for h, part in enumerate(halves):
            lines.append(row(f"{name.strip('*')}, half {'AB'[h]} ({len({it['clip'] for it in part})} clips)",
                             hold_of, part))
    if os.environ.get("BENCH_TURNS_PROMPTS"):
        lines += ["", ("Other ways of asking the model, on the same transcripts: how well the probability separates "
                       "the real ends from the mid-sentence pauses of the paused utterances (AUC: the chance that an "
                       "end scores above a pause), how many ends reach each threshold (the median wait is the short "
                       "hold when half do), and the cut-offs with the long hold at 1600 ms:"), "",
                  "| asked | AUC | ends >= 0.1 / 0.2 / 0.3 | cut off at 0.1 / 0.2 / 0.3, 300 else 1600 |",
                  "|---|---|---|---|"]
        holds = Holds(complete_ms=300, unsure_ms=unsure, incomplete_ms=1600)
        for name, p_pauses, p_ends in prompt_variants(items):
            pos = [e for e in p_ends if e is not None]
            neg = [q for it, ps in zip(items, p_pauses) if it["kind"] != "natural" for q in ps]
            scored = [{**it, "pauses": [{**p, "eou": q} for p, q in zip(it["pauses"], ps)]}
                      for it, ps in zip(items, p_pauses)]
            cuts = [sum(cut(it, with_eou(holds, th)) for it in scored) for th in (0.1, 0.2, 0.3)]
            lines.append(f"| {name} | {auc(pos, neg):.2f} | {' / '.join(str(sum(e >= th for e in pos)) for th in (0.1, 0.2, 0.3))}"
                         f" of {len(pos)} | {' / '.join(f'{c}/{len(items)}' for c in cuts)} |")
    if os.environ.get("BENCH_TURNS_SMART_TURN"):
        smart_turn_scores(items, os.environ["BENCH_TURNS_SMART_TURN"])
        product_hold = with_eou(words_rule, threshold)
        audio_rules = [(f"Smart Turn >= {th:g}: 300, else {long}", lambda p, th=th, long=long: 300 if p["st"] >= th
                        else long) for th in (0.5, 0.9) for long in (700, 1600)]
        audio_rules += [
            (f"both say finished (LLM >= {threshold:g} and Smart Turn >= 0.9): 300; one of them: 700; neither: 1600",
             lambda p: 300 if product_hold(p) == words_rule.complete_ms and p["st"] >= 0.9
             else 700 if p["st"] >= 0.9 or product_hold(p) == words_rule.complete_ms else 1600),
            ("the product's holds, Smart Turn >= 0.9 moving a turn one hold shorter",
             lambda p: {words_rule.longest_ms: words_rule.incomplete_ms,
                        words_rule.incomplete_ms: words_rule.complete_ms}.get(product_hold(p), product_hold(p))
             if p["st"] >= 0.9 else product_hold(p)),
        ]
        lines += ["", ("An audio end-of-turn model on the same pauses and ends: pipecat's Smart Turn v3 "
                       f"({os.path.basename(os.environ['BENCH_TURNS_SMART_TURN'])}, the probability that the "
                       "turn is complete from the last 8 s of audio, 200 ms into the silence), alone and "
                       "with the LLM's probability:"), "", *header,
                  row(f"**{product}**", product_hold), *(row(name, hold_of) for name, hold_of in audio_rules)]
    lines += ["", (f"Utterances with at least one pause of {SPECULATIVE_MS} ms or more: "
                   f"{sum(1 for it in items if it['pauses'])}."), "",
              "<details><summary>Pauses and the words before them</summary>", "",
              "| clip | kind | pause ms | words so far | words-alone hold ms | LLM end-of-utterance | product hold ms |",
              "|---|---|---|---|---|---|---|"]
    chosen = with_eou(words_rule, threshold)
    for it in items:
        for p in it["pauses"]:
            lines.append(f"| {it['clip'].removesuffix('.wav')} | {it['kind']} | {p['length'] * 1000:.0f} | "
                         f"{p['text'][-60:]} | {words_rule.for_text(p['text'])} | {p['eou']:.2f} | {chosen(p)} |")
        if it["end_text"] is not None:
            end = {"text": it["end_text"], "eou": it["end_eou"]}
            lines.append(f"| {it['clip'].removesuffix('.wav')} | {it['kind']} (end) | – | {it['end_text'][-60:]} "
                         f"| {words_rule.for_text(it['end_text'])} | {it['end_eou']:.2f} | {chosen(end)} |")
    lines += ["", "</details>"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
