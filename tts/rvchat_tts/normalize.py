"""Text in spoken form for one voice: what Piper should read, in the voice's language.

LLM output is full of things a voice must not read out literally (``**bold**``, list markers,
code, emoji, links, ``$5``, ``10:30``). :func:`clean_for_speech` turns one segment (from
``rvchat_common.sentences.SentenceSplitter``) into plain words for a voice of a given language:

- every language: markdown, code, links, URLs and emoji are removed, and numbers are spoken by
  ``num2words`` in that language. Where num2words lacks the language the digits stay: Piper's
  phonemiser, espeak-ng, reads them in the voice's language, as it reads "%", "°" and "10:30".
- English voices (and voices whose config names no language) also get the English rules:
  abbreviations ("Dr." -> "Doctor", "e.g." -> "for example"), money ("$1.50" -> "one dollar and
  fifty cents"), times ("9:05 pm" -> "nine oh five P M"), ordinals, years, decades, units, ranges.

A voice's language is the ``language.code`` (``de_DE``) or ``espeak.voice`` (``de``) of its
``.onnx.json``: see ``rvchat_tts.voices.VoiceCatalog.language``.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from functools import lru_cache

from num2words import CONVERTER_CLASSES, num2words

__all__ = ["clean_for_speech", "is_english", "num2words_language", "number_to_words", "ordinal_to_words",
           "strip_markdown"]

# --- languages -----------------------------------------------------------------------------

# Piper/espeak language codes that num2words knows under another name.
_NUM2WORDS_ALIASES = {"nb": "no", "nn": "no", "kk": "kz"}


def _split_language(language: str | None) -> tuple[str, str]:
    """('de', 'DE') from 'de_DE' or 'de-de', ('de', '') from 'de'; ('en', '') when not known."""
    if not language or not language.strip():
        return "en", ""
    base, _, region = language.strip().replace("-", "_").partition("_")
    return base.lower(), region.partition("_")[0].upper()


def is_english(language: str | None) -> bool:
    """Whether the English rules apply: an English voice, or one whose config names no language."""
    return _split_language(language)[0] == "en"


def num2words_language(language: str | None) -> str | None:
    """num2words' code for a voice language ('pt_BR' -> 'pt_BR', 'de_DE' -> 'de'); None if it lacks it."""
    base, region = _split_language(language)
    for code in (f"{base}_{region}", base, _NUM2WORDS_ALIASES.get(base)):
        if code in CONVERTER_CLASSES:
            return code
    return None


# --- number words --------------------------------------------------------------------------

class _Speller:
    """Numbers as words in one language by num2words; None where it cannot say them."""

    def __init__(self, language: str | None) -> None:
        self.lang = num2words_language(language)
        base, region = _split_language(language)
        # num2words' English is British ("one hundred and one"); American voices and the
        # unmarked default leave the "and" out, as our English always has.
        self.drop_and = base == "en" and region in ("", "US")

    def say(self, value: int | Decimal, to: str = "cardinal") -> str | None:
        if self.lang is None:
            return None
        if to == "cardinal" and isinstance(value, int) and value >= 10**18:
            return self.digits(str(value))  # beyond any scale word a listener can follow
        try:
            words = num2words(value, lang=self.lang, to=to)
        except Exception:  # converters differ: some lack ordinals or years, some refuse negatives
            return self.say(value) if to == "year" else None
        # "twelve thousand, three hundred": a comma would make the voice pause mid-number.
        words = words.replace(",", "")
        return words.replace(" and ", " ") if self.drop_and else words

    def digits(self, s: str) -> str | None:
        """One word per digit: '007' -> 'zero zero seven' (codes, zip codes, decimals' digits)."""
        words = [self.say(int(d)) for d in s if d.isdigit()]
        return None if None in words else " ".join(words)  # type: ignore[arg-type]


@lru_cache(maxsize=64)
def _speller(language: str | None) -> _Speller:
    return _Speller(language)


def number_to_words(n: int, language: str | None = "en_US") -> str:
    """Cardinal words in the language: 42 -> 'forty-two', -7 -> 'minus seven'.

    The digits when num2words lacks the language (the voice's phonemiser then reads them).
    """
    return _speller(language).say(n) or str(n)


def ordinal_to_words(n: int, language: str | None = "en_US") -> str:
    """21 -> 'twenty-first', 100 -> 'one hundredth'; the digits if num2words has no ordinals for it."""
    return _speller(language).say(n, "ordinal") or str(n)


# --- tables and patterns --------------------------------------------------------------------
# The word tables and most patterns are English rules (see _english); markdown, URLs and the
# language-neutral number pattern (_number_pattern) apply to every voice.

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


