from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionfanout import ProtocolError, codec
from sessionfanout import events as ev
from sessionfanout.checks import wire_name
from tests import strategies


@given(strategies.server_events)
def test_every_server_event_round_trips(event: Any) -> None:
    assert event == codec.decode_server(codec.encode(event))


@given(strategies.server_events)
def test_the_compiled_encoders_write_what_the_converter_says(event: Any) -> None:
    """encode() is generated per class for speed; it must equal the converter's JSON."""
    expected = json.dumps(codec.unstructure(event), separators=(",", ":"))
    assert expected == codec.encode(event)


def test_encode_delta_is_a_deprecated_alias_of_encoding_the_event() -> None:
    with pytest.deprecated_call():
        text = codec.encode_delta("s1", "hi", "t1")
    assert codec.encode(ev.TextDelta("s1", "hi", "t1")) == text


@given(strategies.client_messages)
def test_every_client_message_round_trips(message: Any) -> None:
    wire = {"type": message.TYPE}
    for field in attrs.fields(type(message)):
        value = getattr(message, field.name)
        if value is not None:
            wire[wire_name(field.name)] = value
    assert message == codec.decode_client(json.dumps(wire))


@given(strategies.session_events, strategies.counts)
def test_with_seq_equals_encoding_with_the_seq(event: Any, seq: int) -> None:
    """The hub stamps seq on an encoded frame; it must equal encoding it in place."""
    unsequenced = attrs.evolve(event, seq=None)
    assert codec.encode(attrs.evolve(event, seq=seq)) == codec.with_seq(
        codec.encode(unsequenced), seq
    )


def test_encode_is_compact_camel_case_and_omits_absent_optionals() -> None:
    event = ev.ToolResult("s1", "tu1", "bash", "ok", seq=3)
    expected = (
        '{"type":"tool_result","sessionId":"s1","toolUseId":"tu1",'
        '"toolName":"bash","result":"ok","seq":3}'
    )
    assert expected == codec.encode(event)


def test_encode_keeps_explicit_false_and_required_empty_objects() -> None:
    assert '"isIntermediate":false' in codec.encode(
        ev.TextComplete("s", "t", is_intermediate=False)
    )
    assert '"toolInput":{}' in codec.encode(ev.ToolStart("s", "n", "u"))


def test_encode_is_ascii_so_length_is_bytes() -> None:
    text = codec.encode(ev.TextDelta("s", "héllo 世界 🎉"))
    assert len(text) == len(text.encode())
    assert "héllo 世界 🎉" == json.loads(text)["delta"]


@given(st.text() | st.binary())
def test_decode_client_raises_only_protocol_error_on_any_input(raw: str | bytes) -> None:
    with contextlib.suppress(ProtocolError):
        codec.decode_client(raw)


@given(strategies.json_values, st.sampled_from(["subscribe", "unsubscribe", "permission_response"]))
def test_decode_client_on_any_json_shape_raises_only_protocol_error(value: Any, kind: str) -> None:
    for candidate in (
        value,
        {"type": kind, "sessionId": value, "requestId": value, "allowed": value},
    ):
        codes = {"invalid_json", "invalid_message", "unknown_type"}
        try:
            codec.decode_client(json.dumps(candidate))
        except ProtocolError as exc:
            assert exc.code in codes  # noqa: PT017 - most candidates decode; pytest.raises cannot say "maybe"


