"""Identities, the mesh authority, certificates and the trust check.

An *identity* is two keypairs: Curve25519 for boxes (the handshake) and Ed25519 for
signatures (the handshake and topic messages). Its *node id* is a hash of both public keys,
so an id can never be claimed with other keys.

The *authority* is one Ed25519 key per mesh. It signs certificates binding a name, the two
public keys, capabilities and a validity period. Peers and the discovery node accept only
certificates that verify against the authority they were configured with, which is why a
lying discovery node cannot put itself between two peers: it cannot forge a certificate.

Certificates travel as ``msgpack [body: bin, signature: bin]`` with the signed body kept as
bytes, so verification never depends on re-encoding a structure the same way twice.

Specified in protocol.md 5 (certificates).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from .codec import unpack_bounded
from .errors import (
    CertificateExpired,
    InvalidArgument,
    InvalidName,
    MalformedEnvelope,
    Unauthorized,
)
from .wire import (
    DEFAULT_MAX_SKEW_MS,
    KEY_SIZE,
    MAX_CAPABILITIES,
    MAX_CAPABILITY_LEN,
    MAX_CERT_SIZE,
    NODE_ID_SIZE,
    SIGNATURE_SIZE,
)

CERT_VERSION = 1
CERT_CONTEXT = b"agent-mesh certificate v1\x00"
DEFAULT_CERT_LIFETIME_S = 365 * 24 * 3600
_NAME_RULE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid node name, else raise :class:`InvalidName`."""
    if not isinstance(name, str) or not _NAME_RULE.fullmatch(name) or name in {".", ".."}:
        raise InvalidName(
            f"invalid node name {name!r}: use 1 to 64 characters from A-Z a-z 0-9 . _ -"
        )
    return name


def node_id_for(box_public: bytes, sign_public: bytes) -> bytes:
    """The 16-byte node id: BLAKE2b of both public keys, personalised for agent-mesh."""
    return hashlib.blake2b(
        box_public + sign_public, digest_size=NODE_ID_SIZE, person=b"agent-mesh-node"
    ).digest()


def authority_id_for(verify_key: bytes) -> bytes:
    """The 16-byte authority id that every certificate names."""
    return hashlib.blake2b(verify_key, digest_size=NODE_ID_SIZE, person=b"agent-mesh-auth").digest()


