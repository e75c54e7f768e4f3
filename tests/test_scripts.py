"""The measurement scripts run end to end (with tiny counts: they measure, tests do not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


@pytest.mark.parametrize(
    ("script", "count", "expected"),
    [
        ("rtt", "200", ["raw pyzmq sync", "raw pyzmq asyncio", "mesh Node.request (sealed)"]),
        ("flow-bench", "500", ["on (window 1024)", "off (window 10000", "on / off:"]),
        ("token-overhead", "--tokens 20 --runs 1", ["mesh delivery per token", "mesh share"]),
        ("delivery-bench", "200 20", ["at_most_once", "at_least_once", "durable"]),
        (
            "soak",
            "--seconds 8 --agents 3 --restart-every 2 --settle 30",
            ["lost: 0", "peak memory", "held: 0 messages", "verdict: ok"],
        ),
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


@pytest.mark.timeout(300)
def test_soak_books_balance(tmp_path):
    """A short soak with kill -9 restarts: its JSON summary parses, every reliable message
    queued ran (exactly once, in order, the crash window aside), at-most-once traffic is
    counted as sent and never as a verified reply, and no quiet node holds any credit."""
    summary_file = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak"), "--seconds", "6", "--agents", "2",
         "--senders", "1", "--restart-every", "1.5", "--settle", "60",
         "--json", str(summary_file)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    summary = json.loads(summary_file.read_text())
    reliable = summary["reliable"]
    assert summary["lost"] == 0, summary["lost_examples"]
    assert reliable["lost"] == 0
    assert set(reliable["ran"]) == {"at_least_once", "durable"}
    assert reliable["order_violations"] == reliable["duplicates"] == 0, reliable["examples"]
    assert reliable["phantom"] == reliable["misrouted"] == 0, reliable["examples"]
    assert "one-way" not in summary["replied"] and "announce" not in summary["replied"]
    assert summary["held_messages"] == summary["held_bytes"] == 0, summary["held"]
    assert summary["unasked"] == [] and summary["failures"] == []


README_SCRIPTS = [
    "rtt", "flow-bench", "delivery-bench", "token-overhead", "bench-docs", "soak",
    "gen-vectors", "fuzz-envelope",
]  # fmt: skip


@pytest.mark.parametrize("script", README_SCRIPTS)
def test_each_script_answers_help_as_a_user_starts_it(script):
    """Typed as the README shows it (`scripts/rtt`), with the system's python3 and nothing
    activated: the script finds the project's venv itself and answers --help."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(path)
    done = subprocess.run(
        [str(ROOT / "scripts" / script), "--help"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and done.stdout.strip()
