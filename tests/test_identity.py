"""Identities, certificates and the trust check."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import (
    Authority,
    Certificate,
    CertificateExpired,
    Identity,
    InvalidArgument,
    InvalidName,
    MalformedEnvelope,
    Unauthorized,
)
from mesh.core.identity import node_id_for
from tests.conftest import NOT_BEFORE, NOW_MS, certified


def test_certificate_round_trip_and_verify(authority, alice, trust):
    cert = alice.require_certificate()
    again = Certificate.from_bytes(cert.to_bytes())
    assert again == cert
    assert trust.verify(again, NOW_MS) is again
    assert cert.node_id == alice.node_id == node_id_for(alice.box_public, alice.sign_public)
    assert cert.capabilities == ("echo",)


def test_node_id_changes_with_either_key():
    a, b = Identity.generate("x"), Identity.generate("x")
    assert a.node_id != b.node_id
    assert node_id_for(a.box_public, b.sign_public) not in {a.node_id, b.node_id}


def test_another_authority_is_unauthorized(alice):
    with pytest.raises(Unauthorized):
        Authority.generate().trust().verify(alice.require_certificate(), NOW_MS)


def test_forged_signature_is_unauthorized(authority, alice, trust):
    cert = alice.require_certificate()
    forged = Certificate(
        cert.name,
        cert.box_public,
        cert.sign_public,
        cert.capabilities,
        cert.not_before,
        cert.not_after,
        cert.authority_id,
        cert.body,
        bytes(64),
    )
    with pytest.raises(Unauthorized):
        trust.verify(forged, NOW_MS)


def test_validity_period_with_skew(authority, trust):
    cert = authority.issue("short", bytes(32), bytes(32), not_before=1000, lifetime_s=100)
    trust.verify(cert, 1_050_000)
    trust.verify(cert, (1100 + 59) * 1000)  # within the 60 s skew allowance
    for when in (900_000, 1_200_000):
        with pytest.raises(CertificateExpired):
            trust.verify(cert, when)


def test_every_bit_of_a_certificate_matters(alice, trust):
    data = alice.require_certificate().to_bytes()
    for index in range(len(data)):
        mutated = bytearray(data)
        mutated[index] ^= 0x04
        with pytest.raises((MalformedEnvelope, Unauthorized)):
            trust.verify(Certificate.from_bytes(bytes(mutated)), NOW_MS)


@given(st.binary(max_size=300))
def test_random_certificate_bytes_are_malformed(data):
    with pytest.raises(MalformedEnvelope):
        Certificate.from_bytes(data)


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "x" * 65, "sp ace", "nul\0", "é"])
def test_invalid_names(name):
    with pytest.raises(InvalidName):
        Identity.generate(name)


def test_issue_validates_its_arguments(authority):
    with pytest.raises(InvalidArgument):
        authority.issue("a", bytes(31), bytes(32), not_before=NOT_BEFORE)
    with pytest.raises(InvalidArgument):
        authority.issue("a", bytes(32), bytes(32), not_before=NOT_BEFORE, capabilities=[""])
    with pytest.raises(InvalidArgument):
        authority.issue("a", bytes(32), bytes(32), not_before=NOT_BEFORE, lifetime_s=0)


def test_certificate_must_match_the_identity(authority, alice, bob):
    with pytest.raises(InvalidArgument):
        alice.with_certificate(bob.require_certificate())
    with pytest.raises(InvalidArgument):
        Identity.generate("nocert").require_certificate()


@pytest.mark.parametrize(("position", "value"), [(0, 1.0), (0, True), (5, True), (6, 1.5e9)])
def test_certificate_integers_are_never_floats_or_booleans(authority, position, value):
    """protocol.md 2: the protocol's integer fields are msgpack integers."""
    cert = certified(authority, "typed").certificate
    body, signature = msgpack.unpackb(cert.to_bytes(), raw=False)
    fields = msgpack.unpackb(body, raw=False)
    fields[position] = value
    raw = msgpack.packb([msgpack.packb(fields, use_bin_type=True), signature], use_bin_type=True)
    with pytest.raises(MalformedEnvelope):
        Certificate.from_bytes(raw)
