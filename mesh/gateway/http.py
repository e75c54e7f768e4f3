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
import ssl
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
START_TIMEOUT_S = 10.0
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
    if tls is not None:
        _check_tls(*tls)
    if no_auth:
        return Exposure(host, int(port_text), None, False, tls)
    if token is not None and len(token) < 16:
        raise InvalidArgument("--token must be at least 16 characters")
    generated = token is None
    return Exposure(
        host, int(port_text), token or secrets.token_urlsafe(TOKEN_BYTES), generated, tls
    )


def _check_tls(cert: str, key: str) -> None:
    """Load the certificate and key now, so a bad file is one line before anything
    listens (uvicorn would fail inside its task, after the gateway said it serves)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"--tls-cert {cert} / --tls-key {key}: {exc}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware in front of a gateway's application: the bearer token, the body
    limit, and, without a token (loopback only), the Host and Origin a browser sends, so a
    web page cannot reach the gateway through DNS rebinding or a cross-site request.
    Only ``lifespan`` and checked ``http`` requests reach the application; a WebSocket
    is refused (no gateway route speaks it). ``refused`` counts what it turned away."""

    def __init__(self, app: App, token: str | None, max_body: int = MAX_BODY) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None
        self.max_body = max_body
        self.refused: dict[str, int] = {
            "unauthorized": 0,
            "too_large": 0,
            "foreign_origin": 0,
            "not_http": 0,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the application's own start and stop
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            self.refused["not_http"] += 1
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        headers = dict(scope.get("headers") or [])
        if self._token is not None and not self._authorized(headers.get(b"authorization")):
            self.refused["unauthorized"] += 1
            await _reply(send, 401, "unauthorized: send Authorization: Bearer TOKEN", bearer=True)
            return
        if self._token is None and not _same_machine(headers):
            self.refused["foreign_origin"] += 1
            await _reply(send, 403, "without a token, only clients on this machine")
            return
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body:
                self.refused["too_large"] += 1
                await _reply(send, 413, f"request body over {self.max_body} bytes")
                return
            await self.app(scope, receive, send)  # the server holds it to the length
            return
        buffered = await self._read_body(receive)
        if buffered is None:
            self.refused["too_large"] += 1
            await _reply(send, 413, f"request body over {self.max_body} bytes")
            return
        await self.app(scope, _replaying(buffered, receive), send)

    def _authorized(self, header: bytes | None) -> bool:
        assert self._token is not None
        if header is None:
            return False
        scheme, _, credential = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credential.strip(), self._token)

    async def _read_body(self, receive: Receive) -> Message | None:
        """A body sent without a length, read whole up to the limit (None: over it), so
        the application sees a complete request or none at all."""
        parts: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message  # the client left: the application sees that
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                return None
            parts.append(chunk)
            if not message.get("more_body"):
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}


def _replaying(first: Message, receive: Receive) -> Receive:
    """``receive`` that gives ``first`` once, then what the server gives."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return first
        return await receive()

    return replay


def _same_machine(headers: dict[bytes, bytes]) -> bool:
    """Whether Host names a loopback address and Origin, if any, too: what a client on this
    machine sends, and what a page served from elsewhere cannot."""
    host = headers.get(b"host", b"").decode("latin-1")
    origin = headers.get(b"origin")
    if not is_loopback(_hostname(host)):
        return False
    if origin is None:
        return True
    text = origin.decode("latin-1")
    _, _, rest = text.partition("://")
    return bool(rest) and is_loopback(_hostname(rest.split("/", 1)[0]))


def _hostname(authority: str) -> str:
    """``host[:port]`` or ``[v6]:port`` to the host."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else ""
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


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
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
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
                ws="none",  # no gateway route speaks WebSocket
                ssl_certfile=tls[0],
                ssl_keyfile=tls[1],
                timeout_graceful_shutdown=2,
            )
        )
        # the command owns the signals (StopSignals): uvicorn would take them for the
        # serve's length, then raise again at exit those it caught
        self._server.capture_signals = contextlib.nullcontext
        self._task = asyncio.create_task(self._server.serve([self._sock]), name="gateway-http")
        async with asyncio.timeout(START_TIMEOUT_S):  # uvicorn says so only by a flag
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # its error, if it raised one
                    raise OSError(f"the HTTP server on {self.url} stopped as it started")
                await asyncio.sleep(0.005)

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
