"""Answers: does the embedded assistant answer everyday requests in sense? (issue 15)

56 requests a voice assistant gets - simple facts, how-to, small talk, and follow-ups that need the
previous turn - sent the way typed chat sends them: ``POST /api/message`` on main_app (follow-ups in
the same ``conversation_id``), with main_app and the four services as real processes and the LLM
on the embedded SmolLM2-135M (local provider), every setting at its default. Each reply is judged
mechanically:

- English: no sentence judged another language by ``rvchat_llm.guard.foreign_start`` (function
  words and letters; the replies are in the table for a human to check the heuristic);
- loop: a repeated word trigram, a repeated sentence or a degenerate run (``guard.first_repeat``);
- short enough to speak: at most 60 words;
- not a copy of the request: it must say a content word the request did not;
- right (facts and follow-ups): one of the expected words or phrases appears, and none of the
  question's wrong answers does ("The Mona Lisa by Leonardo da Vinci was painted by ... Michelangelo"
  names the right painter among a wrong one: wrong). The wrong answers are the plausible confusions,
  written per question; those of the first 24 facts were completed after reading the replies of the
  first runs (the human check that found 3 such replies counted right), before any further tuning.

``python -m bench answers`` (or ``python -m bench.answers``) runs it through main_app and writes
``bench/results/answers.md``. ``python -m bench.answers --grid`` instead runs the same requests
straight against LLM service processes, one per configuration of ``GRID`` (sampling settings as
``LLM_*`` environment, system prompt, history window and max_tokens as main_app would send them), to
choose defaults quickly; its table is kept in the same file.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rvchat_llm.guard import first_repeat, foreign_start, words

RESULTS = Path(__file__).parent / "results" / "answers.md"
GRID_MARK = "<!-- grid: written by python -m bench.answers --grid -->"
MAX_WORDS = 60  # about 20 s of speech at Piper's pace: longer is a monologue, not an answer


@dataclass(frozen=True)
class Ask:
    kind: str  # fact | howto | smalltalk | setup (first turn of a follow-up) | followup
    text: str
    expect: tuple[str, ...] = ()  # any one of these (word or phrase) makes the reply right
    wrong: tuple[str, ...] = ()  # ... unless one of these wrong answers is said as well


def _f(text: str, *expect: str, no: tuple[str, ...] = ()) -> tuple[Ask]:
    return (Ask("fact", text, expect, no),)


def _o(kind: str, text: str) -> tuple[Ask]:
    return (Ask(kind, text),)


# Chosen before any tuning and not changed after: everyday requests, not the model's strong suits.
CONVERSATIONS: list[tuple[Ask, ...]] = [
    _f("What is the capital of France?", "paris"),
    _f("What is the capital of Japan?", "tokyo"),
    _f("How many days are there in a week?", "seven", "7"),
    _f("How many legs does a spider have?", "eight", "8", no=("six", "6", "ten", "10")),
    _f("What is the largest planet in our solar system?", "jupiter", no=("saturn",)),
    _f("At what temperature does water freeze in Celsius?", "zero", "0"),
    _f("Who wrote Romeo and Juliet?", "shakespeare", no=("french", "marlowe", "dickens")),
    _f("What color is the sky on a clear day?", "blue"),
    _f("Which animal says moo?", "cow", "cows", "cattle"),
    _f("What is the opposite of hot?", "cold"),
    _f("How many hours are there in a day?", "24", "twenty four"),
    _f("What do bees make?", "honey"),
    _f("What is the largest ocean on Earth?", "pacific"),
    _f("Which planet is known as the Red Planet?", "mars", no=("venus", "jupiter")),
    _f("How many continents are there?", "seven", "7"),
    _f("Who painted the Mona Lisa?", "leonardo", "da vinci", no=("michelangelo", "raphael", "picasso", "van gogh")),
    _f("What is two plus two?", "four", "4", no=("five", "5", "twenty two", "22")),
    _f("What is the boiling point of water in Celsius?", "100", "hundred"),
    _f("What is the capital of Spain?", "madrid", no=("barcelona",)),
    _f("How many minutes are in an hour?", "sixty", "60", no=("1.5", "minutes in a minute", "100")),
    _f("What language do people speak in Brazil?", "portuguese", no=("spanish",)),
    _f("What is the tallest animal in the world?", "giraffe", "giraffes"),
    _f("What is the first month of the year?", "january", no=("february", "december")),
    _f("How many sides does a triangle have?", "three", "3", no=("four", "4")),
    _o("howto", "How do I boil an egg?"),
    _o("howto", "How can I fall asleep faster?"),
    _o("howto", "How do I make a cup of tea?"),
    _o("howto", "What should I do if I burn my finger?"),
    _o("howto", "How do I reset my Wi-Fi router?"),
    _o("howto", "How can I save money on groceries?"),
    _o("howto", "How do I cook rice?"),
    _o("howto", "What's a good way to remember people's names?"),
    _o("smalltalk", "Hello!"),
    _o("smalltalk", "How are you today?"),
    _o("smalltalk", "Thank you so much!"),
    _o("smalltalk", "Tell me a joke."),
    _o("smalltalk", "What's your name?"),
    _o("smalltalk", "Good night!"),
    _o("smalltalk", "I'm feeling a bit tired today."),
    _o("smalltalk", "What can you do?"),
    (Ask("setup", "What is the capital of Italy?", ("rome",)), Ask("followup", "And of Germany?", ("berlin",))),
    (Ask("setup", "How many legs does a dog have?", ("four", "4")),
     Ask("followup", "And a bird?", ("two", "2"))),
    (Ask("setup", "My name is Anna."), Ask("followup", "What is my name?", ("anna",))),
    (Ask("setup", "I have a dog called Max."), Ask("followup", "What is my dog's name?", ("max",))),
    (Ask("setup", "Who wrote Hamlet?", ("shakespeare",)),
     Ask("followup", "What else did he write?", ("romeo", "juliet", "macbeth", "othello", "lear", "tempest",
                                                 "dream", "twelfth night", "caesar", "sonnets"))),
    (Ask("setup", "What is the capital of Egypt?", ("cairo",)),
     Ask("followup", "Which river flows through it?", ("nile",))),
    (Ask("setup", "I'm planning a trip to Paris."), Ask("followup", "What famous tower is there?", ("eiffel",))),
    (Ask("setup", "What color are bananas?", ("yellow",)), Ask("followup", "And strawberries?", ("red",))),
]


# Asked only by the grid, to check that the defaults chosen on the facts above hold on facts they
# were not chosen on (written before the first grid run, like the set above).
HELD_OUT_WRONG = {"Who was the first president of the United States?": ("lincoln", "jefferson", "adams"),
                  "What is the largest mammal?": ("elephant",),
                  "Which planet is closest to the Sun?": ("venus", "mars"),
                  "What is the capital of Russia?": ("petersburg",),
                  "Which animal is known as the king of the jungle?": ("tiger",),
                  "How many legs does an insect have?": ("eight", "8")}
HELD_OUT: list[Ask] = [Ask("heldout", q, tuple(e), HELD_OUT_WRONG.get(q, ())) for q, *e in [
    ("What is the capital of Russia?", "moscow"),
    ("How many legs does an insect have?", "six", "6"),
    ("What is the freezing point of water in Fahrenheit?", "32"),
    ("Who was the first president of the United States?", "washington"),
    ("What is the largest mammal?", "whale", "whales"),
    ("How many months are in a year?", "twelve", "12"),
    ("What color is grass?", "green"),
    ("What do caterpillars turn into?", "butterfly", "butterflies", "moth", "moths"),
    ("Which planet is closest to the Sun?", "mercury"),
    ("What is the capital of the United Kingdom?", "london"),
    ("What language do people speak in Mexico?", "spanish"),
    ("How many seconds are in a minute?", "sixty", "60"),
    ("What is the hottest planet in our solar system?", "venus"),
    ("What is the largest country in the world by area?", "russia"),
    ("Which animal is known as the king of the jungle?", "lion", "lions"),
    ("What is frozen water called?", "ice"),
]]


# --------------------------------------------------------------------------- judging
@dataclass
class Verdict:
    ask: Ask
    reply: str
    ms: float = 0.0
    english: bool = True
    loop: bool = False
    n_words: int = 0
    copy: bool = False
    right: bool | None = None  # None: nothing to check
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(ask: Ask, reply: str, ms: float = 0.0) -> Verdict:
    v = Verdict(ask, reply, ms)
    v.english = foreign_start(reply) is None
    v.loop = first_repeat(reply) is not None
    reply_words = words(reply)
    v.n_words = len(reply_words)
    asked = set(words(ask.text))
    v.copy = bool(reply_words) and set(reply_words) <= asked
    if ask.expect:
        flat = " " + " ".join(reply_words) + " "
        said = lambda e: f" {' '.join(words(e))} " in flat  # noqa: E731
        v.right = any(map(said, ask.expect)) and not any(map(said, ask.wrong))
    if not reply.strip():
        v.problems.append("empty")
    if not v.english:
        v.problems.append("not English")
    if v.loop:
        v.problems.append("loop")
    if v.n_words > MAX_WORDS:
        v.problems.append(f"{v.n_words} words")
    if v.copy:
        v.problems.append("copies the request")
    if v.right is False:
        v.problems.append("wrong")
    return v


def totals(verdicts: list[Verdict]) -> dict[str, Any]:
    held = [v for v in verdicts if v.ask.kind == "heldout"]
    verdicts = [v for v in verdicts if v.ask.kind != "heldout"]
    n = len(verdicts)
    lens = [v.n_words for v in verdicts]
    facts = [v for v in verdicts if v.ask.kind == "fact"]
    follow = [v for v in verdicts if v.ask.kind == "followup"]
    return {
        "n": n,
        "english": sum(v.english for v in verdicts),
        "loops": sum(v.loop for v in verdicts),
        "max_words": max(lens, default=0),
        "median_words": statistics.median(lens) if lens else 0,
        "over": sum(v.n_words > MAX_WORDS for v in verdicts),
        "copies": sum(v.copy for v in verdicts),
        "empty": sum(not v.reply.strip() for v in verdicts),
        "facts_right": sum(bool(v.right) for v in facts), "facts": len(facts),
        "follow_right": sum(bool(v.right) for v in follow), "follow": len(follow),
        "held_right": sum(bool(v.right) for v in held), "held": len(held),
        "ok": sum(v.ok for v in verdicts),
        "median_ms": statistics.median([v.ms for v in verdicts]) if verdicts else 0,
    }


def guard_actions(llm_log: str) -> dict[str, int]:
    """How often the local provider's guard cut, retried or fell back (it logs each)."""
    return {a: len(re.findall(rf"guard: \w+ in the reply; {re.escape(a)} \(", llm_log)) for a in GUARD_ACTIONS}


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f}%" if b else "–"


