"""The reply guard on crafted token streams, and the local provider's retry / fallback around it.

The streams are the failures seen from SmolLM2-135M (issue 15) cut into model-like pieces; the
provider tests swap the llama for a scripted one, so every path (cut, retry, fallback) is exercised
without depending on what the real model happens to write (test_guard_model.py does that).
"""

from __future__ import annotations

import re
import threading

import pytest

from rvchat_llm.guard import (HeldPieces, StreamGuard, english_verdict, first_repeat, foreign_start,
                              is_english, judge_stream)
from rvchat_llm.providers.base import Delta
from rvchat_llm.providers.local import LocalProvider
from rvchat_llm.settings import Settings


def tokens(text: str) -> list[str]:
    """Split like a BPE tokenizer roughly does: a word with its leading space, punctuation apart."""
    return re.findall(r" ?[A-Za-zÀ-ÿ']+| ?\d+| ?[^\sA-Za-zÀ-ÿ'\d]|\s+", text)


def run(text: str, **kw) -> tuple[list[str], str | None, int]:
    """Feed the stream; returns the released pieces, the problem, and how many tokens were read."""
    guard = StreamGuard(kw.pop("language", "en"), **kw)
    out: list[str] = []
    toks = tokens(text)
    for i, tok in enumerate(toks, 1):
        piece = guard.feed(tok)
        if piece:
            out.append(piece)
        if guard.problem:
            return out, guard.problem, i
    tail = guard.finish()
    if tail:
        out.append(tail)
    return out, guard.problem, len(toks)


LOOP = "I'm sorry, but I'm afraid of my own food. " * 4
FRENCH = "La femme de France, mon ami, mon ami, la femme de France, mon ami, mon ami, la femme de France"


# --- language --------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("The capital of France is Paris.", True),
    ("The capital of Bolivia is La Paz.", True),  # a name with a foreign article is still English
    ("Hello! How can I help you today?", True),
    ("Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.", True),  # nothing foreign in it
    ("I'd love a café au lait, please.", True),
    ("La capitale de la France est Paris.", False),
    ("La capital de España, el siglo de la noche.", False),
    ("Der Himmel ist blau und die Sonne scheint.", False),
    ("Il cielo è blu e il sole splende.", False),
    ("Bonjour !", False),
    ("Небо голубое.", False),
    ("空は青いです。", False),
    ("Paris.", None),
    ("Los Angeles.", None),
])
def test_english_verdict(text, expected):
    assert english_verdict(text) is expected


def test_a_switch_is_found_sentence_by_sentence():
    # A reply SmolLM2 gave at temperature 0.6 (issue 15 baseline, "What famous tower is there?").
    text = ("I'm happy to help. Bien sûr, je ne sais qua l'autre. I'm afraid I'm unable to provide you "
            "with the most accurate information. However, you can find it in the tower of Pisa.")
    assert is_english(text)  # diluted over the whole reply...
    assert foreign_start(text) == text.index(" Bien")  # ...but not sentence by sentence


# --- loops -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    LOOP,
    "Max is a Golden Retriever. He's a 10-year-old Golden Retriever. He's a 10-year-old Golden Retriever.",
    "Yes. Yes. Yes.",
    "Wow!!!!!!!!!!!!",
    "very very very very good",
])
def test_loops_are_found(text):
    assert first_repeat(text) is not None


@pytest.mark.parametrize("text", [
    "The capital of France is Paris.",
    "It is about 100000000 kilometres away.",
    "Boil water, add the egg, and wait ten minutes. Then cool it in cold water.",
])
def test_normal_replies_are_not_loops(text):
    assert first_repeat(text) is None


# --- streaming -------------------------------------------------------------------------------
def test_a_good_reply_goes_out_whole_and_unchanged():
    text = "Sure, here is how to boil an egg: put it in boiling water. Wait ten minutes, then cool it."
    out, problem, _ = run(text)
    assert problem is None and "".join(out) == text


def test_the_first_five_words_go_out_before_their_sentence_ends():
    # As the TTS speaks the first five words at once (TTS_FIRST_SEGMENT_MAX_WORDS), so does the guard.
    guard = StreamGuard("en")
    released = ""
    for tok in tokens("The largest planet in our solar system is Jupiter."):
        released += guard.feed(tok)
        if tok == " solar":  # with the space after it: the fifth word is whole
            assert released == "The largest planet in our "
    assert released + guard.finish() == "The largest planet in our solar system is Jupiter."


def test_the_first_clause_goes_out_before_its_sentence_ends():
    # As the TTS speaks a first clause of 4+ words at once, the guard lets it out at once.
    guard = StreamGuard("en", first_max_words=0)
    released = ""
    for tok in tokens("The capital of France, as you may know, is Paris."):
        released += guard.feed(tok)
        if tok == " as":
            assert released == "The capital of France, "
    assert guard.problem is None


