"""Backchannels: is what the user said over the reply only "mm-hm", or real words?

Owns: the acknowledgement list (``APP_BACKCHANNEL_WORDS``, or the page's) and the one decision the
session asks of it once STT's words for speech heard during a reply are in. Speech during a reply
first only pauses it (session.py); then an acknowledgement, or no words at all (a cough, a door),
resumes it where it stopped, and anything else is a real interruption.

Whisper writes the same sound many ways ("Mm-hmm.", "mm hm", "Mhm", "Uh-huh", "Okay, okay."), so
words are compared in a normal form, and an utterance counts when it is made of listed phrases only
(repeats and pairs too: "yeah, okay"), up to :data:`MAX_WORDS` words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Short acknowledgements people make while listening; none of them asks or tells the assistant
# anything. "no", "wait", "stop", "what" are deliberately absent: they are interruptions.
DEFAULT_WORDS = ("mm-hm", "uh-huh", "hmm", "yeah", "yes", "yep", "yup", "okay", "ok", "right", "sure",
                 "i see", "got it", "that's right", "alright", "all right", "oh", "ah", "cool", "nice", "wow", "great",
                 "true", "exactly", "indeed", "of course", "makes sense", "uh", "um")
# A longer utterance is a turn of its own even if every word is in the list ("yeah yeah yeah okay sure").
MAX_WORDS = 4

_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")  # Whisper's "[coughs]", "(laughs)"
_HUM = re.compile(r"m+h*m+|h+m+|m+")  # mm-hmm, mmhm, mhm, hmm, hm, mm: one sound, spelt many ways
_UHHUH = re.compile(r"u+h+u+h+|u+h+h+u+h+|a+h+a+h*")  # uh-huh, uhuh, ahah


def words_of(text: str) -> tuple[str, ...]:
    """Lower-case words with hyphens and apostrophes joined and the hum/uh-huh spellings merged."""
    text = _BRACKETED.sub(" ", text.lower()).replace("-", "").replace("'", "").replace("\u2019", "")
    out = []
    for word in re.findall(r"[a-z0-9]+", text):
        if _HUM.fullmatch(word):
            word = "mhm"
        elif _UHHUH.fullmatch(word):
            word = "uhhuh"
        out.append(word)
    return tuple(out)


def same_words(a: str, b: str) -> bool:
    """The same words, whatever the case and punctuation (an utterance decoded again with a breath after it)."""
    return words_of(a) == words_of(b)


def words_after(text: str, start: str) -> str | None:
    """The words of ``text`` after those of ``start``, if it starts with them (else None)."""
    words, head = words_of(text), words_of(start)
    return " ".join(words[len(head):]) if words[:len(head)] == head else None


def parse_words(value: str | Iterable[str]) -> list[str]:
    """The acknowledgement list from a comma-separated setting (or a list), blanks dropped."""
    items = value.split(",") if isinstance(value, str) else value
    return [w.strip() for w in items if w and w.strip()]


class Backchannels:
    """Decides whether an utterance said over a reply is only an acknowledgement."""

    def __init__(self, words: Iterable[str], max_words: int = MAX_WORDS) -> None:
        self.words = parse_words(words)
        self.max_words = max_words
        self._phrases = {p for p in (words_of(w) for w in self.words) if p}
        self._longest = max((len(p) for p in self._phrases), default=0)

    def is_acknowledgement(self, text: str) -> bool:
        """``text`` is made only of listed phrases (and has some words: no words is the caller's case)."""
        words = words_of(text)
        if not words or len(words) > self.max_words:
            return False
        # Cover the words with listed phrases, left to right (a phrase may be 1-3 words: "i see").
        ok = [True] + [False] * len(words)
        for i in range(len(words)):
            if not ok[i]:
                continue
            for n in range(1, min(self._longest, len(words) - i) + 1):
                if words[i:i + n] in self._phrases:
                    ok[i + n] = True
        return ok[-1]
