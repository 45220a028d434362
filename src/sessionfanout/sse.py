"""Server-Sent Events framing of the protocol's frames; sans-IO.

The same JSON text as a WebSocket frame goes out as one SSE event::

    id: <epoch>:<seq>        (session events only)
    event: <type>
    data: <the JSON text>
    <blank line>

A reconnecting ``EventSource`` sends the last id it saw as ``Last-Event-ID``;
``parse_last_event_id`` turns it back into the ``(epoch, seq)`` that a
``subscribe`` with ``lastSeq`` and ``epoch`` names. Comment lines (``: ...``)
are heartbeats: they keep proxies from closing an idle stream.

A frame does not say its session's epoch, so ``SseFramer`` (one per stream)
remembers it from the ``subscribed`` frames that precede a session's events.
"""

from __future__ import annotations

import json
import re
from typing import Final

from .checks import MAX_SAFE_INTEGER, describe
from .errors import InvalidArgument

__all__ = ("HEARTBEAT", "SseFramer", "encode_event", "event_id", "parse_last_event_id")

HEARTBEAT: Final = ": heartbeat\n\n"
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NEWLINE = re.compile(r"\r\n|\r|\n")


def event_id(epoch: str, seq: int) -> str:
    """The SSE id of a session event: ``<epoch>:<seq>``."""
    return f"{epoch}:{seq}"


def parse_last_event_id(value: object) -> tuple[str, int]:
    """``(epoch, seq)`` from a ``Last-Event-ID``, or ``InvalidArgument`` saying
    what is wrong with it. The seq is what follows the last colon."""
    if not isinstance(value, str):
        raise InvalidArgument(f"Last-Event-ID must be a string, got {describe(value)}")
    epoch, colon, seq = value.rpartition(":")
    if not colon or not epoch:
        raise InvalidArgument(f"Last-Event-ID must be '<epoch>:<seq>', got {value!r:.80}")
    if _NEWLINE.search(epoch):
        raise InvalidArgument("Last-Event-ID must be one line")
    if not seq.isascii() or not seq.isdigit() or int(seq) > MAX_SAFE_INTEGER:
        raise InvalidArgument(f"Last-Event-ID's seq must be a whole number, got {seq!r:.40}")
    return epoch, int(seq)


def encode_event(data: str, event_type: str | None = None, event_id: str | None = None) -> str:
    """One SSE event. A line break in ``data`` starts another ``data:`` line,
    which the browser joins back with a newline: no text changes on the way."""
    head = ""
    if event_id is not None:
        if "\n" in event_id or "\r" in event_id or "\0" in event_id:
            raise InvalidArgument(f"an SSE id must be one line without NUL, got {event_id!r:.80}")
        head = f"id: {event_id}\n"
    if event_type is not None:
        head += f"event: {event_type}\n"
    if "\n" in data or "\r" in data:  # never in the protocol's compact JSON
        return head + "".join(f"data: {line}\n" for line in _NEWLINE.split(data)) + "\n"
    return f"{head}data: {data}\n\n"


class SseFramer:
    """Frames one stream's frames as SSE events, each session event with its id.

    Frames come from the codec, so their shape is known: ``type`` first, and a
    session event's ``sessionId`` second and ``seq`` last. The session is
    looked up by its id as written in the JSON (escaped), with no decoding.
    """

    __slots__ = ("_epochs",)

    def __init__(self) -> None:
        self._epochs: dict[str, str] = {}

    def frame(self, text: str) -> str:
        """The SSE event for one frame of the protocol."""
        event_type = text[9 : text.find('"', 9)] if text.startswith('{"type":"') else None
        if event_type == "subscribed":
            data = json.loads(text)
            self._epochs[_session_of(text)] = data["epoch"]
            return encode_event(text, event_type)
        at = text.rfind(',"seq":')
        number = text[at + 7 : -1] if at > 0 else ""
        if not number.isdigit() or event_type is None:  # not numbered: no id to resume from
            return encode_event(text, event_type)
        epoch = self._epochs.get(_session_of(text))
        return encode_event(text, event_type, None if epoch is None else f"{epoch}:{number}")


def _session_of(text: str) -> str:
    """The ``sessionId`` field's JSON string, as written (second, after ``type``)."""
    start = text.find(',"sessionId":"') + 13
    match = _JSON_STRING.match(text, start)
    return match.group(0) if match else ""
