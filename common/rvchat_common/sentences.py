"""The incremental sentence splitter: streamed LLM text cut into speakable sentences.

LLM output arrives token by token. :class:`SentenceSplitter` cuts the stream into
segments as soon as each one is complete, so TTS can synthesise the first sentence
while the model is still writing the second, and :class:`SentenceCounter` tells
main_app how many sentences a reply has so far, to stop the model after a few.
Both know that "Dr." or the "3." of a still-arriving "3.14" does not end a
sentence. Pure Python, no dependencies; spoken-form normalisation is TTS's
(``rvchat_tts.normalize``).
"""

from __future__ import annotations

import re

__all__ = ["SentenceCounter", "SentenceSplitter", "count_words", "split_sentences"]


def count_words(text: str) -> int:
    """Words as a reader counts them: "It's 3 o'clock." has three."""
    return len(re.findall(r"[^\W_]+(?:['’][^\W_]+)*", text))


# --- incremental sentence splitting --------------------------------------------------------

_TERMINATORS = ".!?…"
_CLOSERS = "\"'”’)]»*_"
_CLAUSE = ",;:"
# Abbreviations that stand before a name or number and never end a sentence.
_TITLE_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "fig", "mt", "approx",
                        "dept", "e.g", "i.e", "cf", "al", "ca", "gen", "gov", "sen", "rep", "lt",
                        "col", "sgt", "capt", "rev", "hon", "pres", "ph.d", "u.s", "u.k", "a.m", "p.m"}
# Abbreviations that may end a sentence: a boundary only when a capitalised word follows.
_MAYBE_FINAL_ABBREVIATIONS = {"etc", "inc", "ltd", "co", "corp", "jr", "sr", "min", "max", "est",
                              "hrs", "mins", "sec", "secs"}


