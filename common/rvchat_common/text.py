"""Text for speech: an incremental sentence splitter and spoken-form normalisation.

LLM output arrives token by token and is full of things a voice must not read
out literally (``**bold**``, list markers, code, emoji, ``$5``, ``10:30``).
:class:`SentenceSplitter` cuts the stream into speakable segments as soon as
each one is complete, so synthesis of the first sentence can start while the
model is still writing the second. :func:`clean_for_speech` turns one segment
into plain words a TTS voice reads correctly. Both are pure Python and cheap.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "SentenceSplitter",
    "clean_for_speech",
    "count_words",
    "number_to_words",
    "ordinal_to_words",
    "split_sentences",
]

# --- number words ------------------------------------------------------------------------

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**15, "quadrillion"), (10**12, "trillion"), (10**9, "billion"), (10**6, "million"),
           (1000, "thousand")]


def _below_100(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def _below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    parts = []
    if hundreds:
        parts.append(f"{_ONES[hundreds]} hundred")
    if rest or not hundreds:
        parts.append(_below_100(rest))
    return " ".join(parts)


def number_to_words(n: int) -> str:
    """Cardinal English words: 42 -> 'forty-two', -7 -> 'minus seven', 1200 -> 'one thousand two hundred'."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n >= 10**18:  # beyond any scale word a listener can follow: read the digits
        return " ".join(_ONES[int(d)] for d in str(n))
    parts = []
    for value, name in _SCALES:
        if n >= value:
            count, n = divmod(n, value)
            parts.append(f"{number_to_words(count)} {name}")
    if n or not parts:
        parts.append(_below_1000(n))
    return " ".join(parts)


_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}


def ordinal_to_words(n: int) -> str:
    """21 -> 'twenty-first', 100 -> 'one hundredth'."""
    words = number_to_words(n)
    head, sep, last = words.rpartition("-") if "-" in words.split(" ")[-1] else words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year_to_words(n: int) -> str:
    """1990 -> 'nineteen ninety', 2005 -> 'two thousand five', 2024 -> 'twenty twenty-four'."""
    if 2000 <= n <= 2009 or n % 1000 == 0:
        return number_to_words(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{number_to_words(high)} hundred"
    return f"{number_to_words(high)} {'oh ' + _ONES[low] if low < 10 else _below_100(low)}"


def _digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s if d.isdigit())


def _plural(words: str) -> str:
    """Plural of a number word: 'ninety' -> 'nineties', 'six' -> 'sixes'."""
    if words.endswith("y"):
        return words[:-1] + "ies"
    if words.endswith("x"):
        return words + "es"
    return words + "s"


def _int_words(s: str, allow_year: bool = True) -> str:
    s = s.replace(",", "")
    if len(s) > 1 and s.startswith("0"):
        return _digits(s)  # codes, zip codes, "007"
    n = int(s)
    if allow_year and len(s) == 4 and 1100 <= n <= 2099:
        return year_to_words(n)
    return number_to_words(n)


def _decimal_words(s: str) -> str:
    whole, _, frac = s.replace(",", "").partition(".")
    head = number_to_words(int(whole)) if whole else "zero"
    return f"{head} point {_digits(frac)}" if frac else head


# --- spoken-form normalisation ------------------------------------------------------------

_ABBREVIATIONS = {
    "mr": "Mister", "mrs": "Missus", "ms": "Miz", "dr": "Doctor", "prof": "Professor",
    "st": "Saint", "jr": "Junior", "sr": "Senior", "vs": "versus", "etc": "et cetera",
    "approx": "approximately", "fig": "figure", "dept": "department",
    "est": "established", "min": "minutes", "max": "maximum", "hr": "hour", "hrs": "hours",
    "mins": "minutes", "sec": "seconds", "secs": "seconds", "inc": "Incorporated", "ltd": "Limited",
    "co": "Company", "corp": "Corporation", "mt": "Mount", "ave": "Avenue", "govt": "government",
}
# Abbreviations that stand before a name or number and never end a sentence.
_TITLE_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "fig", "mt", "approx",
                        "dept", "e.g", "i.e", "cf", "al", "ca", "gen", "gov", "sen", "rep", "lt",
                        "col", "sgt", "capt", "rev", "hon", "pres", "ph.d", "u.s", "u.k", "a.m", "p.m"}
# Abbreviations that may end a sentence: a boundary only when a capitalised word follows.
_MAYBE_FINAL_ABBREVIATIONS = {"etc", "inc", "ltd", "co", "corp", "jr", "sr", "min", "max", "est",
                              "hrs", "mins", "sec", "secs"}

