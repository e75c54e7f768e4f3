"""A second client, written from protocol.md alone: no import from ``mesh``.

pyzmq, PyNaCl and msgpack, the way an implementer in another language would use their own
ZeroMQ, NaCl and msgpack libraries. It reads its identity and the authority's key from the
key files of section 17, asks a node for its certificate (4.1), handshakes (6), makes a
request and reads a stream with reader credit (7, 8.1, 11.2). tests/test_thirdparty_client.py
runs it against a live node: when the spec and the node drift apart, it fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
from nacl.bindings import crypto_box_beforenm, crypto_secretbox, crypto_secretbox_open
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

VERSION = 1
HELLO, WELCOME, SEALED, REJECT, CERT_REQUEST, CERTIFICATE = 1, 2, 3, 5, 6, 7  # section 4
REQUEST, REPLY, ERROR, STREAM, STREAM_END, CREDIT, PING, PONG = 1, 2, 3, 5, 6, 8, 9, 10  # 7.6
WINDOW = (1024, 64 * 1024 * 1024)


class ProtocolBroken(AssertionError):
    """What the node sent is not what protocol.md says it sends."""


def _blake2b(data: bytes, size: int, person: bytes = b"", key: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=size, person=person, key=key).digest()


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _record(path: Path, kind: str) -> dict[str, Any]:
    """A key file (section 17)."""
    data = json.loads(path.read_text())
    if data.get("kind") != kind or data.get("version") != 1:
        raise ProtocolBroken(f"{path} is not a version 1 {kind!r} file")
    return data


class Certificate:
    """Section 5, read and verified against the authority."""

    def __init__(self, raw: bytes, authority_key: bytes) -> None:
        body, signature = msgpack.unpackb(raw, raw=False)
        VerifyKey(authority_key).verify(b"agent-mesh certificate v1\x00" + body, signature)
        fields = msgpack.unpackb(body, raw=False)
        version, self.name, self.box_public, self.sign_public, _, not_before, not_after, aid = (
            fields
        )
        if version != 1 or aid != _blake2b(authority_key, 16, b"agent-mesh-auth"):
            raise ProtocolBroken("certificate of another version or authority")
        if not not_before - 60 <= time.time() <= not_after + 60:
            raise ProtocolBroken("certificate not valid now")
        self.raw = raw
        self.node_id = _blake2b(self.box_public + self.sign_public, 16, b"agent-mesh-node")


class Client:
    """One connection to one node, one session, requests one at a time."""

    def __init__(self, home: Path, name: str, endpoint: str) -> None:
        self.authority_key = bytes.fromhex(
            _record(home / "authority.pub", "agent-mesh authority public key")["verify_key"]
        )
        mine = _record(home / "identities" / f"{name}.key", "agent-mesh identity")
        self.box_secret = bytes.fromhex(mine["box_secret"])
        self.signing = SigningKey(bytes.fromhex(mine["sign_seed"]))
        self.certificate = bytes.fromhex(mine["certificate"])
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, 10_000)
        self.socket.connect(endpoint)
        self.seq = 0
        self.msg_id = int.from_bytes(os.urandom(4), "big")

    def close(self) -> None:
        self.socket.close()

    def _recv(self) -> list[bytes]:
        try:
            return self.socket.recv_multipart()
        except zmq.Again as exc:
            raise ProtocolBroken("the node did not answer within 10 s") from exc

    # ---------------------------------------------------------------- 4.1 and 6

    def fetch_certificate(self) -> Certificate:
        self.socket.send(bytes([VERSION, CERT_REQUEST]))
        (answer,) = self._recv()
        if answer[:2] != bytes([VERSION, CERTIFICATE]):
            raise ProtocolBroken(f"expected CERTIFICATE, got {answer[:2].hex()}")
        self.peer = Certificate(answer[2:], self.authority_key)
        return self.peer

    def handshake(self) -> None:
        i_secret = PrivateKey.generate()
        self.recv_id = struct.pack(">II", int.from_bytes(os.urandom(4), "big") | 1, 1)
        clear = bytes([VERSION, HELLO, 1]) + bytes(i_secret.public_key) + self.peer.node_id
        fields = _pack([self.certificate, _now_ms(), self.recv_id, *WINDOW])
        signature = self.signing.sign(b"agent-mesh hello v1\x00" + clear + fields).signature
        nonce = os.urandom(24)
        boxed = Box(i_secret, PublicKey(self.peer.box_public)).encrypt(
            _pack([fields, signature]), nonce
        )
        hello = clear + nonce + boxed.ciphertext
        self.socket.send(hello)
        (welcome,) = self._recv()
        if welcome[:2] == bytes([VERSION, REJECT]):
            raise ProtocolBroken(f"REJECT code {welcome[2]}")
        if welcome[:2] != bytes([VERSION, WELCOME]) or welcome[34:42] != self.recv_id:
            raise ProtocolBroken("not a WELCOME for this HELLO")
        r_public = welcome[2:34]
        payload = Box(i_secret, PublicKey(r_public)).decrypt(welcome[66:], welcome[42:66])
        encoded, signature = msgpack.unpackb(payload, raw=False)
        peer_cert, _, self.send_id, *_ = msgpack.unpackb(encoded, raw=False)
        if Certificate(peer_cert, self.authority_key).node_id != self.peer.node_id:
            raise ProtocolBroken("another node answered")
        signed = b"agent-mesh welcome v1\x00" + _blake2b(hello, 32) + welcome[:42] + encoded
        VerifyKey(self.peer.sign_public).verify(signed, signature)
        shared = crypto_box_beforenm(r_public, bytes(i_secret))
        transcript = _blake2b(hello + welcome, 32)
        self.send_key = _blake2b(transcript, 32, b"agent-mesh i2r 1", shared)
        self.recv_key = _blake2b(transcript, 32, b"agent-mesh r2i 1", shared)

    # ---------------------------------------------------------------- 7.1

    def _seal(self, rows: list[list[Any]]) -> None:
        header = bytes([VERSION, SEALED]) + self.send_id
        inner = header + struct.pack(">QQIQB", self.seq, _now_ms(), 0, 0, 0) + _pack(rows)
        nonce = os.urandom(24)
        self.socket.send(header + nonce + crypto_secretbox(inner, nonce, self.send_key))
        self.seq += 1

    def _open(self) -> tuple[list[list[Any]], int]:
        """The messages of the next SEALED message, and its size (what credit charges)."""
        frames = self._recv()
        first = frames[0]
        if first[:2] != bytes([VERSION, SEALED]) or first[2:10] != self.recv_id:
            raise ProtocolBroken("not a SEALED frame for this session")
        inner = crypto_secretbox_open(first[34:], first[10:34], self.recv_key)
        if inner[:10] != first[:10]:
            raise ProtocolBroken("the clear header differs from its sealed copy")
        count = inner[38]
        size = sum(len(frame) for frame in frames)
        return msgpack.unpackb(inner[39 + 24 * count :], raw=False), size

    # ---------------------------------------------------------------- 8.1 and 11.2

    def request(self, method: str, body: Any) -> Any:
        self.msg_id += 1
        self._seal([[REQUEST, self.msg_id, 0, method, 0, body, None]])
        while True:
            rows, _ = self._open()
            for kind, _, corr, _, _, answer, _ in rows:
                if corr != self.msg_id:
                    continue
                if kind == ERROR:
                    raise ProtocolBroken(f"ERROR {answer}")
                if kind == REPLY:
                    return answer

    def stream(self, method: str, body: Any, window: int = 2) -> list[Any]:
        """Read a streamed reply under a window of ``window`` chunks (11.2). Once the first
        window is in, nothing is granted until a PING's PONG has come back: a callee keeping
        to the window has sent nothing more meanwhile (its frames arrive in order). Then
        every chunk read is granted back."""
        self.msg_id += 1
        stream_id = self.msg_id
        self._seal([[REQUEST, stream_id, 0, method, 0, body, {"window": [window, 1 << 20]}]])
        chunks: list[Any] = []
        held, held_bytes, checked = 0, 0, False
        while True:
            rows, size = self._open()
            for kind, _, corr, _, _, answer, _ in rows:
                if corr != stream_id:
                    continue
                if kind == STREAM_END:
                    return chunks
                if kind == ERROR:
                    raise ProtocolBroken(f"ERROR {answer}")
                if kind == STREAM:
                    if held == window and not checked:
                        raise ProtocolBroken("the callee sent past the reader's window")
                    chunks.append(answer)
                    held, held_bytes = held + 1, held_bytes + size
            if held == window and not checked:
                self._wait_for_pong(stream_id)
                checked = True
            if checked and held:
                self.msg_id += 1  # the chunks are read: grant them back
                grant = [held, held_bytes]
                self._seal([[CREDIT, self.msg_id, stream_id, "", 0, grant, None]])
                held, held_bytes = 0, 0

    def _wait_for_pong(self, stream_id: int) -> None:
        self.msg_id += 1
        ping = self.msg_id
        self._seal([[PING, ping, 0, "", 0, None, None]])
        while True:
            rows, _ = self._open()
            for kind, _, corr, _, _, _, _ in rows:
                if kind == STREAM and corr == stream_id:
                    raise ProtocolBroken("the callee sent past the reader's window")
                if kind == PONG and corr == ping:
                    return
