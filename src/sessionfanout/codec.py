"""JSON text frames to and from the value classes of ``events``.

The module owns one cattrs converter; conversion happens here and nowhere else.
``encode`` runs once per event (the hub sends the same string to every
subscriber). ``decode_client`` turns any client frame into a
``ClientMessage`` or raises ``ProtocolError`` with the PROTOCOL.md code and a
message naming the field.
"""

from __future__ import annotations

import json
import typing
import warnings
from collections.abc import Callable, Collection
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .checks import json_problem, wire_name
from .errors import InvalidArgument, ProtocolError
from .events import (
    Abort,
    ClientError,
    ClientMessage,
    Complete,
    ConfigChanged,
    Connected,
    CustomFrame,
    Error,
    PermissionRequest,
    PermissionResponse,
    PermissionTimeout,
    Presence,
    ServerEvent,
    Subscribe,
    Subscribed,
    TextComplete,
    TextDelta,
    ToolResult,
    ToolStart,
    Unsubscribe,
    Unsubscribed,
)

__all__ = (
    "DEFAULT_MAX_FRAME_BYTES",
    "decode_client",
    "decode_server",
    "encode",
    "encode_delta",
    "with_seq",
)

DEFAULT_MAX_FRAME_BYTES: Final = 1024 * 1024
"""PROTOCOL.md: frames over the limit (default 1 MiB) are rejected unparsed."""

T = TypeVar("T")

SERVER_TYPES: Final[dict[str, type[Any]]] = {
    cls.TYPE: cls
    for cls in (
        Connected,
        TextDelta,
        TextComplete,
        ToolStart,
        ToolResult,
        Complete,
        Error,
        PermissionRequest,
        PermissionTimeout,
        ConfigChanged,
        Subscribed,
        Unsubscribed,
        Presence,
        ClientError,
    )
}
SERVER_CLASSES: Final = frozenset(SERVER_TYPES.values())
CLIENT_TYPES: Final[dict[str, type[Any]]] = {
    cls.TYPE: cls for cls in (Subscribe, Unsubscribe, PermissionResponse, Abort)
}


def _strict(kind: type[T], expected: str) -> Callable[[Any, Any], T]:
    # cattrs' default hooks coerce (str(5) == "5", int("7") == 7); the wire
    # protocol says the types are checked, so a wrong type is an error.
    def structure(value: Any, _: Any) -> T:
        if type(value) is not kind:
            raise TypeError(f"expected {expected}, got {_json_kind(value)}")
        return value

    return structure


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(bool, _strict(bool, "a boolean"))
    converter.register_structure_hook(int, _strict(int, "an integer"))

    def renames(cls: type[Any], *, omit: bool) -> dict[str, Any]:
        return {
            field.name: override(
                rename=wire_name(field.name), omit_if_default=omit and field.default is None
            )
            for field in attrs.fields(cls)
        }

    converter.register_unstructure_hook_factory(
        attrs.has, lambda cls: make_dict_unstructure_fn(cls, converter, **renames(cls, omit=True))
    )
    converter.register_structure_hook_factory(
        attrs.has, lambda cls: make_dict_structure_fn(cls, converter, **renames(cls, omit=False))
    )
    return converter