# --- English rules ---------------------------------------------------------------------------

def _en(sp: _Speller, n: int, to: str = "cardinal") -> str:
    return sp.say(n, to) or str(n)  # English is always in num2words; the digits are a formality


def _plural(words: str) -> str:
    """Plural of a number word: 'ninety' -> 'nineties', 'six' -> 'sixes'."""
    if words.endswith("y"):
        return words[:-1] + "ies"
    if words.endswith("x"):
        return words + "es"
    return words + "s"


def _int_words(sp: _Speller, s: str, allow_year: bool = True) -> str:
    s = s.replace(",", "")
    if len(s) > 1 and s.startswith("0"):
        return sp.digits(s) or s  # codes, zip codes, "007"
    n = int(s)
    if allow_year and len(s) == 4 and 1100 <= n <= 2099:
        return _en(sp, n, "year")
    return _en(sp, n)


def _decimal_words(sp: _Speller, s: str) -> str:
    # Digit by digit after the point, trailing zeros too: "Python 3.10" is "three point one zero".
    whole, _, frac = s.replace(",", "").partition(".")
    head = _en(sp, int(whole)) if whole else "zero"
    return f"{head} point {sp.digits(frac)}" if frac else head


def _currency(sp: _Speller, m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m["sym"]]
    whole = m["num"].replace(",", "")
    neg = "minus " if m["neg"] else ""
    if m["mag"]:
        amount = _decimal_words(sp, whole + ("." + m["frac"] if m["frac"] else ""))
        return f"{neg}{amount} {_MAGNITUDES[m['mag'].lower()]} {many}"
    n = int(whole)
    words = f"{_en(sp, n)} {one if n == 1 else many}"
    if m["frac"] and sub_one:
        cents = int((m["frac"] + "0")[:2])
        if cents:
            words += f" and {_en(sp, cents)} {sub_one if cents == 1 else sub_many}"
    elif m["frac"]:
        words = f"{_decimal_words(sp, whole + '.' + m['frac'])} {many}"
    return neg + words


def _time(sp: _Speller, m: re.Match) -> str:
    h, mins = int(m["h"]), int(m["m"])
    if mins == 0:
        words = _en(sp, h) + ("" if m["ampm"] else " o'clock")
    elif mins < 10:
        words = f"{_en(sp, h)} oh {_en(sp, mins)}"
    else:
        words = f"{_en(sp, h)} {_en(sp, mins)}"
    if m["s"] and int(m["s"]):
        words += f" and {_en(sp, int(m['s']))} seconds"
    if m["ampm"]:
        words += f" {m['ampm'].upper()} M"
    return words


def _number(sp: _Speller, m: re.Match) -> str:
    neg = "minus " if m["neg"] else ""
    if m["frac"] is not None:
        return neg + _decimal_words(sp, m["num"] + "." + m["frac"])
    return neg + _int_words(sp, m["num"], allow_year=not neg and "," not in m["num"])


def _decade(sp: _Speller, m: re.Match) -> str:
    n = int(m["num"])
    if len(m["num"]) == 4 and n % 10 == 0 and 1100 <= n <= 2090:
        return _plural(_en(sp, n, "year"))  # the 1990s: "nineteen nineties"
    return _plural(_en(sp, n))  # the '80s: "eighties"


def _unit(m: re.Match) -> str:
    num, unit = m["num"], m["unit"].lower()
    words = _UNITS.get(unit, unit)
    if num in ("1", "1.0") and words.endswith("s") and not words.startswith("degrees"):
        words = words[:-1]
    elif num == "1" and words.startswith("degrees"):
        words = "degree" + words[7:]
    return f"{num} {words}"