class SentenceSplitter:
    """Cut streamed text into speakable segments as soon as each is complete.

    ``push(delta)`` returns the segments completed by that delta; ``flush()``
    returns what is left. A segment ends at ``.``/``!``/``?``/``…`` followed by
    whitespace (not after abbreviations like "Dr.", "e.g.", initials, decimals
    such as 3.14, or a list number "1." at a line start), or at a line break.
    Fenced code blocks are dropped (a voice cannot usefully read code).

    For latency, the first segment of a turn may be a clause: a ``,;:`` or dash
    after at least ``first_clause_words`` words ends it; with ``first_max_words`` it ends after that
    many words at the latest (once whitespace follows the last of them), so a long first sentence does not keep
    the voice waiting for its end. The rest of that sentence is then the next segment, however short. Segments shorter than
    ``min_words`` are held back and joined to the next (except at flush), so the
    voice never says a lone word with a pause after it. A segment longer than
    ``max_chars`` with no boundary is cut at the last clause mark or space.
    """

    def __init__(self, first_clause_words: int = 4, min_words: int = 2, max_chars: int = 300,
                 skip_code: bool = True, first_max_words: int = 0) -> None:
        self.first_clause_words = first_clause_words
        self.first_max_words = first_max_words
        self.min_words = min_words
        self.max_chars = max(40, max_chars)
        self.skip_code = skip_code
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new turn)."""
        self._buf = ""
        self._held = ""
        self._in_code = False
        self._emitted = 0
        self._cut_by_words = False  # the first segment was cut mid-sentence (its rest is not held)

    @property
    def pending(self) -> str:
        return (self._held + " " + self._buf).strip()

    def push(self, text: str) -> list[str]:
        self._buf += text.replace("\r\n", "\n").replace("\r", "\n")
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """Everything left, as segments; then the splitter is ready for a new turn."""
        out = self._drain(final=True)
        rest = self._buf.strip()
        if self._in_code:
            rest = ""
        self._buf = ""
        out += self._emit(rest, final=True)
        if self._held:
            out.append(self._held)
        self.reset()
        return out

    # -- internals --
    def _drain(self, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            if self._in_code:
                if not self._skip_code_block(final):
                    return out
                continue
            if self.skip_code:
                state = self._enter_code(final)
                if state == "wait":
                    return out
                if state == "entered":
                    continue
            cut = self._find_boundary(final)
            if cut is None:
                return out
            end, resume = cut
            segment = self._buf[:end]
            self._buf = self._buf[resume:]
            out += self._emit(segment.strip(), final=False)

    def _enter_code(self, final: bool) -> str:
        """Does the buffer start with a code fence line? 'entered', 'wait' (can't tell yet) or 'no'."""
        head = self._buf.lstrip()
        if not head:
            return "no"
        if not final and len(head) < 3 and ("```".startswith(head) or "~~~".startswith(head)):
            return "wait"
        if not head.startswith(("```", "~~~")):
            return "no"
        eol = head.find("\n")
        if eol < 0 and not final:
            return "wait"
        self._buf = head[eol + 1:] if eol >= 0 else ""
        self._in_code = True
        return "entered"

    def _skip_code_block(self, final: bool) -> bool:
        """Drop text up to and including the closing fence line; False when it has not arrived."""
        for m in re.finditer(r"^[ \t]*(```|~~~)[^\n]*\n", self._buf, re.M):
            self._buf = self._buf[m.end():]
            self._in_code = False
            return True
        if final:
            self._buf = ""
        else:  # keep only the tail that could be the start of a closing fence
            last_nl = self._buf.rfind("\n")
            self._buf = self._buf[last_nl:] if last_nl >= 0 else self._buf
        return False

    def _emit(self, segment: str, final: bool) -> list[str]:
        if not segment or not re.search(r"\w", segment):
            return []
        if self._held:
            # A newline keeps each part on its own line, so list markers are still at a line
            # start for the cleaner, which puts a pause between lines.
            segment = self._held + "\n" + segment
            self._held = ""
        if not final and count_words(segment) < self.min_words and not (self._cut_by_words and self._emitted == 1):
            self._held = segment
            return []
        self._emitted += 1
        return [segment]

    def _find_boundary(self, final: bool) -> tuple[int, int] | None:
        buf = self._buf
        n = len(buf)
        clause_ok = self._emitted == 0 and not self._held and self.first_clause_words > 0
        line_start = 0
        i = 0
        while i < n:
            ch = buf[i]
            if ch == "\n":
                if buf[line_start:i].strip():
                    return i, i + 1
                line_start = i + 1
                i += 1
                continue
            if ch in _TERMINATORS:
                j = i
                while j < n and buf[j] in _TERMINATORS:
                    j += 1
                k = j
                while k < n and buf[k] in _CLOSERS:
                    k += 1
                if k >= n:
                    return None  # need the next character (at flush, the end ends the segment anyway)
                if buf[k].isspace():
                    verdict = self._sentence_end(buf, line_start, i, j, k, final)
                    if verdict is None:
                        return None
                    if verdict:
                        return k, k
                i = k
                continue
            if clause_ok and (ch in _CLAUSE or ch in "—–" or (ch == "-" and i > 0 and buf[i - 1] == " ")):
                if i + 1 >= n:
                    return None
                if buf[i + 1].isspace() or ch in "—–":
                    if count_words(buf[:i]) >= self.first_clause_words:
                        return i + 1, i + 1
            i += 1
        if clause_ok and self.first_max_words:
            words = list(re.finditer(r"\S+", buf))
            # The last word counts once whitespace follows it: a stream that sends the space before the
            # next word (the LLM's guard does) need not wait for that word.
            if len(words) >= self.first_max_words and words[self.first_max_words - 1].end() < n \
                    and count_words(buf[:words[self.first_max_words - 1].end()]) >= self.first_max_words:
                end = words[self.first_max_words - 1].end()
                self._cut_by_words = True
                return end, end
        if len(buf) > self.max_chars:
            return self._forced_cut(buf)
        return None

    def _sentence_end(self, buf: str, line_start: int, i: int, j: int, k: int, final: bool) -> bool | None:
        """Is the terminator run buf[i:j] (closers up to k, whitespace at k) a sentence end?

        None means "cannot tell yet" (need the next word).
        """
        run = buf[i:j]
        if run != ".":
            if run.replace(".", "") == "" and len(run) >= 3 or run == "…":
                return self._next_starts_sentence(buf, k, final)  # ellipsis: "well... maybe"
            return True  # ! ? ?! etc.
        token = re.split(r"\s", buf[line_start:i])[-1].lstrip("\"'“‘([*_").lower()
        if not token:
            return True
        if token.isdigit() and not buf[line_start:i - len(token)].strip():
            return False  # "1. " numbered list marker
        if token == "no":  # "No. 5" continues; "I said no." ends
            m = re.compile(r"\s*(\S)").match(buf, k)
            return (True if final else None) if not m else not m.group(1).isdigit()
        if token in _TITLE_ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+[a-z]", token):
            return False  # Dr. Smith, e.g. this, U.S. Army
        if len(token) == 1 and token.isalpha() and token not in "ai":
            return False  # an initial: J. R. R. Tolkien
        if token in _MAYBE_FINAL_ABBREVIATIONS:
            return self._next_starts_sentence(buf, k, final)
        return True

    @staticmethod
    def _next_starts_sentence(buf: str, k: int, final: bool) -> bool | None:
        m = re.compile(r"\s*(\S)").match(buf, k)
        if not m:
            return True if final else None
        ch = m.group(1)
        return ch.isupper() or ch.isdigit() or ch in "\"'“‘(*#-"

    def _forced_cut(self, buf: str) -> tuple[int, int]:
        window = buf[: self.max_chars]
        for marks in (",;:—–", " "):
            pos = max(window.rfind(c) for c in marks)
            if pos > self.max_chars // 3:
                return pos + 1, pos + 1
        return self.max_chars, self.max_chars


def split_sentences(text: str, first_clause_words: int = 0, min_words: int = 2,
                    max_chars: int = 300) -> list[str]:
    """Split a whole text into segments (the same rules as the streaming splitter)."""
    splitter = SentenceSplitter(first_clause_words=first_clause_words, min_words=min_words,
                                max_chars=max_chars)
    return splitter.push(text) + splitter.flush()


class SentenceCounter:
    """How many complete sentences a stream has so far: for capping a spoken reply at N sentences.

    A sentence counts once the splitter has released it, i.e. once the character after its
    terminator has arrived: "It is 3." is not yet a sentence (it may go on as "3.14"), nor is
    "Dr." (the name follows). Every sentence counts, however short ("Yes." too), and a line break
    ends one (list items are spoken one by one); code blocks, which are never spoken, do not count.
    """

    def __init__(self, max_chars: int = 300) -> None:
        self._splitter = SentenceSplitter(first_clause_words=0, min_words=1, max_chars=max_chars)
        self.count = 0
        self.completed: list[str] = []  # the sentences the last push completed, as written

    def push(self, text: str) -> int:
        """Add a delta; the number of complete sentences so far."""
        self.completed = self._splitter.push(text)
        self.count += len(self.completed)
        return self.count

    def reset(self) -> None:
        """A new reply."""
        self._splitter.reset()
        self.count = 0
