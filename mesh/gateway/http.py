"""The HTTP side of the gateways: who may come in, how much they may send, and serving.

Every HTTP request must carry ``Authorization: Bearer TOKEN`` (compared in constant time)
unless the gateway was started without a token, which :func:`check_exposure` allows only
on a loopback address. Bodies are limited before the application reads them: a declared
length over the limit is refused at once (413), and a body sent without a length is cut
off at the limit (the application sees the client go away). Refusals happen here, in
front of the SDKs' applications, so a request that is refused never reaches an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import secrets
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import InvalidArgument

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 1 << 20  # 1 MiB: a message or a tool call, not a bulk transfer
TOKEN_BYTES = 32


@dataclass(frozen=True)
class Exposure:
    """Where the gateway listens and who may call it: ``token`` None means no check."""

    host: str
    port: int
    token: str | None
    generated: bool  # the token was made here: print it once
    tls: tuple[str, str] | None = None  # certificate file, key file


def check_exposure(
    listen: str,
    *,
    token: str | None,
    no_auth: bool,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Exposure:
    """Read ``HOST:PORT`` and decide the token: the one given, none with ``no_auth`` (only
    on loopback: anyone who can reach another address could call every agent), else a
    fresh one. Raises InvalidArgument for a bad address or combination."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidArgument(f"--listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:8700")
    if no_auth and token:
        raise InvalidArgument("give --token or --no-auth, not both")
    if no_auth and not is_loopback(host):
        raise InvalidArgument(
            f"--no-auth only on a loopback address (127.0.0.1, ::1, localhost), not {host}: "
            "anyone who can reach it could call every agent"
        )
    if (tls_cert is None) != (tls_key is None):
        raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    if no_auth:
        return Exposure(host, int(port_text), None, False, tls)
    if token is not None and len(token) < 16:
        raise InvalidArgument("--token must be at least 16 characters")
    generated = token is None
    return Exposure(
        host, int(port_text), token or secrets.token_urlsafe(TOKEN_BYTES), generated, tls
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware in front of a gateway's application: the bearer token and the body
    limit. ``refused`` counts what it turned away, by reason."""

    def __init__(self, app: App, token: str | None, max_body: int = MAX_BODY) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None
        self.max_body = max_body
        self.refused: dict[str, int] = {"unauthorized": 0, "too_large": 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the application's own start and stop
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self._token is not None and not self._authorized(headers.get(b"authorization")):
            self.refused["unauthorized"] += 1
            await _reply(send, 401, "unauthorized: send Authorization: Bearer TOKEN", bearer=True)
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            self.refused["too_large"] += 1
            await _reply(send, 413, f"request body over {self.max_body} bytes")
            return
        await self.app(scope, self._limited(receive), send)

    def _authorized(self, header: bytes | None) -> bool:
        assert self._token is not None
        if header is None:
            return False
        scheme, _, credential = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credential.strip(), self._token)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    self.refused["too_large"] += 1
                    return {"type": "http.disconnect"}
            return message

        return limited


async def _reply(send: Send, status: int, error: str, *, bearer: bool = False) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if bearer:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HttpServer:
    """uvicorn serving an application on the running loop, as a task this object owns.
    :meth:`bind` first (the URL is known from then on, port 0 included), then :meth:`serve`."""

    def __init__(self, exposure: Exposure) -> None:
        self.exposure = exposure
        self.scheme = "https" if exposure.tls else "http"
        self.host = exposure.host
        self.port = exposure.port
        self._sock: socket.socket | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> str:
        """Listen (an OSError here if the address is taken); connections queue from now
        on, before uvicorn accepts them. Returns the URL."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto given: asyncio sets TCP_NODELAY on accepted sockets only when it is TCP, and
        # without it a reply's header and body writes wait out the client's delayed ACK
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        return self.url

    async def serve(self, app: App) -> None:
        """Serve ``app`` on the bound socket, in a task; a client may connect at once."""
        import uvicorn

        if self._sock is None:
            self.bind()
        tls = self.exposure.tls or (None, None)
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="on",
                ssl_certfile=tls[0],
                ssl_keyfile=tls[1],
                timeout_graceful_shutdown=2,
            )
        )
        self._server.install_signal_handlers = lambda: None  # the command owns the signals
        self._task = asyncio.create_task(self._server.serve([self._sock]), name="gateway-http")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def close(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
