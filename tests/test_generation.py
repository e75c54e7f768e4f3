"""Generation requests, pure: parameter rules, chat messages, and what may be streamed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.generation import (
    INCOMPLETE,
    GenerationParams,
    TextAssembler,
    check_fields,
    messages_of,
)
from mesh import InvalidArgument


def test_defaults_are_greedy_and_bounded_by_the_limit():
    params = GenerationParams.from_body({}, limit=16)
    assert params == GenerationParams(max_new_tokens=16, temperature=0.0, top_p=1.0, stop=())


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer from 1 to 100"),
        ({"max_new_tokens": 101}, "max_new_tokens must be an integer from 1 to 100"),
        ({"max_new_tokens": True}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": 2.0}, "max_new_tokens must be an integer"),
        ({"temperature": -0.1}, "temperature must be from 0"),
        ({"temperature": float("nan")}, "temperature must be a number"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"top_p": 0}, "top_p must be above 0"),
        ({"top_p": 1.5}, "top_p must be above 0"),
        ({"seed": -1}, "seed must be a non-negative"),
        ({"seed": "7"}, "seed must be a non-negative"),
        ({"stop": ""}, "stop must be a string or a list"),
        ({"stop": ["a"] * 9}, "stop must be a string or a list"),
        ({"stop": [1]}, "stop must be a string or a list"),
    ],
)
def test_each_parameter_rule_is_stated(body, rule):
    with pytest.raises(InvalidArgument, match=rule):
        GenerationParams.from_body(body, limit=100)


def test_a_single_stop_string_is_a_list_of_one():
    assert GenerationParams.from_body({"stop": "\n"}, limit=8).stop == ("\n",)


def test_unknown_and_missing_fields_are_named():
    with pytest.raises(InvalidArgument, match="unknown parameter 'temprature'"):
        check_fields({"prompt": "x", "temprature": 1}, "prompt")
    with pytest.raises(InvalidArgument, match="the body needs 'prompt'"):
        check_fields({"max_new_tokens": 3}, "prompt")
    with pytest.raises(InvalidArgument, match="must be a map"):
        check_fields(["x"], "prompt")


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hello",
        [{"role": "robot", "content": "x"}],
        [{"role": "user"}],
        [{"role": "user", "content": "x", "name": "eve"}],
        [{"role": "user", "content": "x" * 40_000}],
    ],
)
def test_bad_chats_are_refused(messages):
    with pytest.raises(InvalidArgument):
        messages_of({"messages": messages})


def test_a_chat_keeps_roles_and_contents():
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert messages_of({"messages": chat}) == chat


def growth(text: str, cuts: list[int]) -> list[str]:
    """The decodes a streamer would see: ever longer prefixes ending with the whole text."""
    points = sorted({min(c, len(text)) for c in cuts} | {len(text)})
    return [text[:p] for p in points]


@given(
    text=st.text(alphabet="ab\n:XY", max_size=40),
    stops=st.lists(st.text(alphabet="ab\n:", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=20),
)
def test_streamed_pieces_join_to_the_text_cut_at_the_first_stop(text, stops, cuts):
    assembler = TextAssembler(tuple(stops))
    prefixes = growth(text, cuts)
    pieces = [assembler.feed(prefix) for prefix in prefixes]
    pieces.append(assembler.finish(text))
    # generation halts at the first decode that holds a stop string: the text is cut there,
    # at the earliest stop in *that* decode (a longer one still incomplete never happens)
    expected, stopped = text, False
    for prefix in prefixes:
        found = [i for i in (prefix.find(s) for s in stops) if i >= 0]
        if found:
            expected, stopped = prefix[: min(found)], True
            break
    assert "".join(pieces) == expected
    assert assembler.stopped == stopped


@given(
    text=st.text(alphabet="ab\n:", max_size=30),
    stops=st.lists(st.text(alphabet="ab\n:", min_size=2, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=15),
)
def test_no_part_of_a_stop_string_is_ever_sent(text, stops, cuts):
    assembler = TextAssembler(tuple(stops))
    sent = ""
    for prefix in growth(text, cuts):
        sent += assembler.feed(prefix)
        if assembler.stopped:
            break
    sent += assembler.finish(text)
    assert not any(stop in sent for stop in stops)


def test_an_unfinished_character_is_held_until_it_completes():
    assembler = TextAssembler()
    assert assembler.feed("caf" + INCOMPLETE) == "caf"
    assert assembler.feed("café!") == "é!"
