"""Hypothesis strategies for sessionfanout's values, kept in one place."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from sessionfanout import events as ev

ids = st.text(min_size=1, max_size=12)
session_ids = st.sampled_from(["s1", "s2", "s3", "s4"])
optional_text = st.none() | st.text(max_size=20)
optional_bool = st.none() | st.booleans()
seqs = st.none() | st.integers(min_value=1, max_value=2**53)
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
tool_inputs = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

session_events: st.SearchStrategy[Any] = st.one_of(
    st.builds(ev.TextDelta, ids, st.text(), optional_text, seqs),
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
server_events: st.SearchStrategy[Any] = st.one_of(
    session_events,
    st.builds(ev.ConfigChanged, st.sampled_from(["config", "theme"])),
    st.builds(ev.Connected, st.integers(min_value=0, max_value=2**53), ids),
    st.builds(ev.Subscribed, ids, st.integers(min_value=0), st.text(), st.booleans()),
    st.builds(ev.Unsubscribed, ids),
    st.builds(ev.ClientError, st.text(), st.text(), optional_text),
)
client_messages: st.SearchStrategy[Any] = st.one_of(
    st.builds(ev.Subscribe, ids, st.none() | st.integers(min_value=0), st.none() | st.text()),
    st.builds(ev.Unsubscribe, ids),
    st.builds(ev.PermissionResponse, ids, st.booleans(), optional_bool),
)
