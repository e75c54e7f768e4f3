"""agent-mesh: a brokerless, peer-to-peer messaging mesh for LLM agents.

This module re-exports the public names; it defines nothing itself.
"""

from .codec import Blob, Message
from .errors import (
    AuthenticationFailed,
    CertificateExpired,
    ClockSkew,
    EnvelopeTooLarge,
    HandshakeFailed,
    HandshakeRejected,
    IdentityError,
    InsecureKeyFile,
    InvalidArgument,
    InvalidBody,
    InvalidName,
    KeyFileError,
    LimitExceeded,
    MalformedEnvelope,
    MeshError,
    ProtocolError,
    ReplayDetected,
    SessionExpired,
    Unauthorized,
    UnknownSession,
    UnsupportedAttachment,
    UnsupportedVersion,
)
from .handshake import Initiator, Responder
from .identity import Authority, Certificate, Identity, Trust
from .keystore import MeshDirectory
from .session import Session, SessionLimits, SessionTable
from .wire import ErrorCode, Kind

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "Authority",
    "Blob",
    "Certificate",
    "CertificateExpired",
    "ClockSkew",
    "EnvelopeTooLarge",
    "ErrorCode",
    "HandshakeFailed",
    "HandshakeRejected",
    "Identity",
    "IdentityError",
    "Initiator",
    "InsecureKeyFile",
    "InvalidArgument",
    "InvalidBody",
    "InvalidName",
    "KeyFileError",
    "Kind",
    "LimitExceeded",
    "MalformedEnvelope",
    "MeshDirectory",
    "MeshError",
    "Message",
    "ProtocolError",
    "ReplayDetected",
    "Responder",
    "Session",
    "SessionExpired",
    "SessionLimits",
    "SessionTable",
    "Trust",
    "Unauthorized",
    "UnknownSession",
    "UnsupportedAttachment",
    "UnsupportedVersion",
]
