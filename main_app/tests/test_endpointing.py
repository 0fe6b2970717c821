"""Endpointing: the hold that ends a turn follows the words."""

from __future__ import annotations

import pytest

from rvchat_app.endpointing import Completeness, Holds, completeness


@pytest.mark.parametrize("text,kind", [
    ("What is the capital of France?", Completeness.COMPLETE),
    ("I love it.", Completeness.COMPLETE),
    ("Where are you from?", Completeness.COMPLETE),
    ("Thank you.", Completeness.COMPLETE),
    ("Yes.", Completeness.COMPLETE),
    ("I would like to know,", Completeness.INCOMPLETE),
    ("The red fox has read many books, but", Completeness.INCOMPLETE),
    ("I went to the.", Completeness.INCOMPLETE),
    ("and then we went to see my", Completeness.INCOMPLETE),
    ("My number is 0 1 7 3", Completeness.INCOMPLETE),
    ("Well...", Completeness.INCOMPLETE),
    ("so um", Completeness.INCOMPLETE),
    ("tell me about the weather", Completeness.UNSURE),
    ("", Completeness.UNSURE),
])
def test_completeness(text, kind):
    assert completeness(text) is kind


def test_hold_is_short_after_a_finished_sentence_and_long_after_a_comma():
    holds = Holds(complete_ms=300, unsure_ms=500, incomplete_ms=1200)
    assert holds.for_text("What time is it?") == 300
    assert holds.for_text("what time is it") == 500
    assert holds.for_text("What time is it in,") == 1200
    # The page's turn-end silence bounds both ways: shorter than it never for unfinished words.
    assert Holds(complete_ms=300, unsure_ms=200, incomplete_ms=1200).for_text("Yes.") == 200
    assert Holds(complete_ms=300, unsure_ms=1500, incomplete_ms=1200).for_text("and,") == 1500
