"""What travels on a backplane, and its signature; sans-IO.

A session event is kept in its session's history as the entry
``seq|sig|kind|body`` and published as ``epoch|seq|sig|kind|body``:
``body`` is the event encoded without seq, ``kind`` is ``d`` for a text delta
and ``e`` for anything else, ``sig`` an HMAC-SHA256 (128 bits, hex) over the
kind, session id, epoch, seq and body, or ``-`` when signing is off. Global
events and permission decisions travel as ``sig|body``, signed over a scope
name and the body.

The signature binds an event to its place: a captured envelope moved to
another session, another epoch or another seq fails the check. So the
publisher must know the epoch and seq before they are committed (see
``RedisBroker``), and receivers verify against the epoch and seq they are
told.

A receiving process stamps the seq into the body (``codec.with_seq``) and
sends the result to every local subscriber: nothing is re-encoded.

Signing authenticates what producers wrote and where: a stray publisher on
the backplane server cannot make up events or renumber real ones. It does
not stop someone who can write to the server from disrupting it (deleting
keys or entries); an exact copy of an envelope at its own place is a
duplicate, dropped as such.
"""

from __future__ import annotations

import hashlib
import hmac

import attrs

from .codec import with_seq
from .errors import ForgedEnvelope

__all__ = ("Envelope", "Signer")

UNSIGNED = "-"


@attrs.frozen
class Envelope:
    """A session event as received: numbered, verified, ready to send."""

    epoch: str
    seq: int
    is_delta: bool
    text: str


class Signer:
    """Signs and verifies envelopes with a shared secret (None: no signing)."""

    def __init__(self, secret: str | bytes | None) -> None:
        self._key = secret.encode() if isinstance(secret, str) else secret

    @property
    def signing(self) -> bool:
        return self._key is not None

    def _sign(self, *fields: str) -> str:
        if self._key is None:
            return UNSIGNED
        # Each field length-prefixed: no two field lists sign the same bytes. Any
        # str may be a session id, lone surrogates included (JSON carries them).
        message = "".join([f"{len(field)}:{field}" for field in fields])
        data = message.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()[:32]

    def _check(self, sig: str, *fields: str) -> None:
        if self._key is None:
            return
        if not hmac.compare_digest(sig, self._sign(*fields)):
            raise ForgedEnvelope(f"bad signature for {fields[:-1]!r:.80}")

    def pack_entry(self, session_id: str, epoch: str, seq: int, body: str, is_delta: bool) -> str:
        """The history entry ``seq|sig|kind|body`` of a session event at (epoch, seq)."""
        kind = "d" if is_delta else "e"
        return f"{seq}|{self._sign(kind, session_id, epoch, str(seq), body)}|{kind}|{body}"

    def unpack_entry(self, session_id: str, epoch: str, entry: str) -> Envelope:
        """A history entry ``seq|sig|kind|body`` of ``session_id`` in ``epoch``."""
        try:
            seq_text, sig, kind, body = entry.split("|", 3)
            seq = int(seq_text)
        except ValueError:
            raise ForgedEnvelope(f"malformed entry {entry!r:.80}") from None
        if kind not in ("d", "e"):
            raise ForgedEnvelope(f"unknown kind {kind!r:.10}")
        self._check(sig, kind, session_id, epoch, str(seq), body)
        return Envelope(epoch, seq, kind == "d", with_seq(body, seq))

    def unpack_message(self, session_id: str, message: str) -> Envelope:
        """A published session message ``epoch|seq|sig|kind|body``."""
        epoch, _, entry = message.partition("|")
        return self.unpack_entry(session_id, epoch, entry)

    def pack(self, scope: str, body: str) -> str:
        return f"{self._sign(scope, body)}|{body}"

    def unpack(self, scope: str, message: str) -> str:
        sig, sep, body = message.partition("|")
        if not sep:
            raise ForgedEnvelope(f"malformed message {message!r:.80}")
        self._check(sig, scope, body)
        return body
