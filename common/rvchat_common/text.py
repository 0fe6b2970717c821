"""Spoken-form normalisation (the sentence splitter is in ``rvchat_common.sentences``).

LLM output is full of things a voice must not read out literally (``**bold**``,
list markers, code, emoji, ``$5``, ``10:30``). :func:`clean_for_speech` turns one
segment into plain words a TTS voice reads correctly.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["clean_for_speech", "number_to_words", "ordinal_to_words", "strip_markdown"]

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
