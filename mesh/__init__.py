"""agent-mesh: a brokerless, peer-to-peer messaging mesh for LLM agents.

This module re-exports the public names; it defines nothing itself.
"""

from .codec import Blob, Message
from .discovery import DiscoveryServer
from .errors import (
    AuthenticationFailed,
    BadRequest,
    CallError,
    CertificateExpired,
    ClockSkew,
    DiscoveryUnavailable,
    EnvelopeTooLarge,
    FlowControlTimeout,
    HandshakeBusy,
    HandshakeFailed,
    HandshakeRejected,
    IdentityError,
    InsecureKeyFile,
    InvalidArgument,
    InvalidBody,
    InvalidName,
    KeyFileError,
    LimitExceeded,
    LocalProtocolError,
    MalformedEnvelope,
    MeshError,
    NameConflict,
    NoCredit,
    NodeClosed,
    NoSuchMethod,
    Overloaded,
    PeerLost,
    PeerNotFound,
    ProtocolError,
    RemoteError,
    ReplayDetected,
    ReplyTooLarge,
    RequestTimeout,
    SessionExpired,
    Unauthorized,
    UnknownSession,
    UnsupportedAttachment,
    UnsupportedVersion,
)
from .handlers import CallContext
from .handshake import Initiator, Responder
from .identity import Authority, Certificate, Identity, Trust
from .keystore import MeshDirectory
from .node import Node
from .peers import PeerInfo
from .session import Session, SessionLimits, SessionTable
from .subscription import Subscription, TopicMessage
from .sync import SyncNode, SyncSubscription
from .wire import ErrorCode, Kind

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "Authority",
    "BadRequest",
    "Blob",
    "CallContext",
    "CallError",
    "Certificate",
    "CertificateExpired",
    "ClockSkew",
    "DiscoveryServer",
    "DiscoveryUnavailable",
    "EnvelopeTooLarge",
    "FlowControlTimeout",
    "ErrorCode",
    "HandshakeFailed",
    "HandshakeBusy",
    "HandshakeRejected",
    "Identity",
    "IdentityError",
    "Initiator",
    "InsecureKeyFile",
    "InvalidArgument",
    "LocalProtocolError",
    "InvalidBody",
    "InvalidName",
    "KeyFileError",
    "Kind",
    "LimitExceeded",
    "MalformedEnvelope",
    "MeshDirectory",
    "MeshError",
    "Message",
    "NameConflict",
    "NoCredit",
    "NoSuchMethod",
    "Overloaded",
    "Node",
    "NodeClosed",
    "PeerInfo",
    "PeerLost",
    "PeerNotFound",
    "ProtocolError",
    "RemoteError",
    "ReplyTooLarge",
    "ReplayDetected",
    "RequestTimeout",
    "Responder",
    "Session",
    "SessionExpired",
    "SessionLimits",
    "SessionTable",
    "Subscription",
    "SyncNode",
    "SyncSubscription",
    "TopicMessage",
    "Trust",
    "Unauthorized",
    "UnknownSession",
    "UnsupportedAttachment",
    "UnsupportedVersion",
]
