"""Stops a reply that loops or leaves the reply language, while it is being written.

Why: the embedded SmolLM2-135M sometimes falls into a loop ("I'm sorry, but I'm afraid of my own
food." four times over) or answers in French ("La femme de France, mon ami, mon ami, ...") - issue 15.
A voice assistant must never speak either, and must not go silent instead.

How it streams: text is released in the units the TTS speaks - a first segment that ends at a clause
mark after ``first_clause_words`` words or after ``first_max_words`` words at the latest (as
``rvchat_common.sentences.SentenceSplitter`` cuts it with the TTS defaults), then whole sentences -
each only once it is complete and judged: no repeated word trigram, no repeated
sentence, no degenerate run, and (with a reply language) in that language. The TTS cannot speak a
unit before it is complete anyway, so the hold costs the voice no time; in exchange a cut always
falls where a spoken unit ends, and while nothing is released the reply can still be replaced
(retry, fallback) rather than spoken half-way. The caller stops generation as soon as
:attr:`StreamGuard.problem` is set.

Language check: a heuristic, not a detector package. Replies are 3-40 words, which is where
statistical detectors (langid, langdetect) are least reliable ("Paris." or "Los Angeles." say
nothing), and the check runs on every token: counting English against French/Spanish/Italian/
German/Portuguese/Dutch function words, plus the share of non-ASCII letters, costs microseconds, is
deterministic and needs no data file. It only has to tell English from what this model drifts into.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from itertools import pairwise

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# A sentence ends at . ! ? … (with closing quotes/brackets) followed by whitespace, or at a line break.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|\n+")
_LIST_NUMBER = re.compile(r"\s*\d{1,2}[.)]")
_ENDS_SENTENCE = re.compile(r"([.!?…][\"'”’)\]]*\s*|\n\s*)$")
_CLAUSE_END = re.compile(r"[,;:](?=\s)|\s[-–—](?=\s)")
_RUN = re.compile(r"([^\s\d])\1{7,}")  # "!!!!!!!!", "........", "hhhhhhhh"; not 100000000
_LONG_WORD = 40  # no English word is this long; a "word" that is means the model is spewing

# English function words: frequent in any English sentence, rare in the languages below.
ENGLISH_WORDS = frozenset("""
the a an is are was were be been being am of to in on at for with and or but not no yes it its it's
this that these those you your you're i i'm i'll i've me my we our us they their them he she his her
him can will would should could may might must do does did don't doesn't can't won't have has had
what how why when where who whom which there here from by as if so than then about into up out just
some any all more most very also one like get make sure there's let's here's that's what's it'll
hello hi thanks thank please sorry okay ok well too only over after before because while each every
many much other such both few own same again off under between through during without
""".split())

# Function words of the languages the model drifts into. Words that are also English ("a", "on",
# "die", "per", "son", "no", "me", "an", "as") are left out: they would count for both.
FOREIGN_WORDS = frozenset("""
le la les un une des du de et est sont je tu il elle nous vous ils elles mon ma mes ton ta tes sa ses
ce cette ces qui que quoi pour avec dans sur pas ne très mais ou où oui ami amie c'est n'est j'ai
suis au aux leur notre votre être avoir fait comme bonjour bonsoir merci monsieur madame
el los las es y en por con una del para se su sus muy pero como está están soy eres hola gracias
sí más lo al hay también usted
il di che non sono gli della nel è ciao grazie anche questo questa molto
der das und ist nicht ich sie ein eine mit auf für zu den dem wir sind auch nein danke bitte
hallo gut
os um uma é não com você obrigado obrigada
het een van zijn niet ik
""".split())

# Words that alone say the reply is not English ("Bonjour !", "Merci.").
FOREIGN_GREETINGS = frozenset("bonjour bonsoir merci oui hola gracias ciao grazie danke hallo "
                              "obrigado obrigada monsieur madame".split())


def words(text: str) -> list[str]:
    """Lower-case words (letters and digits, inner apostrophes kept), punctuation dropped."""
    return [w.replace("’", "'") for w in _WORD.findall(text.lower())]


def english_verdict(text: str, min_words: int = 4) -> bool | None:
    """True: English; False: not; None: too short to tell (fewer than ``min_words`` words).

    Measured on this project's 48-request evaluation (bench/answers.py): every SmolLM2 reply judged
    by hand as English passes, and the French/Spanish replies it produced at temperature 0.6 fail.
    """
    letters = [c for c in text if c.isalpha()]
    if letters:
        foreign = sum(1 for c in letters if not ("a" <= c <= "z" or "A" <= c <= "Z"))
        # Two or more and over 10%: a "café" or "naïve" in an English sentence stays English.
        if foreign >= 2 and foreign > 0.10 * len(letters):
            return False
    ws = words(text)
    en = sum(1 for w in ws if w in ENGLISH_WORDS)
    fx = sum(1 for w in ws if w in FOREIGN_WORDS)
    if en == 0 and any(w in FOREIGN_GREETINGS for w in ws):
        return False
    # A single foreign word is often a name ("La Paz", "Los Angeles", "de Gaulle"): it takes two.
    if fx >= 2 and fx >= en:
        return False
    if len(ws) < min_words:
        return None
    return fx <= en


def is_english(text: str, min_words: int = 4) -> bool:
    """True unless the text is judged to be in another language (too short to tell counts as English)."""
    return english_verdict(text, min_words) is not False


def first_repeat(text: str, final: bool = True) -> int | None:
    """Where the text starts repeating itself: the character index of the first repeated word
    trigram's second occurrence, of a sentence said before, or of a degenerate run; else None.

    With ``final=False`` a last word still being written is ignored (it may be a prefix).
    """
    found: list[int] = []
    m = _RUN.search(text)
    if m:
        found.append(m.start())
    spans = [(m.start(), m.end(), m.group().lower().replace("’", "'")) for m in _WORD.finditer(text)]
    if spans and not final and spans[-1][1] == len(text):
        spans.pop()
    seen: set[tuple[str, ...]] = set()
    for i, (start, end, w) in enumerate(spans):
        if end - start >= _LONG_WORD:
            found.append(start)
            break
        if i >= 2:
            tri = (spans[i - 2][2], spans[i - 1][2], w)
            if tri in seen:
                found.append(spans[i - 2][0])
                break
            seen.add(tri)
    said: set[str] = set()
    for start, end in sentence_spans(text, final):
        key = " ".join(words(text[start:end]))
        if not key:
            continue
        if key in said:
            found.append(start)
            break
        said.add(key)
    return min(found) if found else None


def sentence_spans(text: str, final: bool = True) -> list[tuple[int, int]]:
    """(start, end) of each complete sentence; with ``final`` the unterminated tail counts too."""
    out: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if _LIST_NUMBER.fullmatch(text[text.rfind("\n", 0, m.start()) + 1:m.end()]):
            continue  # "2." opening a list item is not a sentence of its own
        if m.group().startswith("\n") and text[:m.start()].rstrip().endswith(":"):
            continue  # "Boil an egg:" followed by a list is not a sentence of its own either
        if text[start:m.end()].strip():
            out.append((start, m.end()))
        start = m.end()
    if final and text[start:].strip():
        out.append((start, len(text)))
    return out


def foreign_start(text: str, judge_words: int = 4, final: bool = True) -> int | None:
    """Where the text leaves English: the start of the first sentence (short ones are judged
    together with the next) judged not English; None if none is.

    Judged sentence by sentence so that a switch half-way ("... Bien sûr, je ne sais pas.") is not
    diluted by the English before it. With ``final=False`` an unfinished last sentence is judged
    only once it has ``2 * judge_words`` words.
    """
    spans = sentence_spans(text, final=False)
    tail_start = spans[-1][1] if spans else 0
    tail = text[tail_start:]
    if tail.strip() and (final or len(words(tail)) >= 2 * judge_words):
        spans.append((tail_start, len(text)))
    group_start: int | None = None
    for start, end in spans:
        group_start = start if group_start is None else group_start
        verdict = english_verdict(text[group_start:end], judge_words)
        if verdict is False:
            return group_start
        if verdict is True:
            group_start = None  # short sentences are judged together with the next
    return None


def is_looping(text: str) -> bool:
    return first_repeat(text) is not None


class StreamGuard:
    """Judges a reply as it is written and says what may be released.

    ``feed(delta)`` returns the text that may go out now ("" while a unit is being judged);
    ``finish(truncated)`` returns the rest at the end of the stream. Once :attr:`problem` is set
    ("loop" or "language") nothing more is released and the caller should stop generating; what
    was released is always whole units that passed every check.
    """

    def __init__(self, language: str | None = "en", first_clause_words: int = 4, judge_words: int = 4,
                 max_hold_chars: int = 300, max_sentences: int = 0, first_max_words: int = 5) -> None:
        self.language = (language or "").lower() or None
        # The TTS's TTS_FIRST_SEGMENT_MAX_WORDS default: its first audio starts after five words
        # (voice-to-voice median 543 ms against 652-702 ms waiting for the sentence), so the guard
        # must not hold them longer.
        self.first_max_words = first_max_words
        self.max_sentences = max_sentences
        self.first_clause_words = first_clause_words
        self.judge_words = judge_words
        self.max_hold_chars = max_hold_chars
        self.text = ""
        self.released = 0  # characters of self.text already let out
        self.problem: str | None = None

    @property
    def released_text(self) -> str:
        return self.text[:self.released]

    @property
    def complete(self) -> bool:
        """The reply has its ``max_sentences`` whole sentences: the caller should stop generating."""
        return self.released > 0 and self._ends_complete(self.released)

    def feed(self, delta: str) -> str:
        if self.problem is not None or self.complete or not delta:
            return ""
        self.text += delta
        return self._advance(final=False)

    def finish(self, truncated: bool = False) -> str:
        """The end of the stream. ``truncated``: it was cut by the token limit, so an unfinished
        last sentence is dropped when what was released ends a sentence (a voice should not stop
        mid-sentence); otherwise it is all there is, and goes out."""
        if self.problem is not None or self.complete:
            return ""
        out = self._advance(final=not truncated)
        if self.problem is not None or self.released >= len(self.text.rstrip()):
            return out
        if truncated and _ENDS_SENTENCE.search(self.released_text):
            return out
        return out + self._advance(final=True)

    # --- judging ---------------------------------------------------------------------------
    def _language_problem(self, final: bool) -> int | None:
        if self.language != "en":
            return None
        return foreign_start(self.text, self.judge_words, final)

    def _boundaries(self, final: bool) -> list[tuple[int, bool]]:
        """Ends of the units that may be released, each with whether it ends only part of a
        sentence: the first clause or five words, then whole sentences (and a cut in an overlong one)."""
        ends = [(end, False) for _, end in sentence_spans(self.text, final)]
        if self.released == 0 and self.first_clause_words:
            first_end = ends[0][0] if ends else len(self.text)
            for m in _CLAUSE_END.finditer(self.text, 0, first_end):
                if len(words(self.text[:m.start()])) >= self.first_clause_words:
                    ends.append((m.end(), True))
                    break
            if self.first_max_words:
                spans = list(re.finditer(r"\S+", self.text[:first_end]))
                if len(spans) > self.first_max_words:  # the next word has begun: the fifth is whole
                    ends.append((spans[self.first_max_words - 1].end(), True))
        pending = len(self.text) - self.released
        if pending > self.max_hold_chars:
            # A unit with no boundary for this long: let it out at its last space, as the TTS would.
            cut = self.text.rfind(" ", self.released, len(self.text))
            if cut > self.released:
                ends.append((cut, False))
        return sorted(e for e in ends if e[0] > self.released)

    def _releasable(self, start: int, end: int, clause: bool) -> bool:
        unit = self.text[start:end]
        # The unit itself must not read as another language: a first clause goes out before its
        # sentence is complete, so before _language_problem can judge the sentence.
        if self.language == "en" and english_verdict(unit, self.judge_words) is False:
            return False
        if clause:
            # A clause goes out before the loop shows as a repeated trigram: "Hello there, hello
            # there," and "A day is a day," were let out that way. A repeated word pair holds it.
            pairs = list(pairwise(words(self.text[:end])))
            if len(set(pairs)) < len(pairs):
                return False
        return True

    def _ends_complete(self, end: int) -> bool:
        """``text[:end]`` ends a sentence, and with it holds ``max_sentences`` sentences."""
        return _ENDS_SENTENCE.search(self.text[:end]) is not None and self.complete_at(end)

    def complete_at(self, end: int) -> bool:
        """``text[:end]`` holds ``max_sentences`` sentences (never, with no limit)."""
        return bool(self.max_sentences) and len(sentence_spans(self.text[:end])) >= self.max_sentences

    def _advance(self, final: bool) -> str:
        if self.complete:
            return ""
        bad: list[tuple[int, str]] = []
        repeat = first_repeat(self.text, final)
        if repeat is not None:
            bad.append((repeat, "loop"))
        lang = self._language_problem(final)
        if lang is not None:
            bad.append((lang, "language"))
        limit = len(self.text)
        if bad:
            limit, kind = min(bad)
            self.problem = kind
        # Releasable: the furthest boundary before any problem, once enough words were seen to
        # judge the language (or the stream ended, or there was a problem after it).
        target = self.released
        if self.problem is not None:
            # After a problem only whole sentences before it are kept, never a dangling clause.
            ends = [e for _, e in sentence_spans(self.text, final=False) if e <= limit]
            target = max([e for e in ends if e > self.released], default=self.released)
            if target == self.released and self.released and not _ENDS_SENTENCE.search(self.released_text):
                # Part of the first sentence is out already (its first five words): finish it as far
                # as it goes well, to its last clause mark before the problem, rather than mid-phrase.
                marks = [m.end() for m in _CLAUSE_END.finditer(self.text, self.released, limit)]
                if marks and english_verdict(self.text[self.released:marks[-1]],
                                             self.judge_words) is not False:
                    target = marks[-1]
        elif final or len(words(self.text)) >= self.judge_words:
            for end, clause in self._boundaries(final):
                if self._releasable(target, end, clause):
                    target = end
                    if not clause and self.complete_at(end):
                        break  # enough said
                elif not clause:
                    break  # a clause that may not go out early still goes out with its sentence
            if final and self.text[target:].strip() and not self.complete_at(target):
                # The stream ended and its rest may not go out: a sentence read as another language
                # on its own though not with the short ones around it.
                self.problem = "language"
            if target > self.released and not self._ends_complete(target):
                # A unit ends where the whitespace after it was seen: let that whitespace out with it, so
                # that a splitter downstream (the TTS's) knows at once that the unit is whole. Without it
                # the TTS waited for the next word, which is held here until its sentence is judged: the
                # first five words were spoken only once the whole first sentence had been written
                # (0.1-0.5 s later at this model's speed on 2 cores).
                while target < len(self.text) and self.text[target] in " \t":
                    target += 1
        out = self.text[self.released:target]
        self.released = target
        return out


class HeldPieces:
    """The model's pieces (tokens) not yet let out, so that released text goes out in the pieces it
    came in: a client still gets one delta per token, only held until its unit was judged."""

    def __init__(self) -> None:
        self._pieces: deque[str] = deque()

    def add(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)

    def take(self, text: str) -> list[str]:
        """The held pieces that make up ``text`` (a prefix of what is held), the last one split if
        the release ends inside it."""
        out: list[str] = []
        while text and self._pieces:
            piece = self._pieces[0]
            if len(piece) <= len(text):
                out.append(self._pieces.popleft())
                text = text[len(piece):]
            else:
                out.append(text)
                self._pieces[0] = piece[len(text):]
                text = ""
        return out


def judge_stream(deltas: Iterable[str], language: str | None = "en",
                 truncated: bool = False) -> tuple[str, str | None]:
    """Run a whole token stream through a guard: (released text, problem). For tests and the bench."""
    guard = StreamGuard(language)
    out = []
    for d in deltas:
        out.append(guard.feed(d))
        if guard.problem:
            break
    else:
        out.append(guard.finish(truncated))
    return "".join(out), guard.problem