@pytest.mark.parametrize(
    ("raw", "code", "names"),
    [
        ("{", "invalid_json", "JSON"),
        (b"\xff\xfe", "invalid_json", "JSON"),
        ("[" * 100_000 + "]" * 100_000, "invalid_json", "JSON"),
        ('{"type":"subscribe","sessionId":"a","lastSeq":NaN}', "invalid_json", "NaN"),
        ('{"type":"subscribe","sessionId":"a","lastSeq":Infinity}', "invalid_json", "Infinity"),
        ('{"type":"subscribe","sessionId":"a","x":-Infinity}', "invalid_json", "Infinity"),
        (
            '{"type":"unsubscribe","type":"subscribe","sessionId":"a"}',
            "invalid_json",
            "duplicate key 'type'",
        ),
        ('{"type":"subscribe","sessionId":"a","x":{"k":1,"k":2}}', "invalid_json", "'k'"),
        (
            '{"type":"subscribe","sessionId":"a","lastSeq":9007199254740992}',
            "invalid_message",
            "'lastSeq'",
        ),
        ("[]", "invalid_message", "object"),
        ('"subscribe"', "invalid_message", "object"),
        ("{}", "invalid_message", "'type'"),
        ('{"type":7}', "invalid_message", "'type'"),
        ('{"type":"dance"}', "unknown_type", "dance"),
        ('{"type":"subscribe"}', "invalid_message", "'sessionId'"),
        ('{"type":"subscribe","sessionId":5}', "invalid_message", "'sessionId'"),
        ('{"type":"subscribe","sessionId":""}', "invalid_message", "'sessionId'"),
        ('{"type":"subscribe","sessionId":"' + "x" * 257 + '"}', "invalid_message", "'sessionId'"),
        ('{"type":"subscribe","sessionId":"a","lastSeq":"3"}', "invalid_message", "'lastSeq'"),
        ('{"type":"subscribe","sessionId":"a","lastSeq":true}', "invalid_message", "'lastSeq'"),
        ('{"type":"subscribe","sessionId":"a","lastSeq":-1}', "invalid_message", "'lastSeq'"),
        ('{"type":"subscribe","sessionId":"a","lastSeq":1.5}', "invalid_message", "'lastSeq'"),
        ('{"type":"subscribe","sessionId":"a","epoch":1}', "invalid_message", "'epoch'"),
        ('{"type":"unsubscribe"}', "invalid_message", "'sessionId'"),
        ('{"type":"permission_response","requestId":"r"}', "invalid_message", "'allowed'"),
        (
            '{"type":"permission_response","requestId":"r","allowed":1}',
            "invalid_message",
            "'allowed'",
        ),
        ('{"type":"permission_response","allowed":true}', "invalid_message", "'requestId'"),
        (
            '{"type":"permission_response","requestId":"r","allowed":true,"alwaysAllow":"y"}',
            "invalid_message",
            "'alwaysAllow'",
        ),
    ],
)
def test_each_error_class_yields_its_code_and_names_the_field(
    raw: str | bytes, code: str, names: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        codec.decode_client(raw)
    assert code == caught.value.code
    assert names in caught.value.message


def test_too_large_is_refused_before_parsing() -> None:
    raw = '{"type":"subscribe","sessionId":"a","pad":"' + "x" * 100 + '"}'
    with pytest.raises(ProtocolError) as caught:
        codec.decode_client(raw, max_bytes=64)
    assert "too_large" == caught.value.code
    with pytest.raises(ProtocolError) as caught:
        codec.decode_client("{" * 100, max_bytes=64)  # not JSON either: size wins, unparsed
    assert "too_large" == caught.value.code


def test_size_limit_counts_utf8_bytes_not_characters() -> None:
    raw = '{"type":"unsubscribe","sessionId":"' + "é" * 20 + '"}'
    assert len(raw) <= 64 < len(raw.encode())
    with pytest.raises(ProtocolError) as caught:
        codec.decode_client(raw, max_bytes=64)
    assert "too_large" == caught.value.code


def test_unknown_extra_fields_are_ignored() -> None:
    message = codec.decode_client('{"type":"unsubscribe","sessionId":"a","extra":[1,2]}')
    assert ev.Unsubscribe("a") == message


def test_errors_carry_the_request_type_when_known() -> None:
    with pytest.raises(ProtocolError) as caught:
        codec.decode_client('{"type":"subscribe"}')
    assert "subscribe" == caught.value.request_type


def test_custom_types_decode_to_custom_frames() -> None:
    raw = '{"type":"start_agent","sessionId":"a","n":3}'
    expected = ev.CustomFrame("start_agent", {"type": "start_agent", "sessionId": "a", "n": 3})
    assert expected == codec.decode_client(raw, custom_types={"start_agent"})
