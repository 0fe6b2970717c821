"""Endpointing: how long a silence ends the user's turn, from what they said.

A fixed silence hold is either slow or rude: short, it cuts readers off at their commas; long, every
reply waits for it. Here the hold follows the words of the utterance so far (the STT final of the
speculative start, with the punctuation Whisper adds): short after a finished sentence, long after
a comma, a dash or a word that promises more ("and", "because", "the"), in between otherwise.

Whisper's punctuation is a weak witness: it closes half a sentence with a full stop at a pause ("And
so my fellow American."), so the words rule held long at only 2 of 68 mid-sentence pauses its
punctuation could see (bench/results/turns.md). With ``APP_TURN_END_EOU`` the LLM service's
end-of-utterance probability (``POST /v1/eou``: the embedded model's next token after the words,
their punctuation stripped) decides instead: :meth:`Holds.for_turn`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# Words an utterance practically never ends with, whatever punctuation Whisper put after them
# ("I went to the." is Whisper closing a sentence the user had not finished). Prepositions, pronouns
# and auxiliaries are not here: "Where are you from?", "I love it.", "Yes, I can." end turns.
CONTINUATIONS = frozenset("""
a an the and or but because although though unless whereas if than to of with
my your our their its um uh er erm hmm
""".split())
_WORD = re.compile(r"[A-Za-z']+|\d+")


class Completeness(Enum):
    COMPLETE = "complete"      # a finished sentence: end the turn soon
    UNSURE = "unsure"          # no punctuation to go by
    INCOMPLETE = "incomplete"  # a comma, a dash, a dangling word, a number being dictated


def completeness(text: str) -> Completeness:
    """Whether a transcript reads as a finished utterance."""
    t = text.strip().rstrip("\"'”’)]")
    if not t:
        return Completeness.UNSURE
    words = _WORD.findall(t.lower())
    last = words[-1] if words else ""
    if t.endswith(("...", "…", ",", ";", ":", "-", "–", "—")):
        return Completeness.INCOMPLETE
    if last in CONTINUATIONS and len(words) > 1:
        return Completeness.INCOMPLETE
    if last.isdigit() and not t.endswith((".", "?", "!")):
        return Completeness.INCOMPLETE  # "my number is 0 1 7 ..."
    if t.endswith((".", "?", "!")):
        return Completeness.COMPLETE
    return Completeness.UNSURE


@dataclass(frozen=True)
class Holds:
    """Silence (ms, from where the speech ended) that ends a turn of each kind."""

    complete_ms: int
    unsure_ms: int
    incomplete_ms: int
    # Words that stop mid-sentence: the end-of-utterance probability below ``midsentence_below`` (the
    # embedded model is near-certain more follows: "ask not what you" 0.00). 0 ms: no tier of their own.
    midsentence_ms: int = 0
    midsentence_below: float = 0.0

    @property
    def longest_ms(self) -> int:
        return max(self.incomplete_ms, self.midsentence_ms, self.unsure_ms)

    def for_turn(self, text: str, eou: float | None, threshold: float) -> int:
        """The hold for ``text`` given the end-of-utterance probability ``eou`` (None: unknown, the words
        rule). Under ``midsentence_below`` the words stop mid-sentence: the longest hold. Otherwise short
        when ``eou >= threshold``, unless the words promise more (a comma, "and", "the"), and the
        incomplete hold when not. Only the model sends a turn to the longest hold: Whisper ends a finished
        sentence read with rising voice with a comma too ("...by a similar process,")."""
        if eou is None:
            return self.for_text(text)
        if eou < self.midsentence_below:
            return self.longest_ms
        if completeness(text) is Completeness.INCOMPLETE or eou < threshold:
            return max(self.incomplete_ms, self.unsure_ms)
        return min(self.complete_ms, self.unsure_ms)

    def for_text(self, text: str) -> int:
        kind = completeness(text)
        if kind is Completeness.COMPLETE:
            return min(self.complete_ms, self.unsure_ms)
        if kind is Completeness.INCOMPLETE:
            return max(self.incomplete_ms, self.unsure_ms)
        return self.unsure_ms