_UNITS = {
    "km": "kilometers", "kg": "kilograms", "cm": "centimeters", "mm": "millimeters",
    "mg": "milligrams", "ml": "milliliters", "mph": "miles per hour", "kph": "kilometers per hour",
    "km/h": "kilometers per hour", "kb": "kilobytes", "mb": "megabytes", "gb": "gigabytes",
    "tb": "terabytes", "ghz": "gigahertz", "mhz": "megahertz", "khz": "kilohertz", "hz": "hertz",
    "ms": "milliseconds", "lbs": "pounds", "lb": "pounds", "oz": "ounces", "ft": "feet",
    "°c": "degrees Celsius", "°f": "degrees Fahrenheit", "°": "degrees", "kw": "kilowatts",
    "kwh": "kilowatt hours", "w": "watts", "v": "volts",
}
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence"), "¥": ("yen", "yen", "", "")}
_MAGNITUDES = {"k": "thousand", "thousand": "thousand", "m": "million", "mn": "million",
               "million": "million", "b": "billion", "bn": "billion", "billion": "billion",
               "trillion": "trillion", "t": "trillion"}

_NUM = r"\d{1,3}(?:,\d{3})+|\d+"
_RE_FENCE_BLOCK = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.S | re.M)
_RE_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_RE_LINK = re.compile(r"\[([^\]]+)\]\((?:[^()\s]|\([^()]*\))*(?:\s+\"[^\"]*\")?\)")
_RE_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_RE_INLINE_CODE = re.compile(r"`+([^`]*)`+")
_RE_HTML = re.compile(r"</?[a-zA-Z][^<>]{0,200}>")
_RE_HEADER = re.compile(r"^[ \t]*#{1,6}[ \t]+", re.M)
_RE_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.M)
_RE_BULLET = re.compile(r"^[ \t]*[-*+•▪◦‣][ \t]+(?:\[[ xX]\][ \t]+)?", re.M)
_RE_NUMBERED = re.compile(r"^[ \t]*\d{1,3}[.)][ \t]+", re.M)
_RE_HR = re.compile(r"^[ \t]*(?:[-*_=][ \t]*){3,}$", re.M)
_RE_TABLE_RULE = re.compile(r"^[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(?:\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*$", re.M)
_RE_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_RE_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_RE_ITALIC_UNDER = re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])")
_RE_STRIKE = re.compile(r"~~(.+?)~~")
_RE_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()\"']+", re.I)
_RE_EMAIL = re.compile(r"\b([\w.+-]+)@([\w-]+(?:\.[\w-]+)+)\b")
_RE_DOTTED_ACRONYM = re.compile(r"\b((?:[A-Za-z]\.){2,})(?=\s|$|[,;:!?)])")
_RE_ABBREV = re.compile(r"\b(" + "|".join(sorted(_ABBREVIATIONS, key=len, reverse=True)) + r")\.(?=\s|$)",
                        re.I)
_RE_NUMBER_ABBR = re.compile(r"\b(?:No|no|NO)\.\s?(?=\d)")  # "No. 5", but "I said no." stays
_RE_SAINT = re.compile(r"\bSt\.(?=\s+[A-Z])")  # St. Louis; "Main St." is a street
_RE_EG = re.compile(r"\b(e\.g|i\.e)\.?(?=[\s,]|$)", re.I)
_RE_CURRENCY = re.compile(
    r"(?P<neg>-)?(?P<sym>[$€£¥])\s?(?P<num>" + _NUM + r")(?:\.(?P<frac>\d+))?"
    r"(?:\s?(?P<mag>k|m|mn|b|bn|t|thousand|million|billion|trillion)\b)?", re.I)
_RE_TIME = re.compile(r"\b(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?::(?P<s>[0-5]\d))?"
                      r"(?:\s?(?P<ampm>[ap])\.?\s?m\b\.?)?", re.I)
_RE_AMPM = re.compile(r"\b(?P<h>1[0-2]|0?[1-9])\s?(?P<ampm>[ap])\.?m\b\.?", re.I)
_RE_PERCENT = re.compile(r"(?P<neg>-)?(?P<num>" + _NUM + r")(?:\.(?P<frac>\d+))?\s?%")
_RE_ORDINAL = re.compile(r"\b(?P<num>\d+)(?:st|nd|rd|th)\b", re.I)
_RE_DECADE = re.compile(r"(?:(?<!\w)['‘’](?=\d\d'?s\b))?\b(?P<num>\d{2}|\d{4})'?s\b")
_RE_RANGE = re.compile(r"\b(?P<a>\d+)\s?[-–]\s?(?P<b>\d+)\b(?![-–]\d)")
_PLAIN_UNITS = sorted((u for u in _UNITS if not u.startswith("°") and u != "km/h"), key=len, reverse=True)
_RE_UNIT = re.compile(r"(?P<num>\d+(?:\.\d+)?)\s?(?P<unit>km/h|°[cf]|°|" + "|".join(_PLAIN_UNITS)
                      + r")(?![\w°])", re.I)
