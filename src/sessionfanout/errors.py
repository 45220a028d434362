"""Every exception sessionfanout raises on purpose.

One root, so callers can catch the library as a whole::

    SessionFanoutError
     +-- ProtocolError            a client frame was rejected; carries a PROTOCOL.md code
     +-- InvalidArgument          a bad argument to the API (also a ValueError)
     |    +-- SessionMismatch     an event's sessionId differs from the session named
     +-- UnknownConnection        the connection is not (or no longer) connected to this hub
     +-- UnknownAgentEvent        an agent event type with no handler, when the policy is "raise"
     +-- HubClosed                the hub is not running (never entered, or already left)
     +-- BrokerUnavailable        the backplane cannot be reached; the producer decides what to do
     +-- ForgedEnvelope           a backplane message failed its signature check (dropped, counted)

A peer's bad input is a value, not a crash: the hub turns a ``ProtocolError``
into a ``client_error`` frame for that peer and never lets it escape.
"""

from __future__ import annotations

from typing import Final

__all__ = (
    "BrokerUnavailable",
    "ForgedEnvelope",
    "HubClosed",
    "InvalidArgument",
    "ProtocolError",
    "SessionFanoutError",
    "SessionMismatch",
    "UnknownAgentEvent",
    "UnknownConnection",
)

CLIENT_ERROR_CODES: Final = frozenset(
    {
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "too_large",
        "forbidden",
        "unknown_request",
        "rate_limited",
    }
)


class SessionFanoutError(Exception):
    """Root of every exception raised by sessionfanout."""


class ProtocolError(SessionFanoutError):
    """A client frame was rejected.

    ``code`` is one of the ``client_error`` codes of PROTOCOL.md, ``message`` is
    for humans and names the offending field, ``request_type`` is the frame's
    ``type`` when it could be read.
    """

    def __init__(self, code: str, message: str, request_type: str | None = None) -> None:
        if code not in CLIENT_ERROR_CODES:
            raise ValueError(f"unknown client_error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_type = request_type


class InvalidArgument(SessionFanoutError, ValueError):
    """An argument to the API is out of its documented domain."""


class SessionMismatch(InvalidArgument):
    """The event names a different session than the call it was passed to."""


class UnknownConnection(SessionFanoutError, LookupError):
    """The connection is not connected to this hub."""


class UnknownAgentEvent(SessionFanoutError, LookupError):
    """No handler is registered for this agent event type."""


class HubClosed(SessionFanoutError, RuntimeError):
    """The hub is not running: use it inside ``async with Hub(...)``."""


class BrokerUnavailable(SessionFanoutError, ConnectionError):
    """The backplane cannot be reached right now; it reconnects on its own."""


class ForgedEnvelope(SessionFanoutError):
    """A backplane message whose signature does not match, or that is malformed."""