def summary_row(name: str, t: dict[str, Any]) -> str:
    row = (f"| {name} | {_pct(t['english'], t['n'])} | {t['loops']} | {t['max_words']} / {t['median_words']:g} | "
           f"{t['facts_right']}/{t['facts']} ({_pct(t['facts_right'], t['facts'])}) | "
           f"{t['follow_right']}/{t['follow']} | {t['copies']} | {t['empty']} | {t['ok']}/{t['n']} | "
           f"{t['median_ms'] / 1000:.1f} s |")
    return row + (f" {t['held_right']}/{t['held']} |" if t["held"] else "")


SUMMARY_HEAD = ("| run | English | loops | words max / median | facts right | follow-ups right | copies | "
                "empty | all checks pass | median reply time |\n|---|---|---|---|---|---|---|---|---|---|")
GUARD_ACTIONS = ("cut", "retried", "retried, cut", "fallback")  # as rvchat_llm.providers.local logs them
GRID_HEAD = (SUMMARY_HEAD.replace(" |\n", " | held-out facts | guard: cut / retried / retried+cut / fallback |\n",
                                  1)
             + "---|---|")


# --------------------------------------------------------------------------- through main_app
def ask_app(url: str) -> list[Verdict]:
    out: list[Verdict] = []
    with httpx.Client(base_url=url, timeout=180) as client:
        for conv in CONVERSATIONS:
            cid: str | None = None
            for ask in conv:
                body: dict[str, Any] = {"text": ask.text}
                if cid:
                    body["conversation_id"] = cid
                t0 = time.perf_counter()
                r = client.post("/api/message", json=body)
                ms = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    v = judge(ask, "", ms)
                    v.problems.append(f"HTTP {r.status_code}")
                    out.append(v)
                    break
                data = r.json()
                cid = data["conversation_id"]
                out.append(judge(ask, data["text"], ms))
    return out


