"""Zero-copy secretbox on any buffer, straight over libsodium.

PyNaCl's public ``SecretBox`` takes only ``bytes`` and, for the NaCl zero-padding API,
copies the message twice before and once after encryption: a 4 MiB tensor costs three
extra passes over memory. The envelope codec instead calls libsodium's
``crypto_secretbox_easy`` (the same XSalsa20-Poly1305 construction, byte for byte) through
PyNaCl's own cffi binding, reading from any buffer (a numpy array, a ZeroMQ frame) and
writing into a preallocated ``bytearray``. Nothing here picks nonces: callers pass them.
"""

from __future__ import annotations

from typing import Any

from nacl._sodium import ffi, lib

from .wire import KEY_SIZE, MAC_SIZE, NONCE_SIZE

Buffer = bytes | bytearray | memoryview

_from_buffer = ffi.from_buffer
_seal = lib.crypto_secretbox_easy
_open = lib.crypto_secretbox_open_easy


def _source(out: bytearray, offset: int, plaintext: Buffer) -> tuple[memoryview, int]:
    """``plaintext`` as bytes to read, and its size, once ``out`` is checked to have room for
    exactly it and a MAC from ``offset``."""
    source = memoryview(plaintext).cast("B")
    size = source.nbytes
    if len(out) - offset != size + MAC_SIZE:
        raise ValueError("output buffer has the wrong size")
    if size == 0:
        source = memoryview(b"\0")  # cffi wants a non-empty buffer; libsodium reads 0 bytes
    return source, size


def seal_into(out: bytearray, offset: int, plaintext: Buffer, nonce: bytes, key: bytes) -> None:
    """Write MAC and ciphertext of ``plaintext`` into ``out[offset:]``.

    ``out`` must have exactly ``MAC_SIZE + len(plaintext)`` bytes free from ``offset``.
    """
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        raise ValueError("nonce must be 24 bytes and key 32 bytes")
    source, size = _source(out, offset, plaintext)
    result = _seal(_from_buffer(out) + offset, _from_buffer(source), size, nonce, key)
    if result != 0:  # pragma: no cover - libsodium's secretbox cannot fail on valid sizes
        raise RuntimeError("crypto_secretbox_easy failed")


def _for_opening(boxed: Buffer) -> tuple[memoryview, int, bytearray, Any] | None:
    """What opening ``boxed`` into a new buffer takes: it as bytes, its size, the plaintext's
    buffer and a pointer to it; None if it is too short to hold a MAC."""
    source = memoryview(boxed).cast("B")
    size = source.nbytes
    if size < MAC_SIZE:
        return None
    plain = bytearray(size - MAC_SIZE)
    return source, size, plain, _from_buffer(plain) if plain else _from_buffer(bytearray(1))


def open_to_bytearray(boxed: Buffer, nonce: Buffer, key: bytes) -> bytearray | None:
    """Open a MAC-and-ciphertext buffer; return the plaintext, or None if it is not authentic."""
    opening = _for_opening(boxed)
    if opening is None:
        return None
    source, size, plain, target = opening
    nonce_ptr = _from_buffer(nonce)
    if _open(target, _from_buffer(source), size, nonce_ptr, key) != 0:
        return None
    return plain


# --------------------------------------------------------------------------- in place
# A received attachment frame that is ours to change (a writable ZeroMQ frame) is opened
# where it lies: the plaintext is its first bytes. Allocating (and page-faulting) a fresh
# buffer per large frame costs as much as the cipher itself. libsodium allows the output
# to be the input. On failure the frame's content is undefined.


def open_in_place(boxed: memoryview, nonce: Buffer, key: bytes) -> memoryview | None:
    """XSalsa20-Poly1305 (MAC first) opened into ``boxed`` itself; a view of the plaintext."""
    size = boxed.nbytes
    if size < MAC_SIZE:
        return None
    target = _from_buffer(boxed)
    if _open(target, target, size, _from_buffer(nonce), key) != 0:
        return None
    return boxed[: size - MAC_SIZE]
