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


# --------------------------------------------------------------------------- AES-256-GCM
# libsodium's AES-256-GCM, combined form (the ciphertext, then the 16-byte tag), into a
# caller's buffer. It runs only where the CPU has AES instructions, and PyNaCl binds it from
# 1.6 on: elsewhere it is not offered (``aes256gcm_available``). ``ad`` is authenticated,
# not encrypted.

GCM_IV_SIZE = 12
_gcm_seal = getattr(lib, "crypto_aead_aes256gcm_encrypt", None)
_gcm_open = getattr(lib, "crypto_aead_aes256gcm_decrypt", None)
_NULL = ffi.NULL


def aes256gcm_available() -> bool:
    """Whether AES-256-GCM runs here: bound by PyNaCl, and the CPU has AES instructions."""
    if _gcm_seal is None or _gcm_open is None:
        return False
    lib.sodium_init()  # idempotent; picks the CPU's implementations
    return bool(lib.crypto_aead_aes256gcm_is_available())


def _ad(ad: Buffer) -> tuple[object, int]:
    extra = memoryview(ad).cast("B")
    return (_from_buffer(extra), extra.nbytes) if extra.nbytes else (_NULL, 0)


def gcm_seal_into(
    out: bytearray, offset: int, plaintext: Buffer, iv: Buffer, key: bytes, ad: Buffer
) -> None:
    """Write the ciphertext of ``plaintext`` then its tag into ``out[offset:]``, ``ad``
    authenticated with it."""
    if len(iv) != GCM_IV_SIZE or len(key) != KEY_SIZE:
        raise ValueError("iv must be 12 bytes and key 32 bytes")
    source, size = _source(out, offset, plaintext)
    extra, extra_size = _ad(ad)
    result = _gcm_seal(  # type: ignore[misc]
        _from_buffer(out) + offset,
        _NULL,
        _from_buffer(source),
        size,
        extra,
        extra_size,
        _NULL,
        _from_buffer(iv),
        key,
    )
    if result != 0:  # pragma: no cover - fails only where the CPU lacks AES (not offered)
        raise RuntimeError("crypto_aead_aes256gcm_encrypt failed")


def gcm_open_to_bytearray(boxed: Buffer, iv: Buffer, key: bytes, ad: Buffer) -> bytearray | None:
    """Open a ciphertext-and-tag buffer; the plaintext, or None if it (or ``ad``) is not
    authentic."""
    opening = _for_opening(boxed)
    if opening is None:
        return None
    source, size, plain, target = opening
    extra, extra_size = _ad(ad)
    result = _gcm_open(  # type: ignore[misc]
        target, _NULL, _NULL, _from_buffer(source), size, extra, extra_size, _from_buffer(iv), key
    )
    return plain if result == 0 else None


# --------------------------------------------------------------------------- in place
# A received attachment frame that is ours to change (a writable ZeroMQ frame) is opened
# where it lies: the plaintext is its first bytes. Allocating (and page-faulting) a fresh
# buffer per large frame costs as much as the cipher itself. libsodium allows the output
# to be the input for both constructions. On failure the frame's content is undefined.


def open_in_place(boxed: memoryview, nonce: Buffer, key: bytes) -> memoryview | None:
    """XSalsa20-Poly1305 (MAC first) opened into ``boxed`` itself; a view of the plaintext."""
    size = boxed.nbytes
    if size < MAC_SIZE:
        return None
    target = _from_buffer(boxed)
    if _open(target, target, size, _from_buffer(nonce), key) != 0:
        return None
    return boxed[: size - MAC_SIZE]


def gcm_open_in_place(boxed: memoryview, iv: Buffer, key: bytes, ad: Buffer) -> memoryview | None:
    """AES-256-GCM (tag last) opened into ``boxed`` itself; a view of the plaintext."""
    size = boxed.nbytes
    if size < MAC_SIZE or _gcm_open is None:
        return None
    target = _from_buffer(boxed)
    extra, extra_size = _ad(ad)
    if _gcm_open(target, _NULL, _NULL, target, size, extra, extra_size, _from_buffer(iv), key):
        return None
    return boxed[: size - MAC_SIZE]
