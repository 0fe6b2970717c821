"""The incremental sentence splitter and the sentence counter (pure logic, no models)."""

from __future__ import annotations

import pytest

from rvchat_common.sentences import SentenceCounter, SentenceSplitter, count_words, split_sentences


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


def test_count_words() -> None:
    assert count_words("Hello, world! It's 3 o'clock.") == 5
    assert count_words("...") == 0


# -- streamed text whose end is not yet a sentence end (main_app caps replies by these counts) --

@pytest.mark.parametrize("deltas, sentence", [
    (["It is 3.", "14 exactly.", " Next"], "It is 3.14 exactly."),
    (["Dr.", " Smith said hi.", " Next"], "Dr. Smith said hi."),
    (["Ask Mr.", " Jones", " today.", " Next"], "Ask Mr. Jones today."),
    (["Try room No.", " 5 first.", " Next"], "Try room No. 5 first."),
])
def test_a_streamed_period_that_may_go_on_is_not_a_sentence_end(deltas: list[str], sentence: str) -> None:
    s = SentenceSplitter(first_clause_words=0)
    counter = SentenceCounter()
    for delta in deltas[:-1]:
        assert s.push(delta) == [], delta
        assert counter.push(delta) == 0, delta
    assert s.push(deltas[-1]) == [sentence]
    assert counter.push(deltas[-1]) == 1


def test_sentence_counter_counts_complete_sentences_of_a_stream() -> None:
    text = "Yes. Pi is 3.14, roughly. Dr. Who agrees.\n- one item\n```\nx = 1. y = 2.\n```\nDone. Bye"
    for step in (1, 2, 5, len(text)):
        counter = SentenceCounter()
        counts = [counter.push(text[i:i + step]) for i in range(0, len(text), step)]
        assert counts == sorted(counts)  # a count never goes back
        # "Yes.", "Pi is 3.14, roughly.", "Dr. Who agrees.", "- one item", "Done."; not the code, nor "Bye".
        assert counter.count == 5, step
    counter.reset()
    assert counter.push("New reply. ") == 1


def test_a_long_first_sentence_is_cut_after_first_max_words() -> None:
    s = SentenceSplitter(first_max_words=5)
    out: list[str] = []
    for word in "The invention of movable metal letters changed printing. It spread fast.".split(" "):
        out += s.push(word + " ")
    # The first segment ends after five words, once the sixth has begun; its rest is not held back
    # as too short, and only the first segment is cut so.
    assert out + s.flush() == ["The invention of movable metal", "letters changed printing.", "It spread fast."]
    s = SentenceSplitter(first_max_words=5)
    deltas = ["The", " capital", " of", " France", " is", " Paris", ".", " It", " is", " lovely", "."]
    assert [seg for d in deltas for seg in s.push(d)] + s.flush() == ["The capital of France is", "Paris.",
                                                                        "It is lovely."]
    s = SentenceSplitter(first_max_words=5)  # the space after the fifth word is enough to cut there
    assert s.push("The capital of France") == [] and s.push(" is") == []
    assert s.push(" ") == ["The capital of France is"]
    s = SentenceSplitter(first_max_words=5)  # a short first sentence is whole
    assert s.push("Yes, it is. ") + s.flush() == ["Yes, it is."]