@pytest.mark.parametrize("text", [
    "The largest planet in our solar system is Jupiter. It is a gas giant with many moons.",
    "The capital of France, as you may know, is Paris. It is on the Seine.",
    "Sure thing. The moon orbits the Earth once a month. It has no light of its own.",
    "Bees make honey! They also pollinate flowers, which helps plants grow.",
])
def test_the_tts_can_speak_each_unit_as_soon_as_it_is_released(text):
    """The guard's releases fed to the TTS's splitter (its defaults: a first clause of 4+ words, the first
    segment at most 5 words, segments of 2+ words): every unit is cut on the token that released it, so
    nothing released waits in the splitter for the next unit (held here until a sentence later)."""
    from rvchat_common.sentences import SentenceSplitter

    guard = StreamGuard("en")
    splitter = SentenceSplitter(first_clause_words=4, first_max_words=5, min_words=2)
    segments: list[str] = []
    for tok in tokens(text):
        released = guard.feed(tok)
        segments += splitter.push(released)
        assert splitter.pending == "", f"{splitter.pending!r} released but not yet speakable"
    segments += splitter.push(guard.finish()) + splitter.flush()
    assert " ".join(segments) == text and len(segments) >= 2


def test_a_loop_is_cut_as_it_starts_and_the_first_sentence_kept():
    out, problem, read = run(LOOP)
    assert problem == "loop"
    # A whole sentence goes out with the space after it: the TTS need not wait for the next word.
    assert "".join(out) == "I'm sorry, but I'm afraid of my own food. "
    # Stopped within the second sentence, not after reading the whole stream.
    assert read < len(tokens(LOOP)) // 2


def test_french_is_held_back_and_stopped_before_anything_is_said():
    out, problem, read = run(FRENCH)
    assert problem == "language" and out == []
    assert read < len(tokens(FRENCH))


def test_english_then_french_keeps_the_english_sentence():
    out, problem, _ = run("The capital of France is Paris. La ville est très belle et je l'aime beaucoup.")
    assert problem == "language" and "".join(out) == "The capital of France is Paris. "


def test_a_loop_after_the_first_five_words_ends_at_a_clause():
    # SmolLM2's answer to "How do I boil an egg?": the loop ("minutes for a" twice) comes after the
    # first five words went out; the reply ends at the clause before it, not at "Boil".
    text = ("Boil an egg:\n1. Boil the egg until it's fully cooked, usually around 20 minutes for a large "
            "egg or 30 minutes for a small one.")
    out, problem, _ = run(text)
    assert problem == "loop" and "".join(out) == "Boil an egg:\n1. Boil the egg until it's fully cooked,"


def test_a_repeated_short_sentence_keeps_the_first():
    out, problem, _ = run("Yes. Yes. Yes. Yes.")
    assert problem == "loop" and "".join(out) == "Yes."


def test_a_looping_first_clause_is_not_let_out_early():
    # "Hello there, hello there," has 4 words and a comma, but its word pairs already repeat.
    out, problem, _ = run("Hello there, hello there, hello there, hello there.")
    assert problem == "loop" and out == []


def test_short_replies_and_names_are_not_foreign():
    for text in ("Paris.", "Los Angeles.", "The capital of Bolivia is La Paz.",
                 "El Salvador is in Central America."):
        out, problem, _ = run(text)
        assert problem is None and "".join(out) == text


def test_no_language_check_without_a_reply_language():
    out, problem, _ = run("La capitale de la France est Paris.", language="")
    assert problem is None and "".join(out) == "La capitale de la France est Paris."


def test_cut_by_the_token_limit():
    # An unfinished last sentence is dropped when a whole one was said...
    assert judge_stream(tokens("The sky is blue. It is blue because of"), truncated=True) == \
        ("The sky is blue. ", None)
    # ...but when nothing whole was said, the part is all there is.
    assert judge_stream(tokens("Once upon a time, in a land"), truncated=True) == \
        ("Once upon a time, in a land", None)


def test_released_text_is_always_a_prefix_of_the_stream():
    for text in (LOOP, FRENCH, "Good night! Sleep well. Sleep well.",
                 "1. Boil water.\n2. Add tea.\n3. Wait."):
        for size in (1, 3, 7):
            pieces = [text[i:i + size] for i in range(0, len(text), size)]
            out, _ = judge_stream(pieces)
            assert text.startswith(out)