def through_app(app_env_extra: dict[str, str] | None = None,
                llm_env: dict[str, str] | None = None) -> tuple[list[Verdict], dict[str, int]]:
    """The requests through main_app; also what the LLM's guard did (from its log)."""
    from rvchat_app.testing import app_env
    from rvchat_common.testing import ServiceProcess

    os.environ.setdefault("OMP_NUM_THREADS", "2")
    specs = {"vad": ("rvchat_vad", "VAD_", {}), "stt": ("rvchat_stt", "STT_", {}),
             "tts": ("rvchat_tts", "TTS_", {}),
             "llm": ("rvchat_llm", "LLM_", {"LLM_PROVIDER": "local", **(llm_env or {})})}
    procs = {n: ServiceProcess(m, p, e) for n, (m, p, e) in specs.items()}
    try:
        for p in procs.values():
            p.start(wait_ready=False)
        for p in procs.values():
            p.wait("/readyz", 300)
        db = Path(tempfile.mkdtemp()) / "answers.sqlite3"
        with ServiceProcess("rvchat_app", "APP_", {**app_env(procs, db), **(app_env_extra or {})}) as app:
            verdicts = ask_app(app.url)
        return verdicts, guard_actions(procs["llm"].log_path.read_text(errors="replace"))
    finally:
        for p in procs.values():
            p.stop()


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip() or "(empty)"


