"""What an agent (the producer) emits, before it becomes wire frames.

An agent is any async iterable of these; ``Hub.run_agent`` feeds them through
the ``EventTransformer``. Each class names its ``type``, which is the key of
its handler in the transformer, so an application can add event types of its
own (any object with a ``type`` attribute) and handlers for them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import attrs

from .checks import (
    a_bool,
    a_json_object,
    a_string,
    an_id,
    optional_bool_field,
    optional_str_field,
)

__all__ = (
    "AgentComplete",
    "AgentError",
    "AgentEvent",
    "AgentPermissionRequest",
    "AgentTextComplete",
    "AgentTextDelta",
    "AgentToolResult",
    "AgentToolStart",
    "PermissionDecision",
)


class AgentEvent(Protocol):
    """Anything with a ``type``; the transformer dispatches on it."""

    @property
    def type(self) -> str: ...


@attrs.frozen
class AgentTextDelta:
    type: ClassVar[str] = "text_delta"
    text: str = attrs.field(validator=a_string)
    turn_id: str | None = optional_str_field()


@attrs.frozen
class AgentTextComplete:
    type: ClassVar[str] = "text_complete"
    text: str = attrs.field(validator=a_string)
    is_intermediate: bool | None = optional_bool_field()
    turn_id: str | None = optional_str_field()


@attrs.frozen
class AgentToolStart:
    type: ClassVar[str] = "tool_start"
    tool_name: str = attrs.field(validator=a_string)
    tool_use_id: str = attrs.field(validator=a_string)
    input: dict[str, Any] = attrs.field(factory=dict, validator=a_json_object)
    intent: str | None = optional_str_field()
    display_name: str | None = optional_str_field()
    turn_id: str | None = optional_str_field()


@attrs.frozen
class AgentToolResult:
    type: ClassVar[str] = "tool_result"
    tool_use_id: str = attrs.field(validator=a_string)
    result: str = attrs.field(validator=a_string)
    is_error: bool | None = optional_bool_field()
    tool_name: str | None = optional_str_field()
    turn_id: str | None = optional_str_field()


@attrs.frozen
class AgentComplete:
    type: ClassVar[str] = "complete"


@attrs.frozen
class AgentError:
    type: ClassVar[str] = "error"
    message: str = attrs.field(validator=a_string)


@attrs.frozen
class AgentPermissionRequest:
    """Ask the session's clients; an async-generator agent receives the decision.

    ``decision = yield AgentPermissionRequest(...)`` inside an agent written as
    an async generator gets the ``PermissionDecision``. ``request_id`` is
    normally left to the hub, which makes it unguessable.
    """

    type: ClassVar[str] = "permission_request"
    tool_name: str = attrs.field(validator=a_string)
    command: str = attrs.field(validator=a_string)
    description: str = attrs.field(validator=a_string)
    request_id: str | None = attrs.field(default=None, validator=attrs.validators.optional(an_id))


@attrs.frozen
class PermissionDecision:
    """How a permission request ended."""

    request_id: str = attrs.field(validator=an_id)
    allowed: bool = attrs.field(validator=a_bool)
    always_allow: bool = attrs.field(default=False, validator=a_bool)
    timed_out: bool = attrs.field(default=False, validator=a_bool)
