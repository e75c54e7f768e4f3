"""The measurement scripts run end to end (with tiny counts: they measure, tests do not)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import ROOT


@pytest.mark.parametrize(
    ("script", "count", "expected"),
    [
        ("rtt", "200", ["raw pyzmq sync", "raw pyzmq asyncio", "mesh Node.request (sealed)"]),
        ("flow-bench", "500", ["on (window 1024)", "off (window 10000", "on / off:"]),
        ("token-overhead", "--tokens 20 --runs 1", ["mesh delivery per token", "mesh share"]),
        ("delivery-bench", "200 20", ["at_most_once", "at_least_once", "durable"]),
        ("soak", "--seconds 8 --agents 3 --restart-every 2", ["lost: 0", "peak memory"]),
    ],
)
def test_script_reports(script, count, expected):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *count.split()],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout
