from __future__ import annotations

import importlib
import pkgutil

import sessionfanout

EXPECTED = {
    "DEFAULT_MAX_FRAME_BYTES", "MAX_ID_LENGTH", "Abort", "subscribers_may_abort",
    "AgentComplete", "AgentError", "AgentEvent",
    "AgentPermissionRequest",
    "AgentTextComplete", "AgentTextDelta", "AgentToolResult", "AgentToolStart", "AuthorizeHook",
    "Batch", "Broker", "BrokerContext", "BrokerUnavailable", "LocalBroker", "Receiver",
    "Envelope", "ForgedEnvelope", "Recorded", "Signer",
    "ClientError", "ClientMessage", "Complete", "ConfigChanged",
    "Connected", "Connection", "ConnectionStatistics", "CustomFrame", "CustomFrameHandler",
    "DeltaBatcher", "Error", "EventTransformer", "GlobalEvent", "Handler", "History", "Hub",
    "HubClosed", "HubConfig", "HubStatistics", "InvalidArgument", "PendingPermission",
    "PermissionBroker", "PendingPermissions", "HistoryLimits", "PermissionDecision",
    "PermissionRequest", "PermissionRequestInfo",
    "PermissionResponse", "PermissionTimeout", "ProtocolError", "ServerEvent", "SessionEvent",
    "SessionFanoutError", "SessionMismatch", "SessionState", "Sink", "SlowConsumerPolicy",
    "Subscribe", "Subscribed", "SubscriptionRegistry", "TextComplete", "TextDelta", "ToolResult",
    "ToolStart", "UnknownAgentEvent", "UnknownConnection", "UnknownEventPolicy", "Unsubscribe",
    "Unsubscribed", "decode_client", "decode_server", "encode", "encode_delta", "with_seq",
    "Presence", "PresenceInfoHook", "PresenceMember", "Roster",
}  # fmt: skip


# Used by name, not re-exported: redis_broker and metrics need an extra; sse
# is a transport's framing (``from sessionfanout.sse import SseFramer``);
# testing is for users' test suites.
OPTIONAL = {"metrics", "redis_broker", "sse", "testing"}


def test_optional_modules_export_what_they_say() -> None:
    from sessionfanout import redis_broker, sse, testing

    assert ("RedisBroker",) == redis_broker.__all__
    assert ("RecordingSink", "TestClient") == testing.__all__
    assert {"HEARTBEAT", "SseFramer", "encode_event", "event_id", "parse_last_event_id"} == set(
        sse.__all__
    )


def test_public_api_is_pinned() -> None:
    """Changing the public surface must be a deliberate edit here too."""
    assert set(sessionfanout.__all__) == EXPECTED
    assert len(sessionfanout.__all__) == len(set(sessionfanout.__all__))
    assert isinstance(sessionfanout.__all__, tuple)


def test_every_name_in_all_exists() -> None:
    for name in sessionfanout.__all__:
        assert hasattr(sessionfanout, name), name


def test_package_all_is_the_union_of_the_modules_all() -> None:
    """What the modules export publicly is what the package re-exports."""
    exported: set[str] = set()
    for info in pkgutil.iter_modules(sessionfanout.__path__):
        if info.name in OPTIONAL:
            continue
        module = importlib.import_module(f"sessionfanout.{info.name}")
        names = getattr(module, "__all__", ())
        assert isinstance(names, tuple), info.name
        for name in names:
            assert hasattr(module, name), f"{info.name}.{name}"
        exported |= set(names)
    internal = {"TokenBucket"}
    assert exported - internal == set(sessionfanout.__all__)


def test_errors_share_one_root() -> None:
    for name in sessionfanout.errors.__all__:
        assert issubclass(getattr(sessionfanout.errors, name), sessionfanout.SessionFanoutError)
