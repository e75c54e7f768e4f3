"""AES-256-GCM (cipher suite 2) on any buffer: through OpenSSL when the ``cryptography``
package is installed (the ``fast`` extra), through libsodium otherwise.

Both are the same construction, byte for byte: the combined form (ciphertext, then the
16-byte tag), a 12-byte IV, associated data authenticated and not encrypted. They differ in
speed: OpenSSL's code uses the CPU's wide AES and carry-less multiply instructions (VAES,
VPCLMULQDQ) and runs about three times libsodium's speed on large messages here, and its
cipher object holds the expanded key, which saves a key schedule per frame. So a session
prepares its keys once (:func:`prepare`) and passes the :class:`GcmKey` on each call.

Suite 2 is offered only where the CPU has AES instructions (``available``), whichever
library runs it, so the default install (PyNaCl) and the fast one offer the same suites.
Nothing here picks IVs: callers pass them.
"""

from __future__ import annotations

from typing import Any

from nacl._sodium import ffi, lib

from .wire import KEY_SIZE, MAC_SIZE

Buffer = bytes | bytearray | memoryview
IV_SIZE = 12

_from_buffer = ffi.from_buffer
_NULL = ffi.NULL
_sodium_seal = getattr(lib, "crypto_aead_aes256gcm_encrypt", None)
_sodium_open = getattr(lib, "crypto_aead_aes256gcm_decrypt", None)


