"""What an agent (the producer) emits, before it becomes wire frames.

An agent is any async iterable of these; ``Hub.run_agent`` feeds them through
the ``EventTransformer``. Each class names its ``type``, which is the key of
its handler in the transformer, so an application can add event types of its
own (any object with a ``type`` attribute) and handlers for them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import attrs

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
    text: str
    turn_id: str | None = None


@attrs.frozen
class AgentTextComplete:
    type: ClassVar[str] = "text_complete"
    text: str
    is_intermediate: bool | None = None
    turn_id: str | None = None


@attrs.frozen
class AgentToolStart:
    type: ClassVar[str] = "tool_start"
    tool_name: str
    tool_use_id: str
    input: dict[str, Any] = attrs.field(factory=dict)
    intent: str | None = None
    display_name: str | None = None
    turn_id: str | None = None


@attrs.frozen
class AgentToolResult:
    type: ClassVar[str] = "tool_result"
    tool_use_id: str
    result: str
    is_error: bool | None = None
    tool_name: str | None = None
    turn_id: str | None = None


@attrs.frozen
class AgentComplete:
    type: ClassVar[str] = "complete"


@attrs.frozen
class AgentError:
    type: ClassVar[str] = "error"
    message: str


@attrs.frozen
class AgentPermissionRequest:
    """Ask the session's clients; an async-generator agent receives the decision.

    ``decision = yield AgentPermissionRequest(...)`` inside an agent written as
    an async generator gets the ``PermissionDecision``. ``request_id`` is
    normally left to the hub, which makes it unguessable.
    """

    type: ClassVar[str] = "permission_request"
    tool_name: str
    command: str
    description: str
    request_id: str | None = None


@attrs.frozen
class PermissionDecision:
    """How a permission request ended."""

    request_id: str
    allowed: bool
    always_allow: bool = False
    timed_out: bool = False
