"""Server-Sent Events framing: every frame round-trips, ids resume exactly."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionfanout import Complete, InvalidArgument, Subscribed, codec
from sessionfanout.events import SESSION_EVENT_TYPES
from sessionfanout.history import new_epoch
from sessionfanout.sse import (
    HEARTBEAT,
    SseFramer,
    encode_event,
    event_id,
    parse_last_event_id,
)
from tests import strategies


def parse(stream: str) -> list[dict[str, str]]:
    """What a browser's EventSource makes of ``stream`` (the HTML spec's rules)."""
    events, fields, data = [], {}, []
    for line in re.split(r"\r\n|\r|\n", stream):
        if line == "":
            if data or fields:
                events.append({**fields, "data": "\n".join(data)})
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    return events


epochs = st.text(st.characters(exclude_characters="\r\n\0", codec="utf-8"), min_size=1, max_size=30)


@given(strategies.server_events, epochs, strategies.counts)
def test_every_frame_round_trips_and_session_events_carry_their_id(
    event: Any, epoch: str, seq: int
) -> None:
    framer = SseFramer()
    session_id = getattr(event, "session_id", None)
    if type(event) in SESSION_EVENT_TYPES:
        event = attrs.evolve(event, seq=max(seq, 1))
        framer.frame(codec.encode(Subscribed(session_id, 0, epoch, False)))
    text = codec.encode(event)
    [parsed] = parse(framer.frame(text))
    assert text == parsed["data"]
    assert event.TYPE == parsed["event"]
    if type(event) in SESSION_EVENT_TYPES:
        assert event_id(epoch, event.seq) == parsed["id"]
        assert (epoch, event.seq) == parse_last_event_id(parsed["id"])
    else:
        assert "id" not in parsed


@given(st.text(), st.sampled_from([None, "text_delta"]))
def test_data_never_holds_a_raw_line_break_and_comes_back_whole(data: str, kind: Any) -> None:
    stream = encode_event(data, kind)
    for line in stream.split("\n"):
        assert "\r" not in line
    [parsed] = parse(stream)
    assert re.sub(r"\r\n|\r", "\n", data) == parsed["data"]


@given(st.integers(min_value=0, max_value=2**53 - 1))
def test_ids_survive_every_epoch_the_hub_makes(seq: int) -> None:
    epoch = new_epoch()
    assert (epoch, seq) == parse_last_event_id(event_id(epoch, seq))


@given(epochs, strategies.counts)
def test_an_epoch_with_colons_still_parses_by_its_last_colon(epoch: str, seq: int) -> None:
    assert (epoch, seq) == parse_last_event_id(event_id(epoch, seq))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        ":5",
        "e:",
        "e:-1",
        "e:1.5",
        "e:\u0663",
        "e:99999999999999999999",
        "a\nb:1",
        5,
        None,
    ],
)
def test_a_malformed_last_event_id_is_refused_clearly(value: Any) -> None:
    with pytest.raises(InvalidArgument, match="Last-Event-ID"):
        parse_last_event_id(value)


def test_a_frame_before_its_sessions_subscribed_has_no_id_to_resume_from() -> None:
    framer = SseFramer()
    [parsed] = parse(framer.frame('{"type":"complete","sessionId":"s","seq":3}'))
    assert "id" not in parsed


def test_the_heartbeat_is_a_comment_a_client_ignores() -> None:
    assert [] == parse(HEARTBEAT)
    assert HEARTBEAT.startswith(":")


def test_streams_on_different_epochs_each_get_their_own_ids_for_the_same_frame() -> None:
    text = codec.encode(Complete("s", seq=7))
    framers = {epoch: SseFramer() for epoch in ("e1", "e2", "e1 again")}
    for epoch, framer in framers.items():
        framer.frame(codec.encode(Subscribed("s", 0, epoch.split()[0], False)))
    ids = {epoch: parse(framer.frame(text))[0]["id"] for epoch, framer in framers.items()}
    assert {"e1": "e1:7", "e2": "e2:7", "e1 again": "e1:7"} == ids
    late = SseFramer()
    assert "id" not in parse(late.frame(text))[0], "no subscribed seen: no id"