# --- the local provider around the guard (scripted llama) --------------------------------------
class ScriptedLlama:
    """Stands in for llama_cpp.Llama: each create_completion streams the next scripted reply."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.calls: list[dict] = []

    def create_completion(self, prompt, stream=True, **params):
        self.calls.append(params)
        text = self.replies.pop(0)
        pieces = tokens(text)

        def gen():
            for i, tok in enumerate(pieces):
                yield {"choices": [{"text": tok, "finish_reason": "stop" if i == len(pieces) - 1 else None}]}

        return gen()


def provider(*replies: str, **settings) -> tuple[LocalProvider, ScriptedLlama]:
    p = LocalProvider(Settings(provider="local", **settings), queue=None)  # type: ignore[arg-type]
    p._llm = ScriptedLlama(*replies)  # type: ignore[assignment]
    return p, p._llm


def reply(p: LocalProvider, params: dict | None = None):
    said: list[str] = []
    text, finish, extra = p._reply([1, 2, 3], params or {"temperature": 0.6, "repeat_penalty": 1.0},
                                   threading.Event(), lambda item: said.append(item.content)
                                   if isinstance(item, Delta) else None)
    assert "".join(said) == text  # what the client got is what the provider reports
    return text, finish, extra


def test_provider_good_reply_untouched():
    p, llama = provider("The capital of France is Paris.")
    assert reply(p) == ("The capital of France is Paris.", "stop", {})
    assert len(llama.calls) == 1


def test_provider_cuts_after_a_whole_sentence_without_retrying():
    p, llama = provider(LOOP)
    text, finish, extra = reply(p)
    assert text == "I'm sorry, but I'm afraid of my own food. " and finish == "stop"
    assert extra == {"guard": "loop", "guard_action": "cut"} and len(llama.calls) == 1


def test_provider_retries_greedily_with_a_repeat_penalty():
    p, llama = provider(FRENCH, "The capital of France is Paris.")
    text, _, extra = reply(p)
    assert text == "The capital of France is Paris."
    assert extra == {"guard": "language", "guard_action": "retried"}
    assert llama.calls[1]["temperature"] == 0.0 and llama.calls[1]["repeat_penalty"] > 1.0


def test_provider_falls_back_rather_than_going_silent():
    p, _ = provider(FRENCH, "Moo moo moo moo moo moo.")
    text, finish, extra = reply(p)
    assert text == Settings().fallback_reply and finish == "stop"
    assert extra["guard_action"] == "fallback"


def test_provider_without_guard_passes_everything():
    p, _ = provider(FRENCH, guard=False)
    assert reply(p)[0] == FRENCH


def test_released_text_goes_out_in_the_pieces_it_came_in():
    held = HeldPieces()
    for piece in ("Hello", "!", " How", " are", " you", "?"):
        held.add(piece)
    assert held.take("Hello!") == ["Hello", "!"]
    assert held.take(" How ar") == [" How", " ar"]  # a release ending inside a piece splits it
    assert held.take("e you?") == ["e", " you", "?"]


def test_provider_sends_one_delta_per_token():
    p, _ = provider("The capital of France is Paris.")
    said: list[str] = []
    p._reply([1], {"temperature": 0.0, "repeat_penalty": 1.0}, threading.Event(),
             lambda item: said.append(item.content) if isinstance(item, Delta) else None)
    # One delta per token, but for the token after the first five words: its space goes out with them.
    toks = tokens("The capital of France is Paris.")
    assert said == toks[:5] + [" ", "Paris"] + toks[6:]


def test_max_sentences_ends_the_reply():
    guard = StreamGuard("en", max_sentences=2)
    out = ""
    toks = tokens("The sky is blue. Light scatters in the air. Blue light scatters most. So the sky is blue.")
    for read, tok in enumerate(toks, 1):
        out += guard.feed(tok)
        if guard.complete:
            break
    assert out == "The sky is blue. Light scatters in the air." and guard.problem is None
    assert read < len(toks) and guard.finish() == ""


def test_provider_stops_generating_after_max_sentences():
    p, llama = provider("One. Two. Three. Four.", max_sentences=2)
    consumed = []
    create = llama.create_completion

    def counting(prompt, stream=True, **params):
        for chunk in create(prompt, stream=stream, **params):
            consumed.append(chunk)
            yield chunk

    llama.create_completion = counting  # type: ignore[method-assign]
    text, finish, extra = reply(p)
    assert text == "One. Two." and finish == "stop" and extra == {}
    assert len(consumed) < len(tokens("One. Two. Three. Four."))  # generation stopped, not filtered


def test_a_list_is_judged_by_its_items():
    # "Boil an egg:" introduces the list (not a sentence to keep alone), "1." opens an item.
    from rvchat_llm.guard import sentence_spans
    text = "Boil an egg:\n1. Put it in water.\n2. Boil it for ten minutes.\n3. Cool it."
    spans = [text[a:b].strip() for a, b in sentence_spans(text)]
    assert spans == ["Boil an egg:\n1. Put it in water.", "2. Boil it for ten minutes.", "3. Cool it."]
    guard = StreamGuard("en", max_sentences=2)
    out = ""
    for tok in tokens("1. Boil water\n2. Pour it into a kettle\n3. Add tea leaves\n"):
        out += guard.feed(tok)
        if guard.complete:
            break
    assert out == "1. Boil water\n2. Pour it into a kettle\n"
