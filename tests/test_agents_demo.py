"""The customer-service mesh end to end: every agent its own process, as the README runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.processes import ROOT


@pytest.mark.timeout(400)
def test_the_customer_service_mesh_routes_streams_converses_and_logs(tmp_path):
    log = tmp_path / "consultations.jsonl"
    env = {**os.environ, "MESH_HOME": str(tmp_path / "mesh"), "PYTHONPATH": str(ROOT)}
    env.pop("MESH_DISCOVERY", None)
    result = subprocess.run(
        [sys.executable, "-m", "agents.demo", "--questions", "3", "--converse", "2",
         "--tokens", "8", "--log", str(log)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "random weights, built locally. Its answers are gibberish" in out
    for department in ("billing", "tech", "shipping"):
        assert f"-> {department} (score" in out
    assert out.count("as expected") == 3  # MiniLM routed each question to its speciality
    assert "[billing]" in out and "[tech]" in out  # two models talked through the mesh
    assert "the logger wrote 3 consultations" in out
    assert "messaging per streamed token" in out and "TTFT" in out
    assert "exit statuses: logger 0, intake 0, router 0, shipping 0, tech 0, billing 0" in out

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["route"] for r in records] == ["billing", "tech", "shipping"]
    assert [r["seq"] for r in records] == [1, 2, 3]
    for record in records:
        assert record["question"] and record["answer"] and record["from"] == "intake"
        assert 1 <= record["tokens"] <= 8 and record["score"] > 0