_converter: Final = _make_converter()


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _make_dumps() -> Callable[[Any], str]:
    # json.dumps builds a new C encoder on every call, which costs more than
    # encoding a small frame; build it once. Compact, ASCII-only output.
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(separators=(",", ":")).encode
    encoder = c_make_encoder(
        None, _refuse, encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return lambda value: "".join(encoder(value, 0))


_dumps: Final = _make_dumps()


def _dumps_strict(value: Any) -> str:
    """A free-form JSON field (``toolInput``) as strict JSON, or ``InvalidArgument``.

    Checked again here, not only when the event was made: the dict inside a
    frozen event can still be changed afterwards.
    """
    problem = json_problem(value)
    if problem is not None:
        raise InvalidArgument(f"cannot encode: {problem}")
    return _dumps(value)


_hooks: dict[type[Any], Callable[[Any], dict[str, Any]]] = {}


def unstructure(event: ServerEvent) -> dict[str, Any]:
    """The JSON object of a server frame, ``type`` first (through the converter)."""
    cls = type(event)
    hook = _hooks.get(cls)
    if hook is None:
        hook = _hooks[cls] = _converter.get_unstructure_hook(cls)
    return {"type": event.TYPE, **hook(event)}


def _value_expression(kind: Any, index: int, namespace: dict[str, Any]) -> str:
    """The JSON of a field of type ``kind`` as an expression of ``{v}``."""
    if kind is str or typing.get_origin(kind) is typing.Literal:
        return "esc({v})"
    if kind is bool:
        return "('true' if {v} else 'false')"
    if kind is int:
        return "str({v})"
    if attrs.has(kind):
        namespace[f"nested{index}"] = _compile_encoder(kind, top=False)
        return f"nested{index}({{v}})"
    if typing.get_origin(kind) is tuple:  # tuple[SomeAttrsClass, ...]
        namespace[f"nested{index}"] = _compile_encoder(typing.get_args(kind)[0], top=False)
        return f"'[' + ','.join(map(nested{index}, {{v}})) + ']'"
    return "dumps({v})"


def _compile_encoder(cls: type[Any], *, top: bool) -> Callable[[Any], str]:
    """Source for ``encode`` of one class, compiled once.

    Encoding is the per-event cost of fan-out, so each class gets a function
    that writes its JSON directly (strings through the json module's C
    escaper) instead of building a dict and serializing it. It produces
    exactly ``json.dumps(unstructure(event))`` in compact ASCII form; a
    property test holds it to that.
    """
    hints = typing.get_type_hints(cls)
    namespace: dict[str, Any] = {"esc": encode_basestring_ascii, "dumps": _dumps_strict}
    lines = [f"def encode_{cls.__name__}(e):"]
    # Required fields (they come first) join the opening in one expression;
    # each optional one is appended only when set.
    opening = "{" + f'"type":{encode_basestring_ascii(cls.TYPE)},' if top else "{"
    required = [repr(opening)]
    for index, field in enumerate(attrs.fields(cls)):
        kind = hints[field.name]
        optional = type(None) in typing.get_args(kind)
        if optional:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        value = _value_expression(kind, index, namespace)
        key = repr(("," if index else "") + f'"{wire_name(field.name)}":')
        if not optional:
            # Omitted optional fields never leave a comma behind: none precedes these.
            assert len(lines) == 1, f"{cls.__name__}: required fields must come first"
            required += [key, value.format(v=f"e.{field.name}")]
            continue
        if len(lines) == 1:
            lines.append(f"    out = {' + '.join(required)}")
        lines.append(f"    v = e.{field.name}")
        lines.append("    if v is not None:")
        lines.append(f"        out += {key} + {value.format(v='v')}")
    if len(lines) == 1:
        lines.append(f"    out = {' + '.join(required)}")
    lines.append("    return out + '}'")
    exec("\n".join(lines), namespace)
    encoder: Callable[[Any], str] = namespace[f"encode_{cls.__name__}"]
    return encoder


_encoders: Final[dict[type[Any], Callable[[Any], str]]] = {
    cls: _compile_encoder(cls, top=True) for cls in SERVER_TYPES.values()
}


def encode(event: ServerEvent) -> str:
    """One compact JSON text frame. ASCII only, so ``len(text)`` is its size in bytes."""
    return _encoders[type(event)](event)


def encode_delta(session_id: str, delta: str, turn_id: str | None) -> str:
    """Deprecated: ``encode(TextDelta(session_id, delta, turn_id))``."""
    warnings.warn(
        "encode_delta is deprecated; use encode(TextDelta(...))", DeprecationWarning, stacklevel=2
    )
    return encode(TextDelta(session_id, delta, turn_id))


def with_seq(text: str, seq: int) -> str:
    """``text`` (a session event encoded without ``seq``) with ``seq`` set.

    Equal to encoding the event with ``seq`` in place, because ``seq`` is the
    last field of every session event; the hub encodes once and stamps the
    number on, and a backplane can do the same without decoding.
    """
    return f'{text[:-1]},"seq":{seq}}}'


def decode_server(raw: str | bytes) -> ServerEvent:
    """A server frame (for clients, tools and tests); raises ``ValueError`` when malformed."""
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("type") not in SERVER_TYPES:
        raise ValueError(f"not a server frame: {raw!r:.80}")
    event: ServerEvent = _converter.structure(data, SERVER_TYPES[data["type"]])
    return event


def decode_client(
    raw: str | bytes,
    *,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    custom_types: Collection[str] = (),
) -> ClientMessage:
    """Decode one client frame or raise ``ProtocolError``; never anything else.

    ``custom_types`` are the application's own frame types: they come back as
    ``CustomFrame`` with the whole object for the application to check.
    """
    if _size_exceeds(raw, max_bytes):
        raise ProtocolError("too_large", f"frame is larger than {max_bytes} bytes")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError is a ValueError; RecursionError comes from deep nesting.
        raise ProtocolError("invalid_json", f"frame is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(
            "invalid_message", f"frame must be a JSON object, got {_json_kind(data)}"
        )
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            "invalid_message", f"field 'type' must be a string, got {_json_kind(kind)}"
        )
    cls = CLIENT_TYPES.get(kind)
    if cls is None:
        if kind in custom_types:
            return CustomFrame(type=kind, data=data)
        raise ProtocolError("unknown_type", f"unknown message type {kind!r:.80}", kind)
    try:
        message: ClientMessage = _converter.structure(data, cls)
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        raise ProtocolError("invalid_message", _describe(exc), kind) from None
    return message


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A duplicate key makes a frame mean different things to different
    # parsers ({"type":"unsubscribe","type":"subscribe"}): refuse it.
    data = dict(pairs)
    if len(data) != len(pairs):
        keys = [key for key, _ in pairs]
        duplicate = next(key for key in data if keys.count(key) > 1)
        raise ValueError(f"duplicate key {duplicate!r:.80}")
    return data


def _size_exceeds(raw: str | bytes, max_bytes: int) -> bool:
    if isinstance(raw, bytes | bytearray):
        return len(raw) > max_bytes
    # A character takes 1 to 4 bytes in UTF-8: measure only when it matters.
    if len(raw) > max_bytes:
        return True
    return len(raw) * 4 > max_bytes and len(raw.encode("utf-8", "surrogatepass")) > max_bytes


def _describe(exc: BaseException) -> str:
    """A one-line message naming the first bad field by its wire name."""
    errors = exc.exceptions if isinstance(exc, ClassValidationError) else [exc]
    for error in errors:
        for note in getattr(error, "__notes__", ()):
            if isinstance(note, AttributeValidationNote):
                field = wire_name(note.name)
                if isinstance(error, KeyError):
                    return f"field {field!r} is required"
                return f"field {field!r}: {error}"
    # attrs validators name the field themselves.
    return str(errors[0]) if errors else str(exc)
