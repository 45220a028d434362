"""Signer: an envelope's signature binds the event to its session, epoch and seq."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionfanout.codec import with_seq
from sessionfanout.envelope import Envelope, Signer
from sessionfanout.errors import ForgedEnvelope

BODY = '{"type":"complete","sessionId":"s"}'
signer = Signer("s3cret")


@given(
    session_id=st.text(min_size=1, max_size=20),
    epoch=st.text(alphabet=st.characters(exclude_characters="|"), min_size=1, max_size=12),
    seq=st.integers(min_value=1, max_value=2**53),
    is_delta=st.booleans(),
)
def test_an_entry_unpacks_at_its_place_with_the_seq_stamped(
    session_id: str, epoch: str, seq: int, is_delta: bool
) -> None:
    entry = signer.pack_entry(session_id, epoch, seq, BODY, is_delta)
    expected = Envelope(epoch, seq, is_delta, with_seq(BODY, seq))
    assert expected == signer.unpack_entry(session_id, epoch, entry)
    assert expected == signer.unpack_message(session_id, f"{epoch}|{entry}")


def moved_elsewhere(entry: str) -> dict[str, tuple[str, str, str]]:
    """(session id, epoch, entry) for the entry of ``s``, ``e1``, seq 1 put elsewhere."""
    _, _, placeless = entry.partition("|")
    return {
        "renumbered": ("s", "e1", f"2|{placeless}"),
        "another epoch": ("s", "e2", entry),
        "another session": ("t", "e1", entry),
        "another kind": ("s", "e1", entry.replace("|e|", "|d|")),
    }


@pytest.mark.parametrize("move", ["renumbered", "another epoch", "another session", "another kind"])
def test_an_entry_put_anywhere_else_fails_the_check(move: str) -> None:
    session_id, epoch, entry = moved_elsewhere(signer.pack_entry("s", "e1", 1, BODY, False))[move]
    with pytest.raises(ForgedEnvelope):
        signer.unpack_entry(session_id, epoch, entry)
    with pytest.raises(ForgedEnvelope):
        signer.unpack_message(session_id, f"{epoch}|{entry}")


def test_an_entry_signed_with_another_secret_fails_the_check() -> None:
    entry = Signer("other").pack_entry("s", "e1", 1, BODY, False)
    with pytest.raises(ForgedEnvelope):
        signer.unpack_entry("s", "e1", entry)


@pytest.mark.parametrize("entry", ["", "1|sig|e", "x|sig|e|{}", "1|sig|z|{}"])
def test_a_malformed_entry_is_forged_even_without_signing(entry: str) -> None:
    with pytest.raises(ForgedEnvelope):
        Signer(None).unpack_entry("s", "e1", entry)


def test_without_a_secret_entries_are_unsigned_and_not_checked() -> None:
    unsigned = Signer(None)
    entry = unsigned.pack_entry("s", "e1", 1, BODY, True)
    assert f"1|-|d|{BODY}" == entry
    assert 2 == unsigned.unpack_message("t", f"e2|2|-|d|{BODY}").seq


def test_a_global_message_is_bound_to_its_scope() -> None:
    message = signer.pack("global", "{}")
    assert "{}" == signer.unpack("global", message)
    with pytest.raises(ForgedEnvelope):
        signer.unpack("permission", message)