def report(verdicts: list[Verdict], seconds: float, actions: dict[str, int] | None = None,
           before: list[Verdict] | None = None) -> str:
    from rvchat_app.settings import Settings as AppSettings
    from rvchat_llm.settings import Settings as LlmSettings

    t = totals(verdicts)
    app, llm = AppSettings(), LlmSettings(provider="local")
    kinds = [a.kind for conv in CONVERSATIONS for a in conv]
    prompt = "the LLM's own" if app.system_prompt in (None, llm.system_prompt) else "main_app's own"
    lines = [
        "## Answers (embedded model through main_app)",
        "",
        f"{t['n']} everyday requests ({kinds.count('fact')} facts, {kinds.count('howto')} how-to, "
        f"{kinds.count('smalltalk')} small talk, {kinds.count('followup')} two-turn follow-ups) sent to main_app "
        "`POST /api/message` as typed chat does, follow-ups in the same conversation; main_app, VAD, STT, TTS and "
        f"the LLM as real processes, the LLM on the embedded SmolLM2-135M ({llm.embedded_quant.upper()}, "
        "`LLM_EMBEDDED_QUANT`), every setting at its default: main_app "
        f"temperature {app.temperature if app.temperature is not None else 'unset (the LLM default)'}, prompt "
        f"{prompt} (\"{llm.system_prompt}\"), history {app.history_messages} messages, max_tokens "
        f"{app.max_tokens}; LLM local temperature {llm.default_temperature():g}, repeat_penalty "
        f"{llm.repeat_penalty:g}, guard {'on' if llm.guard else 'off'}, at most {llm.max_sentences} sentences. "
        "Judged as described in `bench/answers.py`. A fact counts as right when an expected word appears and "
        "none of the question's wrong answers does (a reply naming the right answer among a wrong one is wrong); "
        "read the replies below. "
        f"The run took {seconds:.0f} s on the shared 2-core machine.",
        "",
        SUMMARY_HEAD,
        *([summary_row("before: settings of issue 15 (main_app prompt, t=0.6, no guard)", totals(before))]
          if before else []),
        summary_row("**defaults**", t),
        "",
        "The LLM's guard (rvchat_llm/guard.py) during the run: "
        + ", ".join(f"{n} {a}" for a, n in (actions or {}).items()) + ".",
        "",
        "<details><summary>Per request</summary>",
        "",
        "| # | kind | request | reply | words | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for i, v in enumerate(verdicts, 1):
        lines.append(f"| {i} | {v.ask.kind} | {_cell(v.ask.text)} | {_cell(v.reply)} | {v.n_words} | "
                     f"{'ok' if v.ok else ', '.join(v.problems)} |")
    lines += ["", "</details>"]
    return "\n".join(lines)


def _kept_grid() -> str:
    try:
        text = RESULTS.read_text()
    except OSError:
        return ""
    return text[text.index(GRID_MARK):] if GRID_MARK in text else ""


def run() -> str:
    """The bench section: the evaluation through main_app, with the settings before issue 15 and with the
    defaults (keeps the last grid table, if any)."""
    t0 = time.perf_counter()
    before, _ = through_app({"APP_SYSTEM_PROMPT": MAIN_APP_PROMPT_BEFORE, "APP_TEMPERATURE": "0.6"},
                            {**_env(guard=False), "LLM_SYSTEM_PROMPT": LLM_PROMPT_BEFORE})
    verdicts, actions = through_app()
    section = report(verdicts, time.perf_counter() - t0, actions, before)
    grid = _kept_grid()
    return section + ("\n\n" + grid if grid else "")


# --------------------------------------------------------------------------- config grid (LLM service)
@dataclass
class Config:
    name: str
    env: dict[str, str] = field(default_factory=dict)  # LLM_* for the service process
    system: str | None = None  # None: the service default
    temperature: float | None = None
    max_tokens: int | None = 80
    history: int = 8  # messages of the conversation sent, as main_app's history_messages


# The prompts compared; rows spell out every setting, so the table does not change meaning when a
# default does (only the last row uses the defaults as they are).
MAIN_APP_PROMPT_BEFORE = ("You are a friendly voice assistant. Answer in one or two short spoken sentences, "
                          "plain words only: no lists, no markdown, no emoji.")
LLM_PROMPT_BEFORE = "You are a helpful voice assistant. Answer directly in one or two short English sentences."
SIMPLE_PROMPT = "You are a helpful voice assistant. Answer in one or two short, simple English sentences."
NO_LISTS_PROMPT = ("You are a helpful voice assistant. Answer in one or two short, simple English sentences, "
                   "with no lists or markdown.")

SMOL_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # its chat template's
SURE_PROMPT = NO_LISTS_PROMPT + " Give the answer first, and say only what you are sure is true."
EXAMPLES_PROMPT = (NO_LISTS_PROMPT + " For example, asked \"What is the capital of Canada?\" you answer "
                   "\"The capital of Canada is Ottawa.\"; asked \"How many wheels does a bicycle have?\" you "
                   "answer \"A bicycle has two wheels.\"")


def _env(guard: bool = True, repeat: float = 1.0, sentences: int = 0) -> dict[str, str]:
    return {"LLM_GUARD": str(guard).lower(), "LLM_REPEAT_PENALTY": str(repeat),
            "LLM_MAX_SENTENCES": str(sentences)}


CHOSEN = _env(repeat=1.1, sentences=2)

GRID: list[Config] = [
    # What main_app sent before issue 15: its own prompt and temperature 0.6 (the LLM had no guard).
    Config("before: main_app prompt, t=0.6, no guard", _env(False), MAIN_APP_PROMPT_BEFORE, 0.6),
    Config("old LLM prompt, t=0.6, no guard", _env(False), LLM_PROMPT_BEFORE, 0.6),
    Config("old LLM prompt, greedy, no guard", _env(False), LLM_PROMPT_BEFORE, 0.0),
    Config("old LLM prompt, greedy, guard", _env(), LLM_PROMPT_BEFORE, 0.0),
    Config("old LLM prompt, greedy, repeat 1.1, guard", _env(repeat=1.1), LLM_PROMPT_BEFORE, 0.0),
    Config("old LLM prompt, greedy, repeat 1.2, guard", _env(repeat=1.2), LLM_PROMPT_BEFORE, 0.0),
    Config("old LLM prompt, t=0.3, repeat 1.1, guard", _env(repeat=1.1), LLM_PROMPT_BEFORE, 0.3),
    Config("main_app prompt, greedy, repeat 1.1, guard", _env(repeat=1.1), MAIN_APP_PROMPT_BEFORE, 0.0),
    Config("simple prompt, greedy, repeat 1.1, guard", _env(repeat=1.1), SIMPLE_PROMPT, 0.0),
    Config("no-lists prompt, greedy, repeat 1.1, guard", _env(repeat=1.1), NO_LISTS_PROMPT, 0.0),
    Config("no-lists, greedy, repeat 1.1, guard, 3 sentences", _env(repeat=1.1, sentences=3), NO_LISTS_PROMPT,
           0.0),
    Config("**no-lists, greedy, repeat 1.1, guard, 2 sentences**", CHOSEN, NO_LISTS_PROMPT, 0.0),
    Config("the same, no guard", {**CHOSEN, "LLM_GUARD": "false"}, NO_LISTS_PROMPT, 0.0),
    Config("the same, history 4", CHOSEN, NO_LISTS_PROMPT, 0.0, history=4),
    Config("the same, history 2", CHOSEN, NO_LISTS_PROMPT, 0.0, history=2),
    Config("the same, max_tokens 60", CHOSEN, NO_LISTS_PROMPT, 0.0, max_tokens=60),
    Config("the same, max_tokens 120", CHOSEN, NO_LISTS_PROMPT, 0.0, max_tokens=120),
    Config("sure prompt, chosen settings", CHOSEN, SURE_PROMPT, 0.0),
    Config("examples prompt, chosen settings", CHOSEN, EXAMPLES_PROMPT, 0.0),
    Config("SmolLM's own prompt, chosen settings", CHOSEN, SMOL_PROMPT, 0.0),
    Config("SmolLM's own prompt + brief, chosen settings", CHOSEN, SMOL_PROMPT + " Answer in one short sentence.",
           0.0),
    Config("defaults as they are (nothing set)", {}, None, None),
]


def ask_llm(url: str, cfg: Config, held_out: bool = True) -> list[Verdict]:
    out: list[Verdict] = []
    with httpx.Client(base_url=url, timeout=180) as client:
        for conv in CONVERSATIONS:
            history: list[dict[str, str]] = []
            for ask in conv:
                history.append({"role": "user", "content": ask.text})
                body: dict[str, Any] = {"messages": history[-cfg.history:]}
                for key in ("system", "temperature", "max_tokens"):
                    if getattr(cfg, key) is not None:
                        body[key] = getattr(cfg, key)
                t0 = time.perf_counter()
                r = client.post("/generate", json=body)
                ms = (time.perf_counter() - t0) * 1000
                reply = r.json()["message"]["content"].strip() if r.status_code == 200 else ""
                history.append({"role": "assistant", "content": reply})
                out.append(judge(ask, reply, ms))
        for ask in HELD_OUT if held_out else []:
            body = {"messages": [{"role": "user", "content": ask.text}]}
            for key in ("system", "temperature", "max_tokens"):
                if getattr(cfg, key) is not None:
                    body[key] = getattr(cfg, key)
            r = client.post("/generate", json=body)
            out.append(judge(ask, r.json()["message"]["content"].strip() if r.status_code == 200 else ""))
    return out


def grid(names: list[str] | None = None, show: bool = False) -> str:
    from rvchat_common.testing import ServiceProcess

    configs = [c for c in GRID if not names or any(n.lower() in c.name.lower() for n in names)]
    rows = [GRID_HEAD]
    for cfg in configs:
        env = {"LLM_PROVIDER": "local", **cfg.env}
        with ServiceProcess("rvchat_llm", "LLM_", env) as llm:
            verdicts = ask_llm(llm.url, cfg)
            log = llm.log_path.read_text(errors="replace")
        acts = guard_actions(log)
        rows.append(summary_row(cfg.name, totals(verdicts)) + " " + " / ".join(str(acts[a]) for a in GUARD_ACTIONS)
                    + " |")
        print(rows[-1], flush=True)
        if show:
            for v in verdicts:
                if not v.ok:
                    print(f"    {v.ask.text!r} -> {v.reply!r}: {', '.join(v.problems)}", flush=True)
    return "\n".join([
        GRID_MARK, "", "### Config grid (LLM service directly)", "",
        "The same requests sent to the LLM service's `POST /generate` (one process per row, the history window "
        "and max_tokens as main_app sends them), to choose the local model's defaults. Rows: "
        "`python -m bench.answers --grid`; `LLM_GUARD=false` rows show the model without the guard.", "",
        *rows])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.answers", description=__doc__.split("\n")[0])
    ap.add_argument("--grid", nargs="*", metavar="NAME", help="run the config grid (optionally only rows "
                    "whose name contains one of NAME) against the LLM service instead of main_app")
    ap.add_argument("--show", action="store_true", help="print the failing replies")
    args = ap.parse_args(argv)
    RESULTS.parent.mkdir(exist_ok=True)
    if args.grid is not None:
        table = grid(args.grid, args.show)
        kept = RESULTS.read_text() if RESULTS.exists() else ""
        head = kept[:kept.index(GRID_MARK)].rstrip() if GRID_MARK in kept else kept.rstrip()
        RESULTS.write_text((head + "\n\n" if head else "") + table + "\n")
    else:
        section = run()
        RESULTS.write_text(section.rstrip() + "\n")
        if args.show:
            print(section)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
