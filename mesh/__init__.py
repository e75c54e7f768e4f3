"""agent-mesh: a brokerless, peer-to-peer messaging mesh for LLM agents.

This module re-exports the public names; it defines nothing itself.
"""

from .core.codec import Blob, Message
from .core.errors import (
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
    RedirectFailed,
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
from .core.flow import Window
from .core.handshake import Initiator, Responder
from .core.identity import Authority, Certificate, Identity, Trust
from .core.registry import PeerInfo
from .core.session import Session, SessionLimits, SessionTable
from .core.wire import ErrorCode, Kind
from .ops.processes import MeshProcess
from .runtime.discovery import DiscoveryServer
from .runtime.handlers import CallContext, Redirect
from .runtime.keystore import MeshDirectory
from .runtime.node import Node
from .runtime.subscription import Subscription, TopicMessage
from .runtime.sync import SyncNode, SyncSubscription

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
    "MeshProcess",
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
    "Redirect",
    "RedirectFailed",
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
    "Window",
]