_RE_NUMBER = re.compile(r"(?P<neg>(?<![\w.])-)?(?<![\d.])(?P<num>" + _NUM + r")(?:\.(?P<frac>\d+))?(?![\d])")
_RE_HASH_NUM = re.compile(r"#(?=\d)")
_RE_PLUS = re.compile(r"(?<=\d)\s?\+\s?(?=\d)")
_RE_EQUALS = re.compile(r"\s=\s")
_RE_SLASH_WORDS = re.compile(r"(?<=[A-Za-z])/(?=[A-Za-z])")


def _currency(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m["sym"]]
    whole = m["num"].replace(",", "")
    neg = "minus " if m["neg"] else ""
    if m["mag"]:
        amount = _decimal_words(whole + ("." + m["frac"] if m["frac"] else ""))
        return f"{neg}{amount} {_MAGNITUDES[m['mag'].lower()]} {many}"
    n = int(whole)
    words = f"{number_to_words(n)} {one if n == 1 else many}"
    if m["frac"] and sub_one:
        cents = int((m["frac"] + "0")[:2])
        if cents:
            words += f" and {number_to_words(cents)} {sub_one if cents == 1 else sub_many}"
    elif m["frac"]:
        words = f"{_decimal_words(whole + '.' + m['frac'])} {many}"
    return neg + words


def _time(m: re.Match) -> str:
    h, mins = int(m["h"]), int(m["m"])
    if mins == 0:
        words = number_to_words(h) + ("" if m["ampm"] else " o'clock")
    elif mins < 10:
        words = f"{number_to_words(h)} oh {_ONES[mins]}"
    else:
        words = f"{number_to_words(h)} {number_to_words(mins)}"
    if m["s"] and int(m["s"]):
        words += f" and {number_to_words(int(m['s']))} seconds"
    if m["ampm"]:
        words += f" {m['ampm'].upper()} M"
    return words


def _number(m: re.Match) -> str:
    neg = "minus " if m["neg"] else ""
    if m["frac"] is not None:
        return neg + _decimal_words(m["num"] + "." + m["frac"])
    return neg + _int_words(m["num"], allow_year=not neg and "," not in m["num"])


def _decade(m: re.Match) -> str:
    n = int(m["num"])
    if len(m["num"]) == 2:
        return _plural(_below_100(n)) if n % 10 == 0 else _plural(number_to_words(n))
    if n % 10 == 0 and 1100 <= n <= 2090:
        return _plural(year_to_words(n))
    return _plural(number_to_words(n))


def _unit(m: re.Match) -> str:
    num, unit = m["num"], m["unit"].lower()
    words = _UNITS.get(unit, unit)
    if num in ("1", "1.0") and words.endswith("s") and not words.startswith("degrees"):
        words = words[:-1]
    elif num == "1" and words.startswith("degrees"):
        words = "degree" + words[7:]
    return f"{num} {words}"


def _url(m: re.Match) -> str:
    url = m.group(0).rstrip(".,;:!?")
    tail = m.group(0)[len(url):]
    host = re.sub(r"^(?:https?://)?(?:www\.)?", "", url, flags=re.I).split("/")[0].split("?")[0]
    return host + tail


def _symbols(text: str) -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\u200d\ufe0f\ufe0e" or cat in ("So", "Sk", "Cs", "Co", "Cn", "Cf"):
            out.append(" ")  # emoji, dingbats, modifiers, private use
        elif cat == "Cc" and ch not in "\n\t":
            out.append(" ")
        elif ch in "*_~`^|<>{}[]\\#=":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def strip_markdown(text: str) -> str:
    """Markdown to plain text: code blocks dropped, links to their text, markers removed."""
    text = _RE_FENCE_BLOCK.sub(" ", text)
    text = _RE_IMAGE.sub(r"\1", text)
    text = _RE_LINK.sub(r"\1", text)
    text = _RE_REF_LINK.sub(r"\1", text)
    text = _RE_INLINE_CODE.sub(r"\1", text)
    text = _RE_HTML.sub(" ", text)
    text = _RE_TABLE_RULE.sub("", text)
    text = _RE_HR.sub("", text)
    text = _RE_HEADER.sub("", text)
    text = _RE_QUOTE.sub("", text)
    text = _RE_BULLET.sub("", text)
    text = _RE_NUMBERED.sub("", text)
    for _ in range(2):  # nested **_bold italic_**
        text = _RE_BOLD.sub(r"\2", text)
        text = _RE_ITALIC_STAR.sub(r"\1", text)
        text = _RE_ITALIC_UNDER.sub(r"\1", text)
    text = _RE_STRIKE.sub(r"\1", text)
    # Table rows: cells become a spoken list.
    text = re.sub(r"[ \t]*\|[ \t]*", ", ", text)
    return text


