"""Speech normalisation: English rules for English voices, num2words numbers in every voice's language."""

from __future__ import annotations

import pytest

from rvchat_common.sentences import SentenceSplitter
from rvchat_tts.normalize import (
    clean_for_speech,
    is_english,
    num2words_language,
    number_to_words,
    ordinal_to_words,
)


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (42, "forty-two"), (100, "one hundred"),
    (101, "one hundred one"), (999, "nine hundred ninety-nine"), (1000, "one thousand"),
    (12345, "twelve thousand three hundred forty-five"), (1_000_000, "one million"),
    (2_000_000_001, "two billion one"), (-5, "minus five"),
])
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


@pytest.mark.parametrize("n, words", [(1, "first"), (2, "second"), (3, "third"), (4, "fourth"),
                                      (12, "twelfth"), (21, "twenty-first"), (40, "fortieth"),
                                      (103, "one hundred third")])
def test_ordinal_to_words(n: int, words: str) -> None:
    assert ordinal_to_words(n) == words


@pytest.mark.parametrize("text, spoken", [
    ("I have 42 apples.", "I have forty-two apples."),
    ("Pi is 3.14.", "Pi is three point one four."),
    ("Music of the 1990s and '80s.", "Music of the nineteen nineties and eighties."),
    ("Prices fell 10% today.", "Prices fell ten percent today."),
    ("It costs $5.", "It costs five dollars."),
    ("It costs $1.50 now.", "It costs one dollar and fifty cents now."),
    ("A $2.5 million deal.", "A two point five million dollars deal."),
    ("Meet at 10:30.", "Meet at ten thirty."),
    ("Meet at 9:05 pm.", "Meet at nine oh five P M"),
    ("Wake at 7 am.", "Wake at seven A M"),
    ("Lunch at 12:00.", "Lunch at twelve o'clock."),
    ("Born in 1984, moved in 2005, back in 2024.",
     "Born in nineteen eighty-four, moved in two thousand five, back in twenty twenty-four."),
    ("We sold 1,234,567 copies.",
     "We sold one million two hundred thirty-four thousand five hundred sixty-seven copies."),
    ("She came 1st and he came 22nd.", "She came first and he came twenty-second."),
    ("It was -5 degrees.", "It was minus five degrees."),
    ("Drive 5-10 km north.", "Drive five to ten kilometers north."),
    ("It is 20°C outside.", "It is twenty degrees Celsius outside."),
    ("We are #1!", "We are number one!"),
])
def test_numbers_are_spoken_as_words(text: str, spoken: str) -> None:
    assert clean_for_speech(text).rstrip(".") == spoken.rstrip(".")


@pytest.mark.parametrize("text, spoken", [
    ("Mr. Smith and Dr. Jones", "Mister Smith and Doctor Jones"),
    ("Fruit, e.g. apples, i.e. red ones", "Fruit, for example apples, that is red ones"),
    ("Salt, pepper, etc.", "Salt, pepper, et cetera"),
    ("The U.S. economy", "The US economy"),
    ("Tom & Jerry", "Tom and Jerry"),
    ("The answer is no.", "The answer is no."),
    ("Room No. 5 on St. Mark's Square, off Main St.",
     "Room number five on Saint Mark's Square, off Main Street"),
])
def test_abbreviations_are_expanded(text: str, spoken: str) -> None:
    assert clean_for_speech(text) == spoken


@pytest.mark.parametrize("text, spoken", [
    ("This is **very** important.", "This is very important."),
    ("Some _italic_ and *emphasis* and ~~old~~ text.", "Some italic and emphasis and old text."),
    ("Run `pip install` first.", "Run pip install first."),
    ("# Big news\nWe won.", "Big news, We won."),
    ("See [the docs](https://example.com/a.b?x=1) now.", "See the docs now."),
    ("![a cat](cat.png) sleeps", "a cat sleeps"),
    ("> quoted wisdom", "quoted wisdom"),
    ("- one item\n- another item", "one item, another item"),
    ("1. first step\n2) second step", "first step, second step"),
    ("Code:\n```js\nalert(1)\n```\nafter", "Code: after"),
    ("snake_case_name stays", "snake_case_name stays".replace("_", " ")),
    ("| a | b |\n|---|---|\n| c | d |", "a, b, c, d"),
    ("Great job! 🎉🎉 Keep going 💪🏽.", "Great job! Keep going."),
    ("Read https://www.example.com/some/long/path?q=1 today.", "Read example.com today."),
    ("Mail bob@example.com please", "Mail bob at example.com please"),
    ("<b>bold</b> move", "bold move"),
])
def test_markdown_symbols_and_emoji_are_not_read_out(text: str, spoken: str) -> None:
    assert clean_for_speech(text) == spoken


@pytest.mark.parametrize("text", ["", "   ", "🎉🎉", "***", "```\ncode only\n```", "---", "| | |"])
def test_nothing_speakable_cleans_to_empty(text: str) -> None:
    assert clean_for_speech(text) == ""


