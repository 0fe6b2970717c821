"""The speech text cleaner (pure logic, no models); the splitter's tests are in test_sentences.py."""

from __future__ import annotations

import pytest

from rvchat_common.text import clean_for_speech, number_to_words, ordinal_to_words


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
