"""The live-mesh commands as real processes: call, peers, errors, signals."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.processes import Process
from tests.test_cli import assert_one_line_error, mesh

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast


@pytest.fixture
def running(tmp_path):
    started: list[Process] = []
    discovery = Process("discovery", "--bind", "tcp://127.0.0.1:0", home=tmp_path)
    started.append(discovery)
    url = discovery.endpoint()
    echo = Process("run", "echo", "--name", "echo-1", "--discovery", url, home=tmp_path)
    started.append(echo)
    echo.endpoint()
    yield url, discovery, echo
    for process in started:
        process.close()


def test_call_and_peers(running, tmp_path):
    url, _, _ = running
    out = mesh("call", "echo-1", "echo", '{"x": [1, 2]}', "--discovery", url, home=tmp_path)
    assert json.loads(out.stdout) == {"x": [1, 2]}
    out = mesh(
        "call", "echo-1", "echo_stream", '["a", "b"]', "--stream", "--discovery", url, home=tmp_path
    )
    assert out.stdout.splitlines() == ['"a"', '"b"']
    peers = json.loads(mesh("peers", "--json", "--discovery", url, home=tmp_path).stdout)
    assert [p["name"] for p in peers] == ["echo-1"]
    assert "echo" in peers[0]["capabilities"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("call", "echo-1", "nope"), "no handler for 'nope'"),
        (("call", "ghost", "echo"), "no live node named 'ghost'"),
        (("call", "echo-1", "echo", "{not json"), "not valid JSON"),
        (("call", "echo-1", "sleep", "5", "--timeout", "0.3"), "did not answer within 0.3 s"),
    ],
)
def test_call_errors_are_one_line(running, tmp_path, args, needle):
    url, _, _ = running
    result = mesh(*args, "--discovery", url, home=tmp_path, check=False)
    assert_one_line_error(result)
    assert needle in result.stderr


def test_unreachable_discovery_is_one_line(tmp_path):
    result = mesh("peers", "--discovery", "tcp://127.0.0.1:9", home=tmp_path, check=False)
    assert_one_line_error(result)
    assert "unreachable" in result.stderr


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_signals_stop_cleanly_and_unregister(running, tmp_path, sig, status):
    url, _, echo = running
    echo.kill(sig)
    assert echo.popen.wait(20) == status
    assert "Traceback" not in echo.popen.stderr.read()
    peers = json.loads(mesh("peers", "--json", "--discovery", url, home=tmp_path).stdout)
    assert peers == []  # it unregistered on the way out: no waiting for the lease


def test_a_second_process_under_a_live_name_fails_with_one_line_and_the_first_keeps_it(
    running, tmp_path
):
    url, _, echo = running
    second = Process("run", "echo", "--name", "echo-1", "--discovery", url, home=tmp_path)
    try:
        status = second.popen.wait(60)
        stderr = second.popen.stderr.read()
    finally:
        second.close()
    result = subprocess.CompletedProcess(second.args, status, "", stderr)
    assert_one_line_error(result)
    assert "'echo-1' is live in another process" in stderr
    assert echo.popen.poll() is None  # the first still serves, under its name
    peers = json.loads(mesh("peers", "--json", "--discovery", url, home=tmp_path).stdout)
    assert [(p["name"], p["endpoint"]) for p in peers] == [("echo-1", echo.endpoint())]
    out = mesh("call", "echo-1", "echo", '"still here"', "--discovery", url, home=tmp_path)
    assert json.loads(out.stdout) == "still here"