@dataclass(frozen=True)
class Certificate:
    """A name and two public keys, signed by a mesh authority. Immutable."""

    name: str
    box_public: bytes
    sign_public: bytes
    capabilities: tuple[str, ...]
    not_before: int
    not_after: int
    authority_id: bytes
    body: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @functools.cached_property
    def node_id(self) -> bytes:
        return node_id_for(self.box_public, self.sign_public)

    def to_bytes(self) -> bytes:
        """The wire form: ``msgpack [body, signature]``."""
        return msgpack.packb([self.body, self.signature], use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> Certificate:
        """Parse (not verify) a certificate. Raises only :class:`MalformedEnvelope`."""
        if len(data) > MAX_CERT_SIZE:
            raise MalformedEnvelope("certificate too large", reason="cert_malformed")
        outer = _unpack_bounded(data)
        if not (isinstance(outer, list) and len(outer) == 2):
            raise MalformedEnvelope("certificate is not [body, signature]", reason="cert_malformed")
        body, signature = outer
        if not isinstance(body, bytes) or not isinstance(signature, bytes):
            raise MalformedEnvelope("certificate parts must be binary", reason="cert_malformed")
        if len(signature) != SIGNATURE_SIZE:
            raise MalformedEnvelope("certificate signature size", reason="cert_malformed")
        return cls._from_body(body, signature)

    @classmethod
    def _from_body(cls, body: bytes, signature: bytes) -> Certificate:
        fields = _unpack_bounded(body)
        if not (
            isinstance(fields, list)
            and len(fields) == 8
            and type(fields[0]) is int  # integers are never floats or booleans (section 2)
            and fields[0] == CERT_VERSION
        ):
            raise MalformedEnvelope("unknown certificate layout", reason="cert_malformed")
        _, name, box_public, sign_public, caps, not_before, not_after, authority = fields
        _require_cert(isinstance(name, str) and _NAME_RULE.fullmatch(name) is not None, "name")
        for key in (box_public, sign_public):
            _require_cert(isinstance(key, bytes) and len(key) == KEY_SIZE, "public key")
        _require_cert(isinstance(authority, bytes) and len(authority) == NODE_ID_SIZE, "authority")
        _require_cert(type(not_before) is int and type(not_after) is int, "validity")
        _require_cert(_valid_capabilities(caps), "capabilities")
        return cls(
            name,
            box_public,
            sign_public,
            tuple(caps),
            not_before,
            not_after,
            authority,
            body,
            signature,
        )


def _valid_capabilities(caps: Any) -> bool:
    return (
        isinstance(caps, list)
        and len(caps) <= MAX_CAPABILITIES
        and all(isinstance(c, str) and 0 < len(c) <= MAX_CAPABILITY_LEN for c in caps)
    )


def _require_cert(ok: bool, what: str) -> None:
    if not ok:
        raise MalformedEnvelope(f"certificate field {what} is invalid", reason="cert_malformed")


def _unpack_bounded(data: bytes) -> Any:
    return unpack_bounded(
        data,
        "certificate",
        reason="cert_malformed",
        max_array=MAX_CAPABILITIES + 8,
        max_str=MAX_CERT_SIZE,
        max_bin=MAX_CERT_SIZE,
    )


@dataclass(frozen=True)
class Identity:
    """A node's secret keys and (once issued) its certificate."""

    name: str
    box_key: PrivateKey = field(repr=False)
    signing_key: SigningKey = field(repr=False)
    certificate: Certificate | None = None

    @classmethod
    def generate(cls, name: str) -> Identity:
        """Fresh random keys for ``name``; the certificate comes from an authority."""
        return cls(validate_name(name), PrivateKey.generate(), SigningKey.generate())

    @classmethod
    def from_secrets(
        cls, name: str, box_secret: bytes, sign_seed: bytes, certificate: Certificate | None = None
    ) -> Identity:
        """Rebuild an identity from its 32-byte Curve25519 secret and Ed25519 seed."""
        if len(box_secret) != KEY_SIZE or len(sign_seed) != KEY_SIZE:
            raise InvalidArgument("identity secrets must be exactly 32 bytes each")
        identity = cls(validate_name(name), PrivateKey(box_secret), SigningKey(sign_seed))
        return identity.with_certificate(certificate) if certificate else identity

    @property
    def box_public(self) -> bytes:
        return bytes(self.box_key.public_key)

    @property
    def sign_public(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> bytes:
        return node_id_for(self.box_public, self.sign_public)

    def with_certificate(self, certificate: Certificate) -> Identity:
        """This identity with ``certificate``, which must be for these very keys."""
        if (certificate.box_public, certificate.sign_public) != (self.box_public, self.sign_public):
            raise InvalidArgument(f"certificate for {certificate.name!r} has other public keys")
        if certificate.name != self.name:
            raise InvalidArgument(f"certificate is for {certificate.name!r}, not {self.name!r}")
        return Identity(self.name, self.box_key, self.signing_key, certificate)

    def require_certificate(self) -> Certificate:
        if self.certificate is None:
            raise InvalidArgument(f"identity {self.name!r} has no certificate yet")
        return self.certificate


@dataclass(frozen=True)
class Authority:
    """The mesh authority: the one key that vouches for identities."""

    signing_key: SigningKey = field(repr=False)

    @classmethod
    def generate(cls) -> Authority:
        return cls(SigningKey.generate())

    @property
    def verify_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def authority_id(self) -> bytes:
        return authority_id_for(self.verify_key)

    def trust(self, max_skew_ms: int = DEFAULT_MAX_SKEW_MS) -> Trust:
        return Trust(self.verify_key, max_skew_ms)

    def issue(
        self,
        name: str,
        box_public: bytes,
        sign_public: bytes,
        *,
        capabilities: tuple[str, ...] | list[str] = (),
        not_before: int,
        lifetime_s: int = DEFAULT_CERT_LIFETIME_S,
    ) -> Certificate:
        """Sign a certificate for ``name`` and its public keys, valid from ``not_before``."""
        validate_name(name)
        caps = list(capabilities)
        if not _valid_capabilities(caps):
            raise InvalidArgument(
                f"capabilities must be at most {MAX_CAPABILITIES} non-empty strings of at most "
                f"{MAX_CAPABILITY_LEN} characters"
            )
        if len(box_public) != KEY_SIZE or len(sign_public) != KEY_SIZE:
            raise InvalidArgument("public keys must be exactly 32 bytes each")
        if lifetime_s <= 0:
            raise InvalidArgument("certificate lifetime must be positive")
        body = msgpack.packb(
            [
                CERT_VERSION,
                name,
                box_public,
                sign_public,
                caps,
                not_before,
                not_before + lifetime_s,
                self.authority_id,
            ],
            use_bin_type=True,
        )
        signature = self.signing_key.sign(CERT_CONTEXT + body).signature
        return Certificate._from_body(body, signature)

    def issue_for(self, identity: Identity, *, not_before: int, **options: Any) -> Identity:
        """Certify ``identity``'s own keys and return it with the certificate attached."""
        cert = self.issue(
            identity.name,
            identity.box_public,
            identity.sign_public,
            not_before=not_before,
            **options,
        )
        return identity.with_certificate(cert)


@dataclass(frozen=True)
class Trust:
    """What a node believes: one authority's public key and how much clock skew to allow."""

    authority_key: bytes
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS

    @property
    def authority_id(self) -> bytes:
        return authority_id_for(self.authority_key)

    def verify(self, certificate: Certificate, now_ms: int) -> Certificate:
        """Return ``certificate`` if this authority signed it and it is valid at ``now_ms``.

        Raises :class:`Unauthorized` for another authority or a bad signature and
        :class:`CertificateExpired` outside the validity period (widened by the skew).
        """
        if certificate.authority_id != self.authority_id:
            raise Unauthorized(f"certificate of {certificate.name!r} is from another authority")
        try:
            VerifyKey(self.authority_key).verify(
                CERT_CONTEXT + certificate.body, certificate.signature
            )
        except BadSignatureError as exc:
            raise Unauthorized(f"certificate of {certificate.name!r} has a bad signature") from exc
        skew_s = self.max_skew_ms // 1000
        now_s = now_ms // 1000
        if not certificate.not_before - skew_s <= now_s <= certificate.not_after + skew_s:
            raise CertificateExpired(
                f"certificate of {certificate.name!r} is valid from {certificate.not_before} "
                f"to {certificate.not_after}, not at {now_s}"
            )
        return certificate
