"""The latency histogram, pure: bounded relative error, ordered percentiles, merging."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from mesh.core.histogram import SUB_COUNT, Histogram

values = st.lists(st.integers(0, 10**12), min_size=1, max_size=300)


def exact(samples: list[int], q: float) -> int:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@given(values, st.sampled_from([0.5, 0.9, 0.99, 0.999, 1.0]))
def test_percentiles_are_within_the_relative_precision(samples, q):
    histogram = Histogram()
    for value in samples:
        histogram.record(value)
    truth = exact(samples, q)
    reported = histogram.percentile(q)
    assert truth <= reported <= max(truth + truth / SUB_COUNT, truth)


@given(values)
def test_percentiles_are_ordered_and_end_at_the_maximum(samples):
    histogram = Histogram()
    for value in samples:
        histogram.record(value)
    s = histogram.summary_us()
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["p99.9"] <= s["max"]
    assert histogram.max == max(samples) and histogram.min == min(samples)
    assert histogram.percentile(1.0) == max(samples)


@given(values, values)
def test_merging_is_recording_both(first, second):
    a, b, both = Histogram(), Histogram(), Histogram()
    for value in first:
        a.record(value)
        both.record(value)
    for value in second:
        b.record(value)
        both.record(value)
    a.merge(b)
    assert a == both


@given(values)
def test_a_histogram_survives_json_between_processes(samples):
    histogram = Histogram()
    for value in samples:
        histogram.record(value)
    assert Histogram.from_json(json.loads(json.dumps(histogram.to_json()))) == histogram
