"""sessionfanout: session-scoped event fan-out for servers that stream an agent's work.

The sans-IO core (``registry``, ``batcher``, ``transformer``, ``history``,
``permissions``, ``codec``) takes time as an argument; only ``Hub`` does I/O.
``RedisBroker`` (several processes) lives in ``sessionfanout.redis_broker``
and needs the ``redis`` extra.
"""

from .agent import (
    AgentComplete,
    AgentError,
    AgentEvent,
    AgentPermissionRequest,
    AgentTextComplete,
    AgentTextDelta,
    AgentToolResult,
    AgentToolStart,
    PermissionDecision,
)
from .batcher import Batch, DeltaBatcher
from .broker import Broker, BrokerContext, LocalBroker, Receiver
from .checks import MAX_ID_LENGTH
from .clients import CustomFrameHandler
from .codec import (
    DEFAULT_MAX_FRAME_BYTES,
    decode_client,
    decode_server,
    encode,
    encode_delta,
    with_seq,
)
from .config import (
    AuthorizeHook,
    HubConfig,
    PresenceInfoHook,
    SlowConsumerPolicy,
    subscribers_may_abort,
)
from .connection import Connection, Sink
from .envelope import Envelope, Signer
from .errors import (
    BrokerUnavailable,
    ForgedEnvelope,
    HubClosed,
    InvalidArgument,
    ProtocolError,
    SessionFanoutError,
    SessionMismatch,
    UnknownAgentEvent,
    UnknownConnection,
)
from .events import (
    Abort,
    ClientError,
    ClientMessage,
    Complete,
    ConfigChanged,
    Connected,
    CustomFrame,
    Error,
    GlobalEvent,
    PermissionRequest,
    PermissionRequestInfo,
    PermissionResponse,
    PermissionTimeout,
    Presence,
    PresenceMember,
    ServerEvent,
    SessionEvent,
    Subscribe,
    Subscribed,
    TextComplete,
    TextDelta,
    ToolResult,
    ToolStart,
    Unsubscribe,
    Unsubscribed,
)
from .history import History, HistoryLimits, Recorded, SessionState
from .hub import Hub
from .permissions import PendingPermission, PendingPermissions, PermissionBroker
from .registry import SubscriptionRegistry
from .roster import Roster
from .stats import ConnectionStatistics, HubStatistics
from .transformer import EventTransformer, Handler, UnknownEventPolicy

__version__ = "0.1.0.dev0"

__all__ = (
    "DEFAULT_MAX_FRAME_BYTES",
    "MAX_ID_LENGTH",
    "Abort",
    "AgentComplete",
    "AgentError",
    "AgentEvent",
    "AgentPermissionRequest",
    "AgentTextComplete",
    "AgentTextDelta",
    "AgentToolResult",
    "AgentToolStart",
    "AuthorizeHook",
    "Batch",
    "Broker",
    "BrokerContext",
    "BrokerUnavailable",
    "ClientError",
    "ClientMessage",
    "Complete",
    "ConfigChanged",
    "Connected",
    "Connection",
    "ConnectionStatistics",
    "CustomFrame",
    "CustomFrameHandler",
    "DeltaBatcher",
    "Envelope",
    "Error",
    "EventTransformer",
    "ForgedEnvelope",
    "GlobalEvent",
    "Handler",
    "History",
    "HistoryLimits",
    "Hub",
    "HubClosed",
    "HubConfig",
    "HubStatistics",
    "InvalidArgument",
    "LocalBroker",
    "PendingPermission",
    "PendingPermissions",
    "PermissionBroker",
    "PermissionDecision",
    "PermissionRequest",
    "PermissionRequestInfo",
    "PermissionResponse",
    "PermissionTimeout",
    "Presence",
    "PresenceInfoHook",
    "PresenceMember",
    "ProtocolError",
    "Receiver",
    "Recorded",
    "Roster",
    "ServerEvent",
    "SessionEvent",
    "SessionFanoutError",
    "SessionMismatch",
    "SessionState",
    "Signer",
    "Sink",
    "SlowConsumerPolicy",
    "Subscribe",
    "Subscribed",
    "SubscriptionRegistry",
    "TextComplete",
    "TextDelta",
    "ToolResult",
    "ToolStart",
    "UnknownAgentEvent",
    "UnknownConnection",
    "UnknownEventPolicy",
    "Unsubscribe",
    "Unsubscribed",
    "decode_client",
    "decode_server",
    "encode",
    "encode_delta",
    "subscribers_may_abort",
    "with_seq",
)
