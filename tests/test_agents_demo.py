"""The customer-service mesh end to end: every agent its own process, as the README runs it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.demo import one_line
from tests.processes import ROOT, Process

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


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
    assert out.count("as expected") == 4  # MiniLM routed each question to its speciality
    assert "[billing]" in out and "[tech]" in out  # two models talked through the mesh
    assert "the logger wrote 4 consultations" in out  # the three, and the drained one
    # billing drained mid-answer (issue 23): the answer went on elsewhere, in full
    drained = re.search(r"the answer went on from token (\d+) on (\w+), which serves the "
                        r"same model \((\d+) tokens in all", out)  # fmt: skip
    assert drained, out[-2000:]
    assert 0 < int(drained[1]) < 200 and drained[2] in ("tech", "shipping")
    assert drained[3] == "200" and "max gap" in out
    assert "messaging per streamed token" in out and "TTFT" in out
    # billing had exited 0 on its own, drained
    assert "left the mesh, exit status 0)" in out
    assert "exit statuses: logger 0, intake 0, router 0, shipping 0, tech 0, billing 0" in out
    # what a person waiting sees (issue 21, items 6 and 11): where the keys went, each agent
    # as it comes up, the shutdown announced; each answer stays on its own line
    assert f"mesh directory: {tmp_path / 'mesh'}" in out
    assert "starting 7 agents, each its own process, loading its model" in out
    assert out.count(" up (pid ") == 7 and "stopping 8 processes" in out
    answers = [line for line in out.splitlines() if line.startswith("  -> ")]
    assert len(answers) == 4 and not any("\t" in a or "\x1b" in a for a in answers)

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["route"] for r in records] == ["billing", "tech", "shipping", "billing"]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    for record in records:
        assert record["question"] and record["answer"] and record["from"] == "intake"
        assert 1 <= record["tokens"] <= 8 or record["tokens"] == 200
        assert record["score"] > 0


def test_model_text_is_printed_inside_its_line():
    """The tiny model's gibberish holds tabs, newlines and escapes (issue 21, item 11)."""
    assert one_line("a\tb\nc\r\x1b[31md\u00e9\u200b") == "a b c \\x1b[31mdé\\u200b"
    assert one_line("\U000e0001") == "\\U000e0001"  # a tag character, beyond the BMP


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie waiting for a parent that died is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
@pytest.mark.timeout(300)
def test_killing_the_demo_outright_leaves_no_agent_behind(tmp_path):
    demo = Process("--questions", "1", home=tmp_path / "mesh", module="agents.demo")
    pids = []
    try:
        for _ in range(7):  # the agents, in the order they come up
            line = demo.wait_line(" up (pid ", timeout=200)
            pids.append(int(re.search(r"\(pid (\d+)", line).group(1)))
        demo.kill()  # SIGKILL: the demo's own cleanup never runs
        deadline = time.monotonic() + 60
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _running(p)]
    finally:
        demo.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