def _english(text: str, language: str | None) -> str:
    """The English rules: abbreviations, symbols as words, money, times, then every number."""
    sp = _speller(language)
    text = _RE_EMAIL.sub(lambda m: f"{m[1]} at {m[2]}", text)
    text = _RE_EG.sub(lambda m: "for example" if m[1].lower() == "e.g" else "that is", text)
    text = _RE_DOTTED_ACRONYM.sub(lambda m: m[1].replace(".", "").upper(), text)
    text = _RE_NUMBER_ABBR.sub("number ", text)
    text = _RE_SAINT.sub("Saint", text)
    text = _RE_ABBREV.sub(lambda m: "Street" if m[1].lower() == "st" else _ABBREVIATIONS[m[1].lower()], text)
    text = text.replace("&", " and ").replace("w/o ", "without ").replace("w/ ", "with ")
    text = _RE_SLASH_WORDS.sub(" or ", text) if "://" not in text else text
    text = _RE_HASH_NUM.sub("number ", text)
    text = _RE_CURRENCY.sub(lambda m: _currency(sp, m), text)
    text = _RE_TIME.sub(lambda m: _time(sp, m), text)
    text = _RE_AMPM.sub(lambda m: f"{_en(sp, int(m['h']))} {m['ampm'].upper()} M", text)
    text = _RE_PERCENT.sub(lambda m: ("minus " if m["neg"] else "") + _decimal_words(
        sp, m["num"] + ("." + m["frac"] if m["frac"] else "")) + " percent", text)
    text = _RE_ORDINAL.sub(lambda m: _en(sp, int(m["num"]), "ordinal"), text)
    text = _RE_DECADE.sub(lambda m: _decade(sp, m), text)
    text = _RE_UNIT.sub(_unit, text)
    text = _RE_RANGE.sub(lambda m: f"{m['a']} to {m['b']}", text)
    text = _RE_PLUS.sub(" plus ", text)
    text = _RE_EQUALS.sub(" equals ", text)
    return _RE_NUMBER.sub(lambda m: _number(sp, m), text)


# --- every language: numbers, symbols, markdown ---------------------------------------------

# Languages that write 3.14 with a point (the others write 3,14 and group thousands as 1.234).
_POINT_DECIMAL = {"he", "ja", "ko", "zh", "th", "hi", "bn", "te", "kn", "ml", "ta", "ne", "sw",
                  "ms", "am", "cy", "ga", "mt", "tl"}


@lru_cache(maxsize=8)
def _number_pattern(point_decimal: bool) -> re.Pattern:
    group = "," if point_decimal else r"\."
    # A run of 3-digit groups is one number; either mark before other digits is the decimal mark
    # (an LLM writing German may still write 2.5). Left to espeak-ng, which reads them in the
    # voice's language, are times ("10:30": "zehn Uhr dreißig"; num2words has no times) and
    # numbers glued to letters ("5km", "1st"), where words would make one unreadable word.
    return re.compile(r"(?P<neg>(?<![\w.,:])-)?(?<![\w.,:])"
                      r"(?P<num>\d{1,3}(?:" + group + r"\d{3})+(?!\d)|\d+)"
                      r"(?:[.,](?P<frac>\d+))?(?!\w|[.,]\d|:\d)")


def _neutral_numbers(text: str, language: str | None) -> str:
    """Numbers as num2words says them in the language; the digits where it cannot."""
    sp = _speller(language)
    if sp.lang is None:
        return text

    def spell(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m["num"])
        sign = -1 if m["neg"] else 1
        if m["frac"] is not None:
            words = sp.say(sign * Decimal(f"{digits}.{m['frac']}"))
        elif len(digits) > 1 and digits.startswith("0"):
            words = sp.digits(digits)  # codes, zip codes, "007"
        elif m["num"] == digits and len(digits) == 4 and 1100 <= int(digits) <= 2099 and not m["neg"]:
            words = sp.say(int(digits), "year")
        else:
            words = sp.say(sign * int(digits))
        return words if words is not None else m.group(0)

    return _number_pattern(_split_language(language)[0] in _POINT_DECIMAL).sub(spell, text)


def _url(m: re.Match) -> str:
    url = m.group(0).rstrip(".,;:!?")
    tail = m.group(0)[len(url):]
    host = re.sub(r"^(?:https?://)?(?:www\.)?", "", url, flags=re.I).split("/")[0].split("?")[0]
    return host + tail


def _symbols(text: str, keep: str = "") -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in keep:
            out.append(ch)
        elif ch in "\u200d\ufe0f\ufe0e" or cat in ("So", "Sk", "Cs", "Co", "Cn", "Cf"):
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


def clean_for_speech(text: str, language: str | None = "en_US") -> str:
    """Plain words a voice of ``language`` (``en_US``, ``de_DE``, ``de``...) should read.

    Markdown, code, URLs, symbols and emoji are dealt with in every language, numbers are words
    in the language (num2words), and English voices get the English rules too (see the module
    docstring). Lines are joined with pauses (a line without final punctuation gets a comma) so
    list items are not run together. Returns '' when nothing speakable is left.
    """
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = strip_markdown(text)
    text = _RE_URL.sub(_url, text)
    english = is_english(language)
    text = _english(text, language) if english else _neutral_numbers(text, language)
    text = text.replace("…", "...").replace("—", ", ").replace("–", ", ")
    # "°" is a symbol to drop once the English rules have made it "degrees"; other languages leave
    # it to espeak-ng, which says it in the voice's language ("20°C": "zwanzig Grad C").
    text = _symbols(text, keep="" if english else "°")
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
