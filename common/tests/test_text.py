"""The incremental sentence splitter and the speech text cleaner (pure logic, no models)."""

from __future__ import annotations

import pytest

from rvchat_common.text import (
    SentenceSplitter,
    clean_for_speech,
    count_words,
    number_to_words,
    ordinal_to_words,
    split_sentences,
)


def stream(text: str, step: int = 1, **kw) -> list[str]:
    """Feed text in small deltas, as an LLM does, and collect the segments."""
    kw.setdefault("first_clause_words", 0)
    s = SentenceSplitter(**kw)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += s.push(text[i:i + step])
    return out + s.flush()


@pytest.mark.parametrize("text, expected", [
    ("Hello there. How are you today? I am fine!",
     ["Hello there.", "How are you today?", "I am fine!"]),
    ("Mr. Smith met Dr. Jones at St. Mary's. They talked.",
     ["Mr. Smith met Dr. Jones at St. Mary's.", "They talked."]),
    ("Pi is about 3.14 and e is 2.718. Nice numbers.", ["Pi is about 3.14 and e is 2.718.", "Nice numbers."]),
    ("Use tools, e.g. a hammer, i.e. the right one. Then stop.",
     ["Use tools, e.g. a hammer, i.e. the right one.", "Then stop."]),
    ("He lives in the U.S. now and works there. Good for him.",
     ["He lives in the U.S. now and works there.", "Good for him."]),
    ("Well... maybe later. Wait... What happened?",
     ["Well... maybe later.", "Wait...\nWhat happened?"]),
    ('He said "Stop right there." Then he left quietly.',
     ['He said "Stop right there."', "Then he left quietly."]),
    ("J. R. R. Tolkien wrote books. Many of them.", ["J. R. R. Tolkien wrote books.", "Many of them."]),
    ("I like apples, pears, etc. But not kiwis at all.",
     ["I like apples, pears, etc.", "But not kiwis at all."]),
    ("I like apples, pears, etc. and kiwis too.", ["I like apples, pears, etc. and kiwis too."]),
    ("Visit example.com today. It is great.", ["Visit example.com today.", "It is great."]),
    ("I said no. Then I left.", ["I said no.", "Then I left."]),
    ("Try room No. 5 first. Then go.", ["Try room No. 5 first.", "Then go."]),
])
def test_sentences_split_where_a_reader_would_pause(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected
    assert stream(text) == expected  # one character at a time gives the same result
    assert stream(text, step=4) == expected


def test_list_items_and_newlines_end_segments_and_short_items_are_joined() -> None:
    text = ("Here's what you need:\n- Apples\n- Pears\n- Bread and butter\n\n"
            "1. Preheat the oven.\n2. Bake it.\n")
    segments = stream(text)
    assert segments[0] == "Here's what you need:"
    # One-word items are held back and joined to the next, with a line break kept between them.
    assert segments[1] == "- Apples\n- Pears"
    assert "1. Preheat the oven." in segments[-2] and segments[-1] == "2. Bake it."
    spoken = [clean_for_speech(s) for s in segments]
    assert spoken[1] == "Apples, Pears"
    assert "Preheat the oven." in spoken[-2] and spoken[-1] == "Bake it."
    assert all("-" not in s and "1." not in s for s in spoken)


def test_code_blocks_are_skipped_even_when_streamed() -> None:
    text = "Run this:\n```python\nprint('Hello. World.')\nx = 1\n```\nThat prints a greeting. Done now."
    for step in (1, 3, 7, len(text)):
        segments = stream(text, step=step)
        assert segments == ["Run this:", "That prints a greeting.", "Done now."], step


def test_unclosed_code_block_is_dropped_at_flush() -> None:
    assert stream("Look at this code.\n```\nwhile True:\n    pass") == ["Look at this code."]


def test_first_segment_may_be_a_clause_after_enough_words() -> None:
    text = "Well, I think the weather today is really nice, and we should go outside. Yes, we should go."
    segments = stream(text, first_clause_words=4)
    # "Well," is too short to stand alone; the clause after 9 words may.
    assert segments[0] == "Well, I think the weather today is really nice,"
    assert segments[1] == "and we should go outside."
    # Only the first segment of a turn is cut at a clause.
    assert segments[2] == "Yes, we should go."
    whole = "Well, I think the weather today is really nice, and we should go outside."
    assert stream(text, first_clause_words=0)[0] == whole


def test_clause_cut_ignores_commas_inside_numbers_and_times() -> None:
    segments = stream("We counted 1,234 birds at 10:30 in the morning today, and then we left.",
                      first_clause_words=4)
    assert segments[0] == "We counted 1,234 birds at 10:30 in the morning today,"


def test_fragments_shorter_than_min_words_are_joined_except_at_flush() -> None:
    assert stream("Hi. Ok. This is a sentence.") == ["Hi.\nOk.", "This is a sentence."]
    assert stream("Sure. I can help.") == ["Sure.\nI can help."]
    assert stream("Thanks!") == ["Thanks!"]  # at flush a lone word is still spoken


def test_text_with_no_boundary_is_cut_not_truncated() -> None:
    words = " ".join(f"word{i}" for i in range(200))
    segments = stream(words, step=5, max_chars=100)
    assert all(len(s) <= 100 for s in segments)
    assert " ".join(segments).split() == words.split()  # nothing lost


def test_a_segment_is_released_as_soon_as_its_boundary_is_seen() -> None:
    s = SentenceSplitter()
    assert s.push("The first sentence is here") == []
    assert s.push(".") == []  # could still be "here.com" or a decimal
    assert s.push(" The") == ["The first sentence is here."]
    assert s.push(" second one") == []
    assert s.flush() == ["The second one"]
    assert s.flush() == []


def test_reset_forgets_pending_text() -> None:
    s = SentenceSplitter()
    s.push("Half a sentence that")
    s.reset()
    assert s.push("New turn starts. ") == ["New turn starts."]


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


def test_count_words() -> None:
    assert count_words("Hello, world! It's 3 o'clock.") == 5
    assert count_words("...") == 0
