"""The echo mock agent both example servers use.

It streams ``message`` split into ``deltas`` nearly equal chunks (one turn id
per run, ``delta_interval_ms`` apart), then ``text_complete`` with the whole
message; then, if ``tool``, ``tool_start``; if ``permission``, a permission
request whose decision it waits for; then (if ``tool``) ``tool_result``
("allowed" or "denied", an error when denied); then ``complete``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anyio
import attrs

from sessionfanout import (
    AgentComplete,
    AgentPermissionRequest,
    AgentTextComplete,
    AgentTextDelta,
    AgentToolResult,
    AgentToolStart,
    PermissionDecision,
)

MAX_MESSAGE_CHARS = 1_000_000
MAX_DELTAS = 100_000
MAX_INTERVAL_MS = 10_000.0


@attrs.frozen
class MockOptions:
    """What one run of the mock agent does (the HTTP body's knobs)."""

    message: str
    deltas: int = 20
    delta_interval_ms: float = 20.0
    tool: bool = True
    permission: bool = False

    @classmethod
    def from_json(cls, body: Any) -> MockOptions:
        """Check a decoded JSON body; raise ``ValueError`` naming the bad field."""
        if not isinstance(body, Mapping):
            raise ValueError("body must be a JSON object")
        message = body.get("message")
        if not isinstance(message, str):
            raise ValueError("field 'message' is required and must be a string")
        if len(message) > MAX_MESSAGE_CHARS:
            raise ValueError(f"field 'message' must be at most {MAX_MESSAGE_CHARS} characters")
        deltas = body.get("deltas", 20)
        if type(deltas) is not int or not 1 <= deltas <= MAX_DELTAS:
            raise ValueError(f"field 'deltas' must be an integer from 1 to {MAX_DELTAS}")
        interval = body.get("deltaIntervalMs", 20.0)
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise ValueError("field 'deltaIntervalMs' must be a number")
        if not 0 <= interval <= MAX_INTERVAL_MS:
            raise ValueError(f"field 'deltaIntervalMs' must be from 0 to {MAX_INTERVAL_MS:g}")
        for flag in ("tool", "permission"):
            if type(body.get(flag, False)) is not bool:
                raise ValueError(f"field {flag!r} must be a boolean")
        return cls(
            message, deltas, float(interval), body.get("tool", True), body.get("permission", False)
        )


def split(text: str, parts: int) -> list[str]:
    """``text`` in ``parts`` nearly equal chunks (fewer when it is shorter)."""
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    chunks, start = [], 0
    for n in range(parts):
        end = start + size + (1 if n < extra else 0)
        chunks.append(text[start:end])
        start = end
    return [c for c in chunks if c]


async def echo_agent(options: MockOptions) -> AsyncGenerator[Any, PermissionDecision | None]:
    """Run for ``Hub.run_agent``; receives the permission decision from the hub."""
    turn_id = f"turn-{secrets.token_hex(4)}"
    for n, chunk in enumerate(split(options.message, options.deltas)):
        if n:
            await anyio.sleep(options.delta_interval_ms / 1000)
        yield AgentTextDelta(chunk, turn_id)
    yield AgentTextComplete(options.message, turn_id=turn_id)
    tool_use_id = f"toolu_{secrets.token_hex(6)}"
    if options.tool:
        yield AgentToolStart(
            "echo",
            tool_use_id,
            {"message": options.message[:200]},
            intent="Echo the message back",
            display_name="Echo",
            turn_id=turn_id,
        )
    allowed = True
    if options.permission:
        decision = yield AgentPermissionRequest(
            "echo", f"echo {options.message[:60]!r}", "The mock agent wants to echo your message."
        )
        allowed = decision is not None and decision.allowed
    if options.tool:
        yield AgentToolResult(
            tool_use_id,
            "allowed" if allowed else "denied",
            is_error=None if allowed else True,
            turn_id=turn_id,
        )
    yield AgentComplete()
