"""The gateway commands as a user starts them: the exposure rules as one-line errors, the
generated token printed once and required, and HTTPS with a certificate of the user's."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes and sockets: not in --fast


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["gateway", "--listen", "0.0.0.0:0", "--no-auth"], "--no-auth only on a loopback"),
        (["gateway", "--listen", "8700"], "use HOST:PORT"),
        (["mcp", "--token", "a-token-of-twenty-chars"], "apply to --http"),
        (["mcp", "--http", "127.0.0.1:0", "--token", "short"], "at least 16 characters"),
        (["run", "a2a", "--name", "x", "--url", "ftp://nowhere"], "an http(s) address"),
        (
            [
                "mcp",
                "--http",
                "127.0.0.1:0",
                "--no-auth",
                "--tls-cert",
                "/no.pem",
                "--tls-key",
                "/no.pem",
            ],
            "--tls-cert /no.pem",
        ),
    ],
)
def test_a_misuse_is_one_line_and_exit_1(args, says, home):
    done = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "--mesh", str(home), *args, "--discovery", "tcp://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr


async def initialized(url: str, token: str, verify: object = True) -> set[str]:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    if verify is not True:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, verify=verify)
    async with (
        http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return {tool.name for tool in (await session.list_tools()).tools}


@pytest.mark.asyncio
async def test_a_generated_token_is_shown_once_and_required(spawn, discovery):
    spawn("run", "echo", "--name", "echo-1", "--discovery", discovery).endpoint()
    gateway = spawn("mcp", "--discovery", discovery, "--http", "127.0.0.1:0")
    shown = gateway.wait_line("token (shown once): ")
    token = shown.rsplit(" ", 1)[-1]
    url = gateway.endpoint()
    assert "echo-1__echo" in await initialized(url, token)
    async with httpx2.AsyncClient() as plain:
        assert (await plain.post(url, json={})).status_code == 401
    gateway.stop()
    assert token not in gateway.popen.stdout.read()  # printed once, nowhere else


@pytest.mark.asyncio
async def test_https_with_the_users_certificate(spawn, discovery, tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (scripts/install-host-tools installs it)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    spawn("run", "echo", "--name", "echo-1", "--discovery", discovery).endpoint()
    token = "https-test-token-0123456789"
    gateway = spawn(
        "mcp", "--discovery", discovery, "--http", "127.0.0.1:0", "--token", token,
        "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    url = gateway.endpoint()
    assert url.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context(cafile=str(cert))
    assert "echo-1__echo" in await initialized(url, token, verify=trusted)
    async with httpx2.AsyncClient(verify=trusted) as plain:  # plain HTTP is not served
        with pytest.raises(httpx2.HTTPError):
            await plain.post(url.replace("https://", "http://"), json={})
