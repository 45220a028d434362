"""Hypothesis strategies for sessionfanout's values, kept in one place."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from sessionfanout import events as ev
from sessionfanout.errors import CLIENT_ERROR_CODES

ids = st.text(min_size=1, max_size=12)
session_ids = st.sampled_from(["s1", "s2", "s3", "s4"])
optional_text = st.none() | st.text(max_size=20)
optional_bool = st.none() | st.booleans()
MAX_SAFE = 2**53 - 1
counts = st.integers(min_value=0, max_value=MAX_SAFE)
seqs = st.none() | st.integers(min_value=1, max_value=MAX_SAFE)
json_scalars = st.none() | st.booleans() | st.integers(-MAX_SAFE, MAX_SAFE) | st.text(max_size=10)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
tool_inputs = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

session_events: st.SearchStrategy[Any] = st.one_of(
    st.builds(ev.TextDelta, ids, st.text(), optional_text, seqs, seqs),
    st.builds(ev.TextComplete, ids, st.text(), optional_bool, optional_text, seqs),
    st.builds(
        ev.ToolStart,
        ids,
        st.text(),
        ids,
        tool_inputs,
        optional_text,
        optional_text,
        optional_text,
        seqs,
    ),
    st.builds(ev.ToolResult, ids, ids, st.text(), st.text(), optional_text, optional_bool, seqs),
    st.builds(ev.Complete, ids, seqs),
    st.builds(ev.Error, ids, st.text(), seqs),
    st.builds(
        ev.PermissionRequest,
        ids,
        st.builds(ev.PermissionRequestInfo, ids, st.text(), st.text(), st.text()),
        seqs,
    ),
    st.builds(ev.PermissionTimeout, ids, ids, seqs),
)
members = st.lists(
    st.builds(ev.PresenceMember, ids.filter(lambda i: len(i) <= 256), st.none() | tool_inputs),
    max_size=3,
).map(tuple)
server_events: st.SearchStrategy[Any] = st.one_of(
    session_events,
    st.builds(ev.ConfigChanged, st.sampled_from(["config", "theme"])),
    st.builds(ev.Connected, counts, ids),
    st.builds(ev.Subscribed, ids, counts, st.text(), st.booleans()),
    st.builds(ev.Unsubscribed, ids, optional_text),
    st.builds(ev.Presence, ids, members),
    st.builds(ev.Presence, ids, st.none(), members.filter(bool), members),
    st.builds(ev.Presence, ids, st.none(), members, members.filter(bool)),
    st.builds(
        ev.ClientError, st.sampled_from(sorted(CLIENT_ERROR_CODES)), st.text(), optional_text
    ),
)
client_messages: st.SearchStrategy[Any] = st.one_of(
    st.builds(
        ev.Subscribe, ids, st.none() | counts, st.none() | st.text(), st.none(), optional_bool
    ),
    st.builds(ev.Unsubscribe, ids),
    st.builds(ev.PermissionResponse, ids, st.booleans(), optional_bool),
)

# Arbitrary Python values, for the argument checks: wrong types, NaN and
# infinities, huge integers, lone surrogates, bytes, sets, objects, nesting.
odd_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**53, -(2**53), 10**400])
    | st.floats()
    | st.text()
    | st.sampled_from(["", "\ud800", "a\udfffb", "x" * 300])
    | st.binary(max_size=8)
    | st.builds(object)
    | st.frozensets(st.integers(), max_size=3)
)
anything: st.SearchStrategy[Any] = st.recursive(
    odd_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.sets(st.integers(), max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.integers() | st.none(), inner, max_size=3)
    ),
    max_leaves=8,
)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError(f"duplicate keys in {pairs!r:.80}")
    return data


def strict_loads(text: str) -> Any:
    """The oracle for "a browser parses it": RFC 8259 JSON, no NaN or
    Infinity, no duplicate keys (what ``JSON.parse`` accepts unambiguously)."""
    return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
