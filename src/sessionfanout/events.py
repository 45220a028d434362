"""The frames of PROTOCOL.md as frozen value classes.

Python attributes are snake_case; the codec maps them to the camelCase wire
names. Every class names its wire ``type`` in a ``TYPE`` class variable.
Session events end with ``seq``: the hub assigns it when it publishes, and the
codec relies on it being the last field (see ``codec.with_seq``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs

__all__ = (
    "ClientError",
    "ClientMessage",
    "Complete",
    "ConfigChanged",
    "Connected",
    "CustomFrame",
    "Error",
    "GlobalEvent",
    "PermissionRequest",
    "PermissionRequestInfo",
    "PermissionResponse",
    "PermissionTimeout",
    "ServerEvent",
    "SessionEvent",
    "Subscribe",
    "Subscribed",
    "TextComplete",
    "TextDelta",
    "ToolResult",
    "ToolStart",
    "Unsubscribe",
    "Unsubscribed",
)

MAX_ID_LENGTH = 256
"""PROTOCOL.md: ``sessionId`` and ``requestId`` are non-empty strings of at most 256 characters."""


def wire_name(name: str) -> str:
    """The camelCase wire name of a snake_case attribute: ``session_id`` -> ``sessionId``."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _check_id(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"field {wire_name(attribute.name)!r} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(
            f"field {wire_name(attribute.name)!r} must be at most {MAX_ID_LENGTH} characters"
        )


def _check_seq(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"field {wire_name(attribute.name)!r} must not be negative")


# -- server -> client ---------------------------------------------------------


@attrs.frozen
class Connected:
    TYPE: ClassVar[str] = "connected"
    timestamp: int
    connection_id: str


@attrs.frozen
class TextDelta:
    TYPE: ClassVar[str] = "text_delta"
    session_id: str
    delta: str
    turn_id: str | None = None
    seq: int | None = None


@attrs.frozen
class TextComplete:
    TYPE: ClassVar[str] = "text_complete"
    session_id: str
    text: str
    is_intermediate: bool | None = None
    turn_id: str | None = None
    seq: int | None = None


@attrs.frozen
class ToolStart:
    TYPE: ClassVar[str] = "tool_start"
    session_id: str
    tool_name: str
    tool_use_id: str
    tool_input: dict[str, Any] = attrs.field(factory=dict)
    tool_intent: str | None = None
    tool_display_name: str | None = None
    turn_id: str | None = None
    seq: int | None = None


@attrs.frozen
class ToolResult:
    TYPE: ClassVar[str] = "tool_result"
    session_id: str
    tool_use_id: str
    tool_name: str
    result: str
    turn_id: str | None = None
    is_error: bool | None = None
    seq: int | None = None


@attrs.frozen
class Complete:
    TYPE: ClassVar[str] = "complete"
    session_id: str
    seq: int | None = None


@attrs.frozen
class Error:
    TYPE: ClassVar[str] = "error"
    session_id: str
    error: str
    seq: int | None = None


@attrs.frozen
class PermissionRequestInfo:
    """The ``request`` object inside a ``permission_request`` frame."""

    request_id: str
    tool_name: str
    command: str
    description: str


@attrs.frozen
class PermissionRequest:
    TYPE: ClassVar[str] = "permission_request"
    session_id: str
    request: PermissionRequestInfo
    seq: int | None = None


@attrs.frozen
class PermissionTimeout:
    TYPE: ClassVar[str] = "permission_timeout"
    session_id: str
    request_id: str
    seq: int | None = None


@attrs.frozen
class ConfigChanged:
    TYPE: ClassVar[str] = "config_changed"
    change_type: Literal["config", "theme"]


@attrs.frozen
class Subscribed:
    TYPE: ClassVar[str] = "subscribed"
    session_id: str
    seq: int
    epoch: str
    resumed: bool


@attrs.frozen
class Unsubscribed:
    TYPE: ClassVar[str] = "unsubscribed"
    session_id: str


@attrs.frozen
class ClientError:
    TYPE: ClassVar[str] = "client_error"
    code: str
    message: str
    request_type: str | None = None


SessionEvent = (
    TextDelta
    | TextComplete
    | ToolStart
    | ToolResult
    | Complete
    | Error
    | PermissionRequest
    | PermissionTimeout
)
GlobalEvent = ConfigChanged
ServerEvent = SessionEvent | GlobalEvent | Connected | Subscribed | Unsubscribed | ClientError

# -- client -> server ---------------------------------------------------------


@attrs.frozen
class Subscribe:
    TYPE: ClassVar[str] = "subscribe"
    session_id: str = attrs.field(validator=_check_id)
    last_seq: int | None = attrs.field(default=None, validator=_check_seq)
    epoch: str | None = None


@attrs.frozen
class Unsubscribe:
    TYPE: ClassVar[str] = "unsubscribe"
    session_id: str = attrs.field(validator=_check_id)


@attrs.frozen
class PermissionResponse:
    TYPE: ClassVar[str] = "permission_response"
    request_id: str = attrs.field(validator=_check_id)
    allowed: bool
    always_allow: bool | None = None


@attrs.frozen
class CustomFrame:
    """A client frame of a type the application registered with the hub.

    ``data`` is the whole decoded JSON object, ``type`` included; its checking
    is the application's handler's job.
    """

    type: str
    data: dict[str, Any]


ClientMessage = Subscribe | Unsubscribe | PermissionResponse | CustomFrame
