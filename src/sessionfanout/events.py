"""The frames of PROTOCOL.md as frozen value classes.

Python attributes are snake_case; the codec maps them to the camelCase wire
names. Every class names its wire ``type`` in a ``TYPE`` class variable.
Every field is checked when an event is made (``checks``): a bad value fails
where it was written, with ``InvalidArgument`` naming the field.
Session events end with ``seq``: the hub assigns it when it publishes, and the
codec relies on it being the last field (see ``codec.with_seq``).
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar, Literal

import attrs

from .checks import (
    a_bool,
    a_count,
    a_json_object,
    a_string,
    an_id,
    describe,
    one_of,
    optional_bool_field,
    optional_count_field,
    optional_str_field,
    wire_name,
)
from .errors import CLIENT_ERROR_CODES, InvalidArgument

__all__ = (
    "Abort",
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
    "Presence",
    "PresenceMember",
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

# -- server -> client ---------------------------------------------------------


@attrs.frozen
class Connected:
    TYPE: ClassVar[str] = "connected"
    timestamp: int = attrs.field(validator=a_count)
    connection_id: str = attrs.field(validator=a_string)


@attrs.frozen
class TextDelta:
    TYPE: ClassVar[str] = "text_delta"
    session_id: str = attrs.field(validator=an_id)
    delta: str = attrs.field(validator=a_string)
    turn_id: str | None = optional_str_field()
    first_seq: int | None = optional_count_field()
    """Set on a merged frame (the slow-consumer policy): the seq of its first part."""
    seq: int | None = optional_count_field()


@attrs.frozen
class TextComplete:
    TYPE: ClassVar[str] = "text_complete"
    session_id: str = attrs.field(validator=an_id)
    text: str = attrs.field(validator=a_string)
    is_intermediate: bool | None = optional_bool_field()
    turn_id: str | None = optional_str_field()
    seq: int | None = optional_count_field()


@attrs.frozen
class ToolStart:
    TYPE: ClassVar[str] = "tool_start"
    session_id: str = attrs.field(validator=an_id)
    tool_name: str = attrs.field(validator=a_string)
    tool_use_id: str = attrs.field(validator=a_string)
    tool_input: dict[str, Any] = attrs.field(factory=dict, validator=a_json_object)
    """Strict JSON: see ``checks.json_problem`` for what is refused."""
    tool_intent: str | None = optional_str_field()
    tool_display_name: str | None = optional_str_field()
    turn_id: str | None = optional_str_field()
    seq: int | None = optional_count_field()


@attrs.frozen
class ToolResult:
    TYPE: ClassVar[str] = "tool_result"
    session_id: str = attrs.field(validator=an_id)
    tool_use_id: str = attrs.field(validator=a_string)
    tool_name: str = attrs.field(validator=a_string)
    result: str = attrs.field(validator=a_string)
    turn_id: str | None = optional_str_field()
    is_error: bool | None = optional_bool_field()
    seq: int | None = optional_count_field()


@attrs.frozen
class Complete:
    TYPE: ClassVar[str] = "complete"
    session_id: str = attrs.field(validator=an_id)
    seq: int | None = optional_count_field()


@attrs.frozen
class Error:
    TYPE: ClassVar[str] = "error"
    session_id: str = attrs.field(validator=an_id)
    error: str = attrs.field(validator=a_string)
    seq: int | None = optional_count_field()


@attrs.frozen
class PermissionRequestInfo:
    """The ``request`` object inside a ``permission_request`` frame."""

    request_id: str = attrs.field(validator=an_id)
    tool_name: str = attrs.field(validator=a_string)
    command: str = attrs.field(validator=a_string)
    description: str = attrs.field(validator=a_string)


def _a_request(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, PermissionRequestInfo):
        raise InvalidArgument(
            f"permission_request: field 'request' must be a PermissionRequestInfo,"
            f" got {describe(value)}"
        )


@attrs.frozen
class PermissionRequest:
    TYPE: ClassVar[str] = "permission_request"
    session_id: str = attrs.field(validator=an_id)
    request: PermissionRequestInfo = attrs.field(validator=_a_request)
    seq: int | None = optional_count_field()


@attrs.frozen
class PermissionTimeout:
    TYPE: ClassVar[str] = "permission_timeout"
    session_id: str = attrs.field(validator=an_id)
    request_id: str = attrs.field(validator=an_id)
    seq: int | None = optional_count_field()


@attrs.frozen
class ConfigChanged:
    TYPE: ClassVar[str] = "config_changed"
    change_type: Literal["config", "theme"] = attrs.field(validator=one_of("config", "theme"))


@attrs.frozen
class Subscribed:
    TYPE: ClassVar[str] = "subscribed"
    session_id: str = attrs.field(validator=an_id)
    seq: int = attrs.field(validator=a_count)
    epoch: str = attrs.field(validator=a_string)
    resumed: bool = attrs.field(validator=a_bool)
    first_seq: int | None = optional_count_field()
    """The first replayed seq, when events are replayed."""


@attrs.frozen
class Unsubscribed:
    TYPE: ClassVar[str] = "unsubscribed"
    session_id: str = attrs.field(validator=an_id)
    reason: str | None = optional_str_field()
    """Set when the server ended the subscription (access withdrawn), saying why."""


def _info(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        a_json_object(instance, attribute, value)


@attrs.frozen
class PresenceMember:
    """One subscriber of a session, on any process: its connection id and what
    the ``presence_info`` hook said of it (None: nothing)."""

    connection_id: str = attrs.field(validator=an_id)
    info: dict[str, Any] | None = attrs.field(default=None, validator=_info)


def _members(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (
        isinstance(value, tuple) and all(type(m) is PresenceMember for m in value)
    ):
        raise InvalidArgument(
            f"presence: field {wire_name(attribute.name)!r} must be a tuple of"
            f" PresenceMember or None, got {describe(value)}"
        )


@attrs.frozen
class Presence:
    """Who is subscribed to a session: ``members`` (a snapshot), or what changed
    since the last frame (``joined`` and ``left``). Not numbered, not kept."""

    TYPE: ClassVar[str] = "presence"
    session_id: str = attrs.field(validator=an_id)
    members: tuple[PresenceMember, ...] | None = attrs.field(default=None, validator=_members)
    joined: tuple[PresenceMember, ...] | None = attrs.field(default=None, validator=_members)
    left: tuple[PresenceMember, ...] | None = attrs.field(default=None, validator=_members)

    def __attrs_post_init__(self) -> None:
        if self.members is not None:
            if self.joined is not None or self.left is not None:
                raise InvalidArgument("presence: a snapshot ('members') has no 'joined' or 'left'")
        elif self.joined is None or self.left is None or not (self.joined or self.left):
            raise InvalidArgument(
                "presence: give 'members', or 'joined' and 'left' (not both empty)"
            )


@attrs.frozen
class ClientError:
    TYPE: ClassVar[str] = "client_error"
    code: str = attrs.field(validator=one_of(*sorted(CLIENT_ERROR_CODES)))
    message: str = attrs.field(validator=a_string)
    request_type: str | None = optional_str_field()


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
SESSION_EVENT_TYPES: frozenset[type[Any]] = frozenset(typing.get_args(SessionEvent))
GlobalEvent = ConfigChanged
ServerEvent = (
    SessionEvent | GlobalEvent | Connected | Subscribed | Unsubscribed | Presence | ClientError
)

# -- client -> server ---------------------------------------------------------


@attrs.frozen
class Subscribe:
    TYPE: ClassVar[str] = "subscribe"
    session_id: str = attrs.field(validator=an_id)
    last_seq: int | None = optional_count_field()
    epoch: str | None = optional_str_field()
    from_: Literal["start"] | None = attrs.field(
        default=None, validator=attrs.validators.optional(one_of("start"))
    )
    """``"start"`` (wire ``from``): a late joiner, replayed all the history holds."""
    presence: bool | None = optional_bool_field()
    """True: also get ``presence`` frames (who else is subscribed)."""


@attrs.frozen
class Unsubscribe:
    TYPE: ClassVar[str] = "unsubscribe"
    session_id: str = attrs.field(validator=an_id)


@attrs.frozen
class PermissionResponse:
    TYPE: ClassVar[str] = "permission_response"
    request_id: str = attrs.field(validator=an_id)
    allowed: bool = attrs.field(validator=a_bool)
    always_allow: bool | None = optional_bool_field()


@attrs.frozen
class CustomFrame:
    """A client frame of a type the application registered with the hub.

    ``data`` is the whole decoded JSON object, ``type`` included; its checking
    is the application's handler's job.
    """

    type: str
    data: dict[str, Any]


@attrs.frozen
class Abort:
    """Stop the session's running agent, on whichever process runs it."""

    TYPE: ClassVar[str] = "abort"
    session_id: str = attrs.field(validator=an_id)


ClientMessage = Subscribe | Unsubscribe | PermissionResponse | Abort | CustomFrame
