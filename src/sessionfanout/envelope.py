"""What travels on a backplane, and its signature; sans-IO.

A session event travels as ``sig|kind|body``: ``body`` is the event encoded
without seq, ``kind`` is ``d`` for a text delta and ``e`` for anything else,
``sig`` an HMAC-SHA256 (128 bits, hex) over the session id, kind and body, or
``-`` when signing is off. The backplane prefixes the seq it assigns
(``seq|sig|kind|body`` is a history entry) and, on the wire, the epoch.
Global events and permission decisions travel as ``sig|body``.

A receiving process stamps the seq into the body (``codec.with_seq``) and
sends the result to every local subscriber: nothing is re-encoded.

Signing authenticates what producers wrote: a stray publisher on the
backplane server cannot make up events. It does not stop someone who can
write to the server from disrupting it (deleting keys, replaying entries).
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

    def _sign(self, scope: str, body: str) -> str:
        if self._key is None:
            return UNSIGNED
        message = f"{len(scope)}:{scope}{body}".encode()  # length-prefixed: unambiguous
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def _check(self, sig: str, scope: str, body: str) -> None:
        if self._key is None:
            return
        if not hmac.compare_digest(sig, self._sign(scope, body)):
            raise ForgedEnvelope(f"bad signature for {scope!r:.80}")

    def pack_event(self, session_id: str, body: str, is_delta: bool) -> str:
        kind = "d" if is_delta else "e"
        return f"{self._sign(f'{session_id}|{kind}', body)}|{kind}|{body}"

    def unpack_entry(self, session_id: str, epoch: str, entry: str) -> Envelope:
        """A history entry ``seq|sig|kind|body`` of ``session_id``."""
        try:
            seq_text, sig, kind, body = entry.split("|", 3)
            seq = int(seq_text)
        except ValueError:
            raise ForgedEnvelope(f"malformed entry {entry!r:.80}") from None
        if kind not in ("d", "e"):
            raise ForgedEnvelope(f"unknown kind {kind!r:.10}")
        self._check(sig, f"{session_id}|{kind}", body)
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
