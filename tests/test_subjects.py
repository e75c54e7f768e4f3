"""Topic names, wildcard patterns and the subscriber's sequence tracking: pure code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import InvalidArgument, ReplayDetected
from mesh.core.registry import Registry, parse_registration
from mesh.core.replay import TopicSequence
from mesh.core.subjects import matches, validate_pattern, validate_topic
from tests.conftest import certified

TOKENS = st.text(alphabet="abcxyz019_-", min_size=1, max_size=4)
TOPICS = st.lists(TOKENS, min_size=1, max_size=5).map(".".join)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("orders.new", "orders.new", True),
        ("orders.new", "orders.old", False),
        ("orders.*", "orders.new", True),
        ("orders.*", "orders.eu.new", False),
        ("orders.*", "orders", False),
        ("orders.>", "orders.new", True),
        ("orders.>", "orders.eu.new", True),
        ("orders.>", "orders", False),
        ("*.new", "orders.new", True),
        ("*.new", "orders.eu.new", False),
        ("*.*.new", "orders.eu.new", True),
        (">", "anything.at.all", True),
        ("orders", "orders.new", False),
        ("orders.new.x", "orders.new", False),
    ],
)
def test_nats_style_matching(pattern, topic, expected):
    assert matches(validate_pattern(pattern), validate_topic(topic)) is expected


@pytest.mark.parametrize(
    "topic", ["", "orders..new", ".orders", "orders.", "orders.*", "orders.>", "a b", "x" * 257]
)
def test_bad_topics_are_refused_with_the_rule(topic):
    with pytest.raises(InvalidArgument):
        validate_topic(topic)


@pytest.mark.parametrize("pattern", ["orders.>.new", ">.x", "a..b", "", "tab\there", 7])
def test_bad_patterns_are_refused(pattern):
    with pytest.raises(InvalidArgument):
        validate_pattern(pattern)


@given(TOPICS)
def test_a_topic_matches_itself_and_the_catch_all(topic):
    assert matches(topic, topic)
    assert matches(">", topic)


@given(TOPICS, TOPICS)
def test_rest_wildcard_matches_exactly_the_extensions(prefix, topic):
    assert matches(prefix + ".>", topic) == topic.startswith(prefix + ".")


@given(TOPICS, st.data())
def test_star_matches_any_single_token(topic, data):
    tokens = topic.split(".")
    index = data.draw(st.integers(0, len(tokens) - 1))
    pattern = ".".join("*" if i == index else t for i, t in enumerate(tokens))
    assert matches(pattern, topic)
    assert not matches(pattern, topic + ".extra")


@given(st.lists(st.integers(1, 50), max_size=60), st.integers(0, 10))
def test_sequence_counts_every_missing_number_and_refuses_repeats(seqs, probe):
    """Against a model: after a probe at ``probe``, every number above it that never
    arrived before the highest one seen is a gap; a number not above the last is refused."""
    sequence = TopicSequence()
    missed = sequence.probe(probe)
    accepted = []
    for seq in seqs:
        if seq <= (accepted[-1] if accepted else probe):
            with pytest.raises(ReplayDetected):
                sequence.accept(seq)
        else:
            missed += sequence.accept(seq)
            accepted.append(seq)
    top = accepted[-1] if accepted else probe
    assert missed == (top - probe) - len(accepted)
    assert sequence.last == top


def test_first_probe_sets_the_start_and_later_probes_reveal_a_lost_tail():
    sequence = TopicSequence()
    assert sequence.probe(100) == 0  # nothing was promised before the subscription
    assert sequence.accept(101) == 0
    assert sequence.accept(104) == 2
    assert sequence.probe(106) == 2  # 105 and 106 never came
    assert sequence.probe(50) == 0  # an old (replayed) probe changes nothing
    assert sequence.last == 106


def test_directory_finds_publishers_and_subscribers_by_pattern(authority):
    registry = Registry()
    for name, topics, patterns in [
        ("pub", ["orders.eu.new", "status"], []),
        ("sub-all", [], ["orders.>"]),
        ("sub-eu", [], ["orders.eu.*"]),
        ("sub-us", [], ["orders.us.*"]),
    ]:
        body = {
            "endpoint": "tcp://127.0.0.1:1",
            "started_ms": 1,
            "topics": topics,
            "subscriptions": patterns,
            "topics_endpoint": "tcp://127.0.0.1:2",
        }
        registry.register(parse_registration(certified(authority, name).certificate, body, 0))
    names = {e.name for e in registry.lookup(subscribers="orders.eu.new")}
    assert names == {"sub-all", "sub-eu"}
    assert [e.name for e in registry.lookup(publishers="orders.*.new")] == ["pub"]
    assert registry.lookup(publishers="orders.us.>") == []


@pytest.mark.parametrize(
    "field", [{"topics": ["a.*"]}, {"subscriptions": ["a.>.b"]}, {"topics": "a"}]
)
def test_registration_with_bad_topics_is_refused(authority, field):
    body = {"endpoint": "tcp://127.0.0.1:1", "started_ms": 1, **field}
    with pytest.raises(InvalidArgument):
        parse_registration(certified(authority, "x").certificate, body, 0)