def _openssl_cipher() -> Any:
    """OpenSSL's AES-GCM class from ``cryptography``, if installed and new enough to write
    into a caller's buffer (``encrypt_into``); None otherwise."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return None
    return AESGCM if hasattr(AESGCM, "decrypt_into") else None


def available() -> bool:
    """Whether suite 2 runs here: the CPU has AES instructions (libsodium's check, which
    PyNaCl binds from 1.6 on)."""
    if _sodium_seal is None or _sodium_open is None:
        return False
    lib.sodium_init()  # idempotent; picks the CPU's implementations
    return bool(lib.crypto_aead_aes256gcm_is_available())


class GcmKey:
    """A 32-byte key and what the backend prepared from it; one per session key."""

    __slots__ = ("cipher", "key")

    def __init__(self, key: bytes, cipher: Any = None) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("key must be 32 bytes")
        self.key = key
        self.cipher = cipher  # OpenSSL's cipher object; None for libsodium

    def __repr__(self) -> str:
        return "GcmKey(...)"  # never the key


def _checked(out: bytearray, offset: int, plaintext: Buffer, iv: Buffer) -> memoryview:
    """``plaintext`` as bytes, once ``out`` is checked to have room for exactly it and a tag
    from ``offset`` and the IV has its size."""
    if len(iv) != IV_SIZE:
        raise ValueError("iv must be 12 bytes")
    source = memoryview(plaintext).cast("B")
    if offset < 0 or len(out) - offset != source.nbytes + MAC_SIZE:
        raise ValueError("output buffer has the wrong size")
    return source


class Backend:
    """One library's AES-256-GCM: sealing into a caller's buffer, opening into one."""

    name = ""

    def prepare(self, key: bytes) -> GcmKey:
        return GcmKey(key)

    def seal_into(
        self, out: bytearray, offset: int, plaintext: Buffer, iv: Buffer, key: GcmKey, ad: Buffer
    ) -> None:
        raise NotImplementedError

    def open_into(
        self, target: Any, boxed: memoryview, iv: Buffer, key: GcmKey, ad: Buffer
    ) -> bool:
        """Whether ``boxed`` is authentic (with ``ad``); its plaintext written to ``target``."""
        raise NotImplementedError

    def open_to_bytearray(
        self, boxed: Buffer, iv: Buffer, key: GcmKey, ad: Buffer
    ) -> bytearray | None:
        """Open a ciphertext-and-tag buffer; the plaintext, or None if it (or ``ad``) is not
        authentic."""
        source = memoryview(boxed).cast("B")
        if source.nbytes < MAC_SIZE or len(iv) != IV_SIZE:
            return None
        plain = bytearray(source.nbytes - MAC_SIZE)
        return plain if self.open_into(plain, source, iv, key, ad) else None

    def open_in_place(
        self, boxed: memoryview, iv: Buffer, key: GcmKey, ad: Buffer
    ) -> memoryview | None:
        """Open ``boxed`` (writable) where it lies; a view of the plaintext, its first bytes.
        On failure its content is undefined."""
        if boxed.readonly:
            raise ValueError("opening in place needs a writable buffer")
        size = boxed.nbytes
        if size < MAC_SIZE or len(iv) != IV_SIZE:
            return None
        plain = boxed[: size - MAC_SIZE]
        return plain if self.open_into(plain, boxed, iv, key, ad) else None


class LibsodiumGcm(Backend):
    """libsodium's AES-256-GCM (AES-NI), through PyNaCl's cffi binding."""

    name = "libsodium"

    def seal_into(
        self, out: bytearray, offset: int, plaintext: Buffer, iv: Buffer, key: GcmKey, ad: Buffer
    ) -> None:
        source = _checked(out, offset, plaintext, iv)
        size = source.nbytes
        extra, extra_size = _ad(ad)
        result = _sodium_seal(  # type: ignore[misc]
            _from_buffer(out) + offset,
            _NULL,
            _from_buffer(source) if size else _from_buffer(b"\0"),
            size,
            extra,
            extra_size,
            _NULL,
            _from_buffer(iv),
            key.key,
        )
        if result != 0:  # pragma: no cover - fails only where the CPU lacks AES (not offered)
            raise RuntimeError("crypto_aead_aes256gcm_encrypt failed")

    def open_into(
        self, target: Any, boxed: memoryview, iv: Buffer, key: GcmKey, ad: Buffer
    ) -> bool:
        extra, extra_size = _ad(ad)
        source = _from_buffer(boxed)
        result = _sodium_open(  # type: ignore[misc]
            _from_buffer(target) if len(target) else _from_buffer(bytearray(1)),
            _NULL,
            _NULL,
            source,
            boxed.nbytes,
            extra,
            extra_size,
            _from_buffer(iv),
            key.key,
        )
        return result == 0


class OpenSslGcm(Backend):
    """OpenSSL's AES-256-GCM, through ``cryptography``'s ``AESGCM`` (``encrypt_into``)."""

    name = "openssl"

    def __init__(self, cipher_class: Any) -> None:
        self._cipher_class = cipher_class
        from cryptography.exceptions import InvalidTag

        self._invalid = InvalidTag

    def prepare(self, key: bytes) -> GcmKey:
        return GcmKey(key, self._cipher_class(key))

    def seal_into(
        self, out: bytearray, offset: int, plaintext: Buffer, iv: Buffer, key: GcmKey, ad: Buffer
    ) -> None:
        source = _checked(out, offset, plaintext, iv)
        cipher = key.cipher or self._cipher_class(key.key)
        cipher.encrypt_into(bytes(iv), source, ad or None, memoryview(out)[offset:])

    def open_into(
        self, target: Any, boxed: memoryview, iv: Buffer, key: GcmKey, ad: Buffer
    ) -> bool:
        # target may be boxed itself (opening in place): OpenSSL reads each block before it
        # writes it, and the tag, past the plaintext, is never written. Should a release of
        # cryptography refuse overlapping buffers, open through a copy instead.
        cipher = key.cipher or self._cipher_class(key.key)
        try:
            try:
                cipher.decrypt_into(bytes(iv), boxed, ad or None, target)
            except (ValueError, TypeError):
                if not _overlap(target, boxed):
                    raise
                memoryview(target)[:] = cipher.decrypt(bytes(iv), bytes(boxed), ad or None)
        except self._invalid:
            # OpenSSL has written what it decrypted before the tag failed (libsodium writes
            # nothing): leave no unauthenticated plaintext behind
            memoryview(target).cast("B")[:] = bytes(len(target))
            return False
        return True


def _overlap(target: Any, boxed: memoryview) -> bool:
    """Whether ``target`` starts where ``boxed`` does (opening in place)."""
    if not len(target) or not boxed.nbytes:
        return False
    start = ffi.cast("char *", _from_buffer(target))
    return bool(start == ffi.cast("char *", _from_buffer(boxed)))


def _ad(ad: Buffer) -> tuple[object, int]:
    extra = memoryview(ad).cast("B")
    return (_from_buffer(extra), extra.nbytes) if extra.nbytes else (_NULL, 0)


def backends() -> list[Backend]:
    """Every backend this process can run, the fastest first."""
    found: list[Backend] = []
    openssl = _openssl_cipher()
    if openssl is not None:
        found.append(OpenSslGcm(openssl))
    found.append(LibsodiumGcm())
    return found


BACKEND = backends()[0]
prepare = BACKEND.prepare  # a session prepares each of its keys once
seal_into = BACKEND.seal_into
open_to_bytearray = BACKEND.open_to_bytearray
open_in_place = BACKEND.open_in_place
