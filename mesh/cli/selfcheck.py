"""``mesh selfcheck``: prove the sealed path works on this machine and say what it costs.

Runs in one process, with no sockets: two identities from the mesh directory complete a
handshake, exchange a request and a reply (with a binary attachment), and the check
confirms that a flipped bit, a replay and a frame forwarded to a third node are each
refused with the right error. Then it times seal+open against plain msgpack.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import msgpack

from ..core.codec import Blob, Message
from ..core.errors import AuthenticationFailed, ProtocolError, ReplayDetected
from ..core.handshake import Initiator, Responder
from ..core.session import Session, SessionTable
from ..core.wire import Kind
from ..runtime.keystore import MeshDirectory
from ..runtime.stamps import now_ms

SIZES = (64, 1024, 64 * 1024, 1024 * 1024)


def _pair(mesh: MeshDirectory, a: str, b: str) -> tuple[Session, Session, SessionTable]:
    trust = mesh.create().trust()
    caller, callee = mesh.identity(a), mesh.identity(b)
    caller_table, callee_table = SessionTable(), SessionTable()
    now = now_ms()
    initiator = Initiator(caller, trust, callee.require_certificate(), caller_table, now)
    callee_session, welcome = Responder(callee, trust, callee_table).receive(
        initiator.hello_frames(), now
    )
    return initiator.receive(welcome, now_ms()), callee_session, callee_table


def _expect(check: Callable[[], Any], error: type[ProtocolError]) -> bool:
    try:
        check()
    except error:
        return True
    except ProtocolError:
        return False
    return False


def _timing(caller: Session, callee: Session) -> list[dict[str, float]]:
    rows = []
    for size in SIZES:
        body = os.urandom(size)
        rounds = max(20, min(5000, 20_000_000 // (size + 4096)))
        now = now_ms()
        started = time.perf_counter()
        for i in range(rounds):
            callee.open(caller.seal([Message(Kind.REQUEST, i, name="echo", body=body)], now), now)
        sealed = (time.perf_counter() - started) / rounds
        started = time.perf_counter()
        for i in range(rounds):
            msgpack.unpackb(msgpack.packb([Kind.REQUEST, i, 0, "echo", 0, body, None]))
        plain = (time.perf_counter() - started) / rounds
        rows.append(
            {
                "size": size,
                "seal_open_us": sealed * 1e6,
                "seal_open_mb_s": size / sealed / 1e6,
                "msgpack_us": plain * 1e6,
                "msgpack_mb_s": size / plain / 1e6,
            }
        )
    return rows


def run_selfcheck(mesh: MeshDirectory) -> dict[str, Any]:
    """Run every check; return ``ok``, ``checks``, ``timing`` and printable ``lines``."""
    caller, callee, callee_table = _pair(mesh, "selfcheck-alice", "selfcheck-bob")
    now = now_ms()
    request = Message(
        Kind.REQUEST, 1, name="echo", body={"text": "hello", "blob": Blob(b"\x00" * 64)}
    )
    frames = caller.seal([request], now)
    checks: dict[str, bool] = {}
    _, opened = callee_table.open(frames, now)
    checks["request opens intact"] = opened.messages == [request]
    reply = callee.seal([Message(Kind.REPLY, 2, corr_id=1, body=opened.messages[0].body)], now)
    checks["reply opens intact"] = caller.open(reply, now).messages[0].body == request.body
    flipped = [bytearray(frames[0]), *frames[1:]]
    flipped[0][-1] ^= 0x01
    checks["flipped bit refused"] = _expect(
        lambda: callee_table.open(flipped, now), AuthenticationFailed
    )
    checks["replay refused"] = _expect(lambda: callee_table.open(frames, now), ReplayDetected)
    _, _stranger, stranger_table = _pair(mesh, "selfcheck-alice", "selfcheck-carol")
    checks["frame for bob refused by carol"] = _expect(
        lambda: stranger_table.open(caller.seal([request], now), now), ProtocolError
    )
    timing = _timing(caller, callee)
    lines = [f"mesh: {mesh.path}"]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {name}" for name, ok in checks.items()]
    lines.append(f"  {'body':>9} {'seal+open':>12} {'MB/s':>9} {'msgpack only':>13} {'MB/s':>9}")
    lines += [
        f"  {r['size']:>9} {r['seal_open_us']:>9.1f} us {r['seal_open_mb_s']:>9.1f} "
        f"{r['msgpack_us']:>10.1f} us {r['msgpack_mb_s']:>9.1f}"
        for r in timing
    ]
    ok = all(checks.values())
    lines.append("selfcheck passed" if ok else "selfcheck FAILED")
    return {"ok": ok, "checks": checks, "timing": timing, "lines": lines}