def test_split_then_cleaned_list_items_are_spoken_one_by_one() -> None:
    text = ("Here's what you need:\n- Apples\n- Pears\n- Bread and butter\n\n"
            "1. Preheat the oven.\n2. Bake it.\n")
    s = SentenceSplitter(first_clause_words=0)
    spoken = [clean_for_speech(seg) for seg in s.push(text) + s.flush()]
    assert spoken[1] == "Apples, Pears"
    assert "Preheat the oven." in spoken[-2] and spoken[-1] == "Bake it."
    assert all("-" not in s and "1." not in s for s in spoken)


# -- the voice's language --------------------------------------------------------------------

@pytest.mark.parametrize("language, code", [
    ("en_US", "en"), ("en-us", "en"), (None, "en"), ("", "en"), ("de_DE", "de"), ("de", "de"),
    ("pt_BR", "pt_BR"), ("pt_PT", "pt"), ("pt-br", "pt_BR"), ("nb_NO", "no"), ("kk_KZ", "kz"),
    ("fr_FR", "fr"), ("zh_CN", None), ("cmn", None), ("sw_CD", None),
])
def test_voice_languages_map_to_num2words(language: str | None, code: str | None) -> None:
    assert num2words_language(language) == code


def test_english_rules_are_for_english_voices_and_voices_that_name_no_language() -> None:
    assert is_english("en_US") and is_english("en_GB") and is_english("en-us") and is_english(None)
    assert not is_english("de_DE") and not is_english("es") and not is_english("zh_CN")


@pytest.mark.parametrize("text, spoken", [
    ("Ich habe 42 Äpfel.", "Ich habe zweiundvierzig Äpfel."),
    ("Es ist -5 Grad kalt.", "Es ist minus fünf Grad kalt."),
    ("Pi ist 3,14.", "Pi ist drei Komma eins vier."),
    ("Das sind 1.234.567 Menschen.",
     "Das sind eine Million zweihundertvierunddreißigtausendfünfhundertsiebenundsechzig Menschen."),
    ("Geboren 1984.", "Geboren neunzehnhundertvierundachtzig."),
    ("Noch 5km, 3,5km oder 2.5 km.", "Noch 5km, 3,5km oder zwei Komma fünf km."),
    ("Die PLZ ist 01234.", "Die PLZ ist null eins zwei drei vier."),
    # Times, "%" and "°" are left to espeak-ng, which reads them in German ("zehn Uhr dreißig").
    ("Um 10:30 sind es 50% und 20°C.", "Um 10:30 sind es fünfzig% und zwanzig°C."),
])
def test_a_german_voice_gets_german_number_words(text: str, spoken: str) -> None:
    assert clean_for_speech(text, "de_DE") == spoken
    assert clean_for_speech(text, "de") == spoken  # a config with only espeak's voice code


def test_a_german_voice_gets_no_english_words() -> None:
    text = "Dr. Weber zahlt $5 & mehr, z.B. am 1st, um 9 am, e.g. 42 mal."
    spoken = clean_for_speech(text, "de_DE")
    # "$", "&" and "Dr." stay for espeak-ng, which says them in German ("Dollar", "und").
    assert spoken == "Dr. Weber zahlt $fünf & mehr, z.B. am 1st, um neun am, e.g. zweiundvierzig mal."
    english = {"doctor", "dollars", "and", "first", "for", "example", "forty-two", "nine", "a"}
    assert not english & set(spoken.lower().replace(",", " ").replace(".", " ").split())
    assert number_to_words(42, "de_DE") == "zweiundvierzig" and ordinal_to_words(3, "de") == "dritte"


def test_other_languages_get_their_own_number_words() -> None:
    assert clean_for_speech("Tengo 42 años.", "es_ES") == "Tengo cuarenta y dos años."
    assert clean_for_speech("J'ai 42 ans.", "fr_FR") == "J'ai quarante-deux ans."
    assert clean_for_speech("Tenho 21 anos.", "pt_BR") == "Tenho vinte e um anos."


def test_without_num2words_for_the_language_numbers_stay_digits() -> None:
    # espeak-ng, Piper's phonemiser, reads the digits in the voice's language.
    assert clean_for_speech("我有 42 个苹果。", "zh_CN") == "我有 42 个苹果。"
    assert number_to_words(42, "sw_CD") == "42"


def test_every_language_gets_the_language_neutral_cleanup() -> None:
    text = ("## Hinweis\n**Sehr** wichtig 🎉: siehe [die Doku](https://example.com/x) und `code`.\n"
            "```\nx = 1\n```")
    assert clean_for_speech(text, "de_DE") == "Hinweis, Sehr wichtig: siehe die Doku und code."
    url = "Mehr auf https://www.example.com/a/b?x=1 heute."
    assert clean_for_speech(url, "de") == "Mehr auf example.com heute."
    assert clean_for_speech("🎉 ***", "de_DE") == ""


def test_british_voices_keep_num2words_and_american_ones_drop_it() -> None:
    assert clean_for_speech("101 dogs", "en_GB") == "one hundred and one dogs"
    assert clean_for_speech("101 dogs", "en_US") == "one hundred one dogs"
    assert clean_for_speech("101 dogs") == "one hundred one dogs"
