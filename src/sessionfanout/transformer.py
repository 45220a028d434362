"""Agent events to session events, one handler per agent event type.

Sans-IO. ``transform(session_id, event)`` returns the session events to
publish, in order; the hub routes ``TextDelta`` results to the batcher and
publishes the rest. Handlers are plain callables, replaceable per type.

The transformer remembers the tool name of each running ``tool_start`` so that
a ``tool_result`` without one still names its tool; that memory is per
session and is cleared on ``complete``, ``error`` and ``forget``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

from .agent import (
    AgentComplete,
    AgentError,
    AgentPermissionRequest,
    AgentTextComplete,
    AgentTextDelta,
    AgentToolResult,
    AgentToolStart,
)
from .errors import InvalidArgument, UnknownAgentEvent
from .events import (
    Complete,
    Error,
    PermissionRequest,
    PermissionRequestInfo,
    SessionEvent,
    TextComplete,
    TextDelta,
    ToolResult,
    ToolStart,
)
from .permissions import PendingPermissions

__all__ = ("EventTransformer", "Handler", "UnknownEventPolicy")

Handler = Callable[[str, Any], Sequence[SessionEvent]]
"""``handler(session_id, agent_event) -> session events to publish``."""

UNKNOWN_TOOL = "unknown"


class UnknownEventPolicy(enum.Enum):
    """What to do with an agent event type that has no handler."""

    IGNORE = "ignore"
    """Drop it and count it in ``unknown_events`` (the default)."""
    RAISE = "raise"
    """Raise ``UnknownAgentEvent``."""


class EventTransformer:
    """Maps agent events to session events; see the module docstring."""

    def __init__(self, *, unknown: UnknownEventPolicy = UnknownEventPolicy.IGNORE) -> None:
        self.unknown = unknown
        self.unknown_events = 0
        self._tool_names: dict[str, dict[str, str]] = {}
        self._handlers: dict[str, Handler] = {
            AgentTextDelta.type: self._text_delta,
            AgentTextComplete.type: self._text_complete,
            AgentToolStart.type: self._tool_start,
            AgentToolResult.type: self._tool_result,
            AgentComplete.type: self._complete,
            AgentError.type: self._error,
            AgentPermissionRequest.type: self._permission_request,
        }

    def register(self, event_type: str, handler: Handler) -> None:
        """Add a handler for ``event_type``, or replace the built-in one."""
        if not isinstance(event_type, str) or not event_type:
            raise InvalidArgument("event_type must be a non-empty string")
        self._handlers[event_type] = handler

    def transform(self, session_id: str, event: Any) -> Sequence[SessionEvent]:
        event_type = getattr(event, "type", None)
        handler = self._handlers.get(event_type) if isinstance(event_type, str) else None
        if handler is None:
            if self.unknown is UnknownEventPolicy.RAISE:
                raise UnknownAgentEvent(f"no handler for agent event {event!r:.120}")
            self.unknown_events += 1
            return ()
        return handler(session_id, event)

    def forget(self, session_id: str) -> None:
        """Drop what is remembered about the session (its running tools)."""
        self._tool_names.pop(session_id, None)

    @property
    def running_tools(self) -> int:
        return sum(len(tools) for tools in self._tool_names.values())

    def _text_delta(self, session_id: str, event: AgentTextDelta) -> Sequence[SessionEvent]:
        return (TextDelta(session_id, event.text, event.turn_id),)

    def _text_complete(self, session_id: str, event: AgentTextComplete) -> Sequence[SessionEvent]:
        return (TextComplete(session_id, event.text, event.is_intermediate, event.turn_id),)

    def _tool_start(self, session_id: str, event: AgentToolStart) -> Sequence[SessionEvent]:
        self._tool_names.setdefault(session_id, {})[event.tool_use_id] = event.tool_name
        return (
            ToolStart(
                session_id,
                event.tool_name,
                event.tool_use_id,
                event.input,
                event.intent,
                event.display_name,
                event.turn_id,
            ),
        )

    def _tool_result(self, session_id: str, event: AgentToolResult) -> Sequence[SessionEvent]:
        tools = self._tool_names.get(session_id)
        started = tools.pop(event.tool_use_id, None) if tools is not None else None
        if tools is not None and not tools:
            del self._tool_names[session_id]
        name = event.tool_name or started or UNKNOWN_TOOL
        return (
            ToolResult(
                session_id, event.tool_use_id, name, event.result, event.turn_id, event.is_error
            ),
        )

    def _complete(self, session_id: str, event: AgentComplete) -> Sequence[SessionEvent]:
        self.forget(session_id)
        return (Complete(session_id),)

    def _error(self, session_id: str, event: AgentError) -> Sequence[SessionEvent]:
        self.forget(session_id)
        return (Error(session_id, event.message),)

    def _permission_request(
        self, session_id: str, event: AgentPermissionRequest
    ) -> Sequence[SessionEvent]:
        request_id = event.request_id or PendingPermissions.new_request_id()
        info = PermissionRequestInfo(request_id, event.tool_name, event.command, event.description)
        return (PermissionRequest(session_id, info),)
