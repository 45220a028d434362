"""The hub's configuration: one frozen class, every default documented."""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from .codec import DEFAULT_MAX_FRAME_BYTES
from .errors import InvalidArgument
from .history import HistoryLimits

if TYPE_CHECKING:
    from .connection import Connection

__all__ = (
    "AuthorizeHook",
    "HubConfig",
    "PresenceInfoHook",
    "SlowConsumerPolicy",
    "subscribers_may_abort",
)

PresenceInfoHook = Callable[["Connection"], "dict[str, Any] | None"]
"""``presence_info(connection)``: what others see of this subscriber (a JSON object)."""

AuthorizeHook = Callable[["Connection", str], "bool | Awaitable[bool]"]
"""``authorize(connection, session_id)``: may this connection subscribe to that session?"""


def subscribers_may_abort(connection: Connection, session_id: str) -> bool:
    """The default ``may_abort``: a connection subscribed to the session may stop
    its agent. (The hub answers it from its subscriptions; this is its name.)"""
    raise NotImplementedError("the hub decides this default itself")


class SlowConsumerPolicy(enum.Enum):
    """What happens when a connection's outbox goes over its limits."""

    COALESCE_THEN_CLOSE = "coalesce_then_close"
    """Merge queued ``text_delta`` frames of the same session and turn; if the
    outbox is still over a limit, close the connection (code 1008)."""
    CLOSE = "close"
    """Close the connection (code 1008) at once."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value > 0:
        raise InvalidArgument(f"HubConfig.{attribute.name} must be > 0, got {value!r}")


def _optional_positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _positive(instance, attribute, value)


def _finite_positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 < value < math.inf:
        raise InvalidArgument(f"HubConfig.{attribute.name} must be seconds > 0, got {value!r}")


def _optional_callable(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise InvalidArgument(f"HubConfig.{attribute.name} must be callable or None, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value >= 0:
        raise InvalidArgument(f"HubConfig.{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class HubConfig:
    """Settings of a ``Hub``. Sizes are in bytes of encoded frames (frames are ASCII)."""

    batch_interval: float = attrs.field(default=0.05, validator=_non_negative)
    """Longest a text delta waits to be coalesced with the next ones (seconds)."""
    max_batch_chars: int = attrs.field(default=16 * 1024, validator=_positive)
    """A batch this long is sent at once; longer deltas are split."""
    outbox_max_messages: int = attrs.field(default=2000, validator=_positive)
    """Frames that may wait for one connection behind the one being sent."""
    outbox_max_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    """Bytes that may wait for one connection; the next frame to go out is
    exempt, so one large frame never closes a reading client."""
    slow_consumer: SlowConsumerPolicy = SlowConsumerPolicy.COALESCE_THEN_CLOSE
    history_max_events: int = attrs.field(default=1000, validator=_non_negative)
    """Entries kept per session for resume: an event, or a run of one turn's
    delta batches (in one process's memory; ``RedisBroker`` keeps one per seq)."""
    history_max_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_non_negative)
    history_idle_ttl: float = attrs.field(default=3600.0, validator=_positive)
    """A session with no subscriber and no event for this long is forgotten (seconds)."""
    permission_timeout: float = attrs.field(default=60.0, validator=_positive)
    """An unanswered permission request is denied after this long (seconds)."""
    max_frame_bytes: int = attrs.field(default=DEFAULT_MAX_FRAME_BYTES, validator=_positive)
    """Client frames over this size are refused with ``too_large`` unparsed."""
    authorize: AuthorizeHook | None = attrs.field(default=None, validator=_optional_callable)
    """Decides each subscribe; None allows every session."""
    may_abort: AuthorizeHook | None = attrs.field(
        default=subscribers_may_abort, validator=_optional_callable
    )
    """Decides a client's ``abort`` frame; the default allows the session's
    subscribers; None refuses every one (``forbidden``)."""
    presence_info: PresenceInfoHook | None = attrs.field(default=None, validator=_optional_callable)
    """What ``presence`` frames and ``Hub.presence`` say of each subscriber,
    asked once per connection when it connects; None: only its connection id."""
    presence_interval: float = attrs.field(default=0.5, validator=_finite_positive)
    """Presence changes of a session within this long go out as one frame (seconds)."""
    client_rate: float | None = attrs.field(default=20.0, validator=_optional_positive)
    """Client frames per second each connection may send on average; None: unlimited."""
    client_burst: int = attrs.field(default=40, validator=_positive)
    """Client frames a connection may send at once before ``client_rate`` applies."""
    writer_idle_seconds: float = attrs.field(default=1.0, validator=_positive)
    """A connection's writer task ends after this long with nothing to send (and
    starts again when a frame has to wait), so idle connections cost no task."""
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
    """How long closing a sink, or draining outboxes at shutdown, may take (seconds)."""

    @property
    def history_limits(self) -> HistoryLimits:
        return HistoryLimits(
            max_events=self.history_max_events,
            max_bytes=self.history_max_bytes,
            idle_ttl=self.history_idle_ttl,
        )
