"""The eventstream wire format the Greengrass IPC speaks (what ``awscrt.eventstream`` frames on the client side).

One frame::

    total length (u32) | headers length (u32) | prelude CRC32 (u32) | headers | payload | message CRC32 (u32)

big-endian, both CRCs zlib's CRC32 (the prelude's over the first 8 bytes, the message's over everything before
it). A header is ``name length (u8) | name (UTF-8) | type (u8) | value``; the types are those of
``awscrt.eventstream.HeaderType`` (0 true, 1 false, 2 byte, 3 int16, 4 int32, 5 int64, 6 bytes, 7 string,
8 timestamp in ms, 9 UUID), bytes and strings prefixed by a u16 length. The RPC layer on top uses the int32
headers ``:message-type``, ``:message-flags`` and ``:stream-id`` (:class:`MessageType`, flags below).

awscrt exposes no encoder or decoder of its own for a server, so this module frames by hand with
``zlib.crc32``; the tests hold it to ``awscrt``'s client byte for byte (a connect, requests, streams) and to
bad CRCs, lengths and truncations. Limits are aws-c-event-stream's: 16 MiB a message, 128 KiB of headers.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

__all__ = [
    "CONNECTION_ACCEPTED",
    "MAX_HEADERS_BYTES",
    "MAX_MESSAGE_BYTES",
    "TERMINATE_STREAM",
    "EventStreamMessage",
    "FrameDecoder",
    "FrameTemplate",
    "FramingError",
    "HeaderType",
    "MessageType",
    "encode",
]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_HEADERS_BYTES = 128 * 1024
_PRELUDE = 12
_OVERHEAD = 16

CONNECTION_ACCEPTED = 0x1
TERMINATE_STREAM = 0x2


class FramingError(ValueError):
    """The bytes are not a valid eventstream message (bad CRC, length or header): the connection must close."""


class HeaderType(IntEnum):
    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    BYTE_BUF = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


class MessageType(IntEnum):
    APPLICATION_MESSAGE = 0
    APPLICATION_ERROR = 1
    PING = 2
    PING_RESPONSE = 3
    CONNECT = 4
    CONNECT_ACK = 5
    PROTOCOL_ERROR = 6
    INTERNAL_ERROR = 7


@dataclass
class EventStreamMessage:
    """One decoded (or to-be-encoded) RPC message: its headers, payload and the three RPC headers."""

    headers: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    @property
    def type(self) -> int:
        return int(self.headers.get(":message-type", -1))

    @property
    def flags(self) -> int:
        return int(self.headers.get(":message-flags", 0))

    @property
    def stream_id(self) -> int:
        return int(self.headers.get(":stream-id", 0))


_FIXED = {
    HeaderType.BYTE: ">b",
    HeaderType.INT16: ">h",
    HeaderType.INT32: ">i",
    HeaderType.INT64: ">q",
    HeaderType.TIMESTAMP: ">q",
}


def _typed(name: str, value: Any) -> tuple[HeaderType, Any]:
    if isinstance(value, tuple):
        return HeaderType(value[0]), value[1]
    if isinstance(value, bool):
        return (HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE), value
    if isinstance(value, int):
        return HeaderType.INT32, value
    if isinstance(value, str):
        return HeaderType.STRING, value
    if isinstance(value, bytes | bytearray):
        return HeaderType.BYTE_BUF, bytes(value)
    if isinstance(value, uuid.UUID):
        return HeaderType.UUID, value
    raise FramingError(f"header '{name}': can't encode a {type(value).__name__}")


_ENCODED: dict[tuple[str, type, Any], bytes] = {}
"""Encoded headers of the values that repeat (strings, booleans: a content type, a model name); bounded."""
_INT32 = struct.Struct(">i")


def _encode_header(name: str, raw: Any) -> bytes:
    encoded_name = name.encode("utf-8")
    if not 0 < len(encoded_name) <= 127:
        raise FramingError(f"header name '{name}' must be 1 to 127 bytes")
    kind, value = _typed(name, raw)
    out = struct.pack(">B", len(encoded_name)) + encoded_name + struct.pack(">B", kind)
    if kind in _FIXED:
        return out + struct.pack(_FIXED[kind], value)
    if kind in (HeaderType.BYTE_BUF, HeaderType.STRING):
        data: bytes = value.encode("utf-8") if kind == HeaderType.STRING else value
        if len(data) > 0x7FFF:
            raise FramingError(f"header '{name}' is {len(data)} bytes; at most 32767")
        return out + struct.pack(">H", len(data)) + data
    if kind == HeaderType.UUID:
        uuid_bytes: bytes = value.bytes
        return out + uuid_bytes
    return out


def _encode_headers(headers: Mapping[str, Any]) -> bytes:
    parts: list[bytes] = []
    for name, raw in headers.items():
        kind = type(raw)
        if kind is int:  # an int32 (a stream id, flags): the name's bytes are cached, the value packed
            prefix = _ENCODED.get((name, int, None))
            if prefix is None:
                prefix = _encode_header(name, 0)[:-4]
                if len(_ENCODED) < 1024:
                    _ENCODED[(name, int, None)] = prefix
            try:
                parts.append(prefix + _INT32.pack(raw))
            except struct.error:
                raise FramingError(f"header '{name}': {raw} is not an int32") from None
            continue
        if kind is str or kind is bool:
            key = (name, kind, raw)
            encoded = _ENCODED.get(key)
            if encoded is None:
                encoded = _encode_header(name, raw)
                if len(_ENCODED) < 1024:
                    _ENCODED[key] = encoded
            parts.append(encoded)
            continue
        parts.append(_encode_header(name, raw))
    return b"".join(parts)


def encode(headers: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """One frame. Header values: ``int`` → int32, ``str``, ``bytes``, ``bool``, ``uuid.UUID``, or ``(HeaderType, value)``."""
    head = _encode_headers(headers)
    total = _OVERHEAD + len(head) + len(payload)
    if len(head) > MAX_HEADERS_BYTES or total > MAX_MESSAGE_BYTES:
        raise FramingError(f"a {total}-byte message is over the {MAX_MESSAGE_BYTES}-byte limit")
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", zlib.crc32(body))


_U16 = struct.Struct(">H")
_SIZES = {int(kind): struct.calcsize(fmt) for kind, fmt in _FIXED.items()}
_UNPACK = {int(kind): struct.Struct(fmt).unpack_from for kind, fmt in _FIXED.items()}
_TRUE, _FALSE, _BYTES, _STRING, _UUID = 0, 1, 6, 7, 9  # HeaderType as plain ints: an enum member lookup per header costs
_NAMES: dict[bytes, str] = {}
"""Header names seen, decoded once (a connection sends the same few names in every message); bounded."""


def _name(raw: bytes) -> str:
    name = _NAMES.get(raw)
    if name is None:
        name = raw.decode("utf-8")
        if len(_NAMES) < 256:
            _NAMES[raw] = name
    return name


_STREAM_ID = ":stream-id"
_INT32_KIND = int(HeaderType.INT32)
_SHAPES: dict[bytes, tuple[int, dict[str, Any]]] = {}
"""Header blocks decoded before, keyed by their bytes less the 4 of the ``:stream-id`` value: (where that value is,
the headers). A client sends the same headers on every request of an operation but for the stream id; bounded (256
blocks, 4 offsets: emptied when full)."""
_OFFSETS: list[int] = []
"""Where the ``:stream-id`` value was in the blocks of :data:`_SHAPES` (one or two places: a client's header order)."""


def _headers(data: bytes) -> dict[str, Any]:
    """:func:`_decode_headers`, from :data:`_SHAPES` when only the stream id differs from a block decoded before.

    Exact: the decoder's path through a block depends on its name lengths, names, types and value lengths, never on
    an int32's value, so two blocks equal but for the 4 bytes of the stream id's value decode to the same headers
    but for that value."""
    for offset in _OFFSETS:
        if len(data) < offset + 4:  # a block cut short there is no cached shape's (and must fail as framing)
            continue
        shape = _SHAPES.get(data[:offset] + data[offset + 4 :])
        if shape is not None and shape[0] == offset:
            headers = shape[1].copy()
            (headers[_STREAM_ID],) = _INT32.unpack_from(data, offset)
            return headers
    found: list[int] = []
    headers = _decode_headers(data, found)
    # cached only where the last :stream-id is that int32 (a block naming it twice, the second not an int32, isn't);
    # full: start again, so junk from any client (before it authenticates, too) can't switch the cache off for good
    if found and type(headers.get(_STREAM_ID)) is int:
        if len(_SHAPES) >= 256 or (len(_OFFSETS) >= 4 and found[0] not in _OFFSETS):
            _SHAPES.clear()
            _OFFSETS.clear()
        offset = found[0]
        _SHAPES[data[:offset] + data[offset + 4 :]] = (offset, headers.copy())
        if offset not in _OFFSETS:
            _OFFSETS.append(offset)
    return headers


def _decode_headers(data: bytes, stream_id_at: list[int] | None = None) -> dict[str, Any]:
    """The headers of a block; where the ``:stream-id`` int32's value is goes into ``stream_id_at`` when given."""
    headers: dict[str, Any] = {}
    i, end = 0, len(data)
    try:
        while i < end:
            n = data[i]
            name = _name(data[i + 1 : i + 1 + n])
            i += 1 + n
            kind = data[i]
            i += 1
            value: Any
            if kind == _TRUE:
                value = True
            elif kind == _FALSE:
                value = False
            elif kind in _UNPACK:
                (value,) = _UNPACK[kind](data, i)
                if stream_id_at is not None and kind == _INT32_KIND and name == _STREAM_ID:
                    stream_id_at[:] = [i]
                i += _SIZES[kind]
            elif kind in (_STRING, _BYTES):
                (size,) = _U16.unpack_from(data, i)
                raw = data[i + 2 : i + 2 + size]
                if len(raw) != size:
                    raise FramingError("a header value runs past the headers")
                value = raw.decode("utf-8") if kind == _STRING else raw
                i += 2 + size
            elif kind == _UUID:
                raw = data[i : i + 16]
                if len(raw) != 16:
                    raise FramingError("a UUID header runs past the headers")
                value = uuid.UUID(bytes=raw)
                i += 16
            else:
                raise FramingError(f"malformed headers: unknown header type {kind}")
            if not name:
                raise FramingError("a header has an empty name")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise FramingError(f"malformed headers: {exc}") from None
    if i != end:
        raise FramingError("the headers run past their length")
    return headers


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes as they arrive, get the whole messages back.

    ``max_message`` caps a message's total length (checked on the prelude, before its bytes are buffered).
    """

    def __init__(self, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._pos = 0  # where the next message starts in _buf: what came before is decoded (cut off once drained)

    @property
    def pending(self) -> int:
        """Bytes received that are not a whole message yet."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        return list(self.iter_feed(data))

    def iter_feed(self, data: bytes) -> Iterator[EventStreamMessage]:
        """Like :meth:`feed`, yielding each message as soon as it is whole (a later bad frame raises after them)."""
        self._buf += data
        yield from self._drain()

    def _drain(self) -> Iterator[EventStreamMessage]:
        # messages are read where they are and the buffer is cut once at the end: cutting it after each one moved
        # what follows every time (a 64 KiB read of 300-byte requests: ~200 moves of up to 64 KiB)
        buf = self._buf
        while len(buf) - self._pos >= _PRELUDE:
            start = self._pos
            total, head_len, crc = _PRELUDE_FIELDS.unpack_from(buf, start)
            if zlib.crc32(buf[start : start + 8]) != crc:
                raise FramingError("prelude CRC mismatch")
            if total < _OVERHEAD or head_len > total - _OVERHEAD or head_len > MAX_HEADERS_BYTES:
                raise FramingError(f"impossible lengths (total {total}, headers {head_len})")
            if total > self.max_message:
                raise FramingError(f"a {total}-byte message is over the {self.max_message}-byte limit")
            end = start + total
            if len(buf) < end:
                break
            frame = bytes(buf[start:end])
            self._pos = end
            (message_crc,) = _U32.unpack_from(frame, total - 4)
            if zlib.crc32(memoryview(frame)[: total - 4]) != message_crc:
                raise FramingError("message CRC mismatch")
            headers = _headers(frame[_PRELUDE : _PRELUDE + head_len])
            yield EventStreamMessage(headers, frame[_PRELUDE + head_len : total - 4])
        if self._pos:
            del buf[: self._pos]
            self._pos = 0


_PRELUDE_FIELDS = struct.Struct(">III")
_U32 = struct.Struct(">I")


class FrameTemplate:
    """Frames that differ only in their ``:stream-id`` (one answer to many requests): the headers and payload are
    encoded once, a frame is then the stream id packed in and the message CRC (:func:`encode`'s bytes exactly)."""

    def __init__(self, headers: Mapping[str, Any], payload: bytes = b"") -> None:
        if not isinstance(headers.get(_STREAM_ID), int):
            raise FramingError("a frame template needs an int :stream-id header")
        frame = encode(headers, payload)
        before = _encode_headers({name: value for name, value in _until(headers, _STREAM_ID)})
        at = _PRELUDE + len(before) + 1 + len(_STREAM_ID) + 1  # the value, after its name's length, name and type
        self._head = frame[:at]
        self._tail = frame[at + 4 : -4]

    def frame(self, stream_id: int) -> bytes:
        body = self._head + _INT32.pack(stream_id) + self._tail
        return body + _U32.pack(zlib.crc32(body))


def _until(headers: Mapping[str, Any], stop: str) -> Iterator[tuple[str, Any]]:
    for name, value in headers.items():
        if name == stop:
            return
        yield name, value
