"""``mesh bench`` end to end with tiny counts: the JSON has every scenario on both systems,
percentiles positive and ordered, ratios and machine details (it measures; tests do not)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.processes import ROOT

SCENARIOS = {
    "request/reply 64 B", "request/reply 1 KiB", "request/reply 64 KiB", "request/reply 1 MiB",
    "one-way 64 B", "concurrency 1", "concurrency 4", "concurrency 16", "concurrency 64",
    "stream: gap between chunks", "tensor 4 MiB round trip", "request/reply 64 B at 200/s",
}  # fmt: skip


def test_bench_reports_every_scenario_beside_raw_pyzmq(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "bench", "--tiny", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ratio = mesh / raw pyzmq" in done.stdout and "24/24 done" in done.stderr
    summary = json.loads(out.read_text())
    assert {"cpu", "cores", "python", "pyzmq", "libzmq"} <= set(summary["machine"])
    seen = {(r["scenario"], r["system"]) for r in summary["results"]}
    assert seen == {(s, system) for s in SCENARIOS for system in ("mesh", "raw pyzmq")}
    for row in summary["results"]:
        assert row["throughput"]["messages_per_s"] > 0, row
        lat = row["latency_us"]
        if row["scenario"].startswith("one-way"):
            assert lat is None  # throughput only
            continue
        points = [lat["p50"], lat["p90"], lat["p99"], lat["p99.9"], lat["max"]]
        assert points == sorted(points) and points[0] > 0, row
        assert lat["count"] > 0
    assert set(summary["ratios"]) == SCENARIOS
    assert all(v > 0 for ratio in summary["ratios"].values() for v in ratio.values())