def clean_for_speech(text: str) -> str:
    """Plain words a voice should read: markdown, URLs, numbers, symbols and emoji dealt with.

    Lines are joined with pauses (a line without final punctuation gets a comma
    or full stop) so list items are not run together. Returns '' when nothing
    speakable is left.
    """
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = strip_markdown(text)
    text = _RE_URL.sub(_url, text)
    text = _RE_EMAIL.sub(lambda m: f"{m[1]} at {m[2]}", text)
    text = _RE_EG.sub(lambda m: "for example" if m[1].lower() == "e.g" else "that is", text)
    text = _RE_DOTTED_ACRONYM.sub(lambda m: m[1].replace(".", "").upper(), text)
    text = _RE_NUMBER_ABBR.sub("number ", text)
    text = _RE_SAINT.sub("Saint", text)
    text = _RE_ABBREV.sub(lambda m: "Street" if m[1].lower() == "st" else _ABBREVIATIONS[m[1].lower()], text)
    text = text.replace("&", " and ").replace("w/o ", "without ").replace("w/ ", "with ")
    text = _RE_SLASH_WORDS.sub(" or ", text) if "://" not in text else text
    text = _RE_HASH_NUM.sub("number ", text)
    text = _RE_CURRENCY.sub(_currency, text)
    text = _RE_TIME.sub(_time, text)
    text = _RE_AMPM.sub(lambda m: f"{number_to_words(int(m['h']))} {m['ampm'].upper()} M", text)
    text = _RE_PERCENT.sub(lambda m: ("minus " if m["neg"] else "") + _decimal_words(
        m["num"] + ("." + m["frac"] if m["frac"] else "")) + " percent", text)
    text = _RE_ORDINAL.sub(lambda m: ordinal_to_words(int(m["num"])), text)
    text = _RE_DECADE.sub(_decade, text)
    text = _RE_UNIT.sub(_unit, text)
    text = _RE_RANGE.sub(lambda m: f"{m['a']} to {m['b']}", text)
    text = _RE_PLUS.sub(" plus ", text)
    text = _RE_EQUALS.sub(" equals ", text)
    text = _RE_NUMBER.sub(_number, text)
    text = text.replace("…", "...").replace("—", ", ").replace("–", ", ")
    text = _symbols(text)
    lines = []
    for line in text.split("\n"):
        line = re.sub(r"\s+", " ", line).strip(" ,;")
        if not re.search(r"\w", line):
            continue
        lines.append(line)
    out = ""
    for line in lines:
        if out and out[-1] not in ".!?:;,":
            out += ","
        out = f"{out} {line}" if out else line
    out = re.sub(r"\s+([,.!?;:])", r"\1", out)
    out = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", out)
    return out.strip()


def count_words(text: str) -> int:
    return len(re.findall(r"[^\W_]+(?:['’][^\W_]+)*", text))


# --- incremental sentence splitting --------------------------------------------------------

_TERMINATORS = ".!?…"
_CLOSERS = "\"'”’)]»*_"
_CLAUSE = ",;:"


class SentenceSplitter:
    """Cut streamed text into speakable segments as soon as each is complete.

    ``push(delta)`` returns the segments completed by that delta; ``flush()``
    returns what is left. A segment ends at ``.``/``!``/``?``/``…`` followed by
    whitespace (not after abbreviations like "Dr.", "e.g.", initials, decimals
    such as 3.14, or a list number "1." at a line start), or at a line break.
    Fenced code blocks are dropped (a voice cannot usefully read code).

    For latency, the first segment of a turn may be a clause: a ``,;:`` or dash
    after at least ``first_clause_words`` words ends it. Segments shorter than
    ``min_words`` are held back and joined to the next (except at flush), so the
    voice never says a lone word with a pause after it. A segment longer than
    ``max_chars`` with no boundary is cut at the last clause mark or space.
    """

    def __init__(self, first_clause_words: int = 4, min_words: int = 2, max_chars: int = 300,
                 skip_code: bool = True) -> None:
        self.first_clause_words = first_clause_words
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
        if not final and count_words(segment) < self.min_words:
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
