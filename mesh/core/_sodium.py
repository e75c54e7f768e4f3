"""Zero-copy secretbox on any buffer, straight over libsodium.

PyNaCl's public ``SecretBox`` takes only ``bytes`` and, for the NaCl zero-padding API,
copies the message twice before and once after encryption: a 4 MiB tensor costs three
extra passes over memory. The envelope codec instead calls libsodium's
``crypto_secretbox_easy`` (the same XSalsa20-Poly1305 construction, byte for byte) through
PyNaCl's own cffi binding, reading from any buffer (a numpy array, a ZeroMQ frame) and
writing into a preallocated ``bytearray``. Nothing here picks nonces: callers pass them.
"""

from __future__ import annotations

from nacl._sodium import ffi, lib

from .wire import KEY_SIZE, MAC_SIZE, NONCE_SIZE

Buffer = bytes | bytearray | memoryview

_from_buffer = ffi.from_buffer
_seal = lib.crypto_secretbox_easy
_open = lib.crypto_secretbox_open_easy


def seal_into(out: bytearray, offset: int, plaintext: Buffer, nonce: bytes, key: bytes) -> None:
    """Write MAC and ciphertext of ``plaintext`` into ``out[offset:]``.

    ``out`` must have exactly ``MAC_SIZE + len(plaintext)`` bytes free from ``offset``.
    """
    source = memoryview(plaintext).cast("B")
    size = source.nbytes
    if len(out) - offset != size + MAC_SIZE:
        raise ValueError("output buffer has the wrong size")
    if len(nonce) != NONCE_SIZE or len(key) != KEY_SIZE:
        raise ValueError("nonce must be 24 bytes and key 32 bytes")
    if size == 0:
        source = memoryview(b"\0")  # cffi wants a non-empty buffer; libsodium reads 0 bytes
    result = _seal(_from_buffer(out) + offset, _from_buffer(source), size, nonce, key)
    if result != 0:  # pragma: no cover - libsodium's secretbox cannot fail on valid sizes
        raise RuntimeError("crypto_secretbox_easy failed")


def open_to_bytearray(boxed: Buffer, nonce: Buffer, key: bytes) -> bytearray | None:
    """Open a MAC-and-ciphertext buffer; return the plaintext, or None if it is not authentic."""
    source = memoryview(boxed).cast("B")
    size = source.nbytes
    if size < MAC_SIZE:
        return None
    plain = bytearray(size - MAC_SIZE)
    target = _from_buffer(plain) if plain else _from_buffer(bytearray(1))
    nonce_ptr = _from_buffer(nonce)
    if _open(target, _from_buffer(source), size, nonce_ptr, key) != 0:
        return None
    return plain
