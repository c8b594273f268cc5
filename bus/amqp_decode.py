"""Tolerant decoding of AMQP short strings, so one message cannot make a consumer deaf.

pamqp decodes every short string (``app_id``, ``type``, ``reply_to``, ``correlation_id``... and
the keys of the ``headers`` table) strictly as UTF-8. Any publisher may put other bytes there
(kombu sends ``app_id="\\udcff"`` as ``ED B3 BF``); pamqp then raises on the content header,
aiormq calls the frame invalid and drops the whole connection, the broker redelivers the message,
and the consumer reconnects only to take it again, for ever, on every node that consumes the queue.

Here those bytes decode with ``surrogateescape`` instead: the frame is read, the delivery reaches
``AsyncBus``, and a property that is not valid UTF-8 is simply a string that does not encode
(``is_wire_text`` says no), which the bus treats as absent (see ``bus.aio``). The patch is installed
once, when ``bus.aio`` is imported; it changes nothing for valid strings.

The same holds for every other way a publisher's properties can fail to decode (a ``headers``
table nested a few thousand levels deep makes pamqp's recursive decoder raise ``RecursionError``,
an unknown field type ``ValueError``...): ``tolerant_unmarshal`` replaces the content header's
properties by empty ones carrying ``UNDECODABLE`` in their headers, so the delivery still reaches
the bus (whose envelope is in the body) instead of dropping the connection.
"""

from __future__ import annotations

import struct
from typing import Final

from pamqp import common, decode, header
from pamqp.commands import Basic

_BYTE: Final = struct.Struct(">B")
_INT: Final = struct.Struct(">I")
# The header a delivery's properties are replaced by when they could not be decoded (value: why).
UNDECODABLE: Final = "x-ringstack-undecodable-properties"
_original_unmarshal = header.ContentHeader.unmarshal


def short_str(value: bytes) -> tuple[int, str]:
    """pamqp's ``short_str``, but bytes that are not UTF-8 survive as surrogates."""
    try:
        length = _BYTE.unpack(value[0:1])[0]
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err
    return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")


def field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """pamqp's ``field_table`` with keys decoded like ``short_str`` above."""
    try:
        length = _INT.unpack(value[0:4])[0]
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err
    offset, end = 4, 4 + length
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    data: common.FieldTable = {}
    while offset < end:
        key_length = value[offset]
        offset += 1
        if offset + key_length > end:
            raise ValueError("Field table key length exceeds data")
        key = value[offset : offset + key_length].decode("utf-8", "surrogateescape")
        offset += key_length
        consumed, result = decode.embedded_value(value[offset:end])
        offset += consumed
        data[key] = result
    return end, data


def is_wire_text(value: str) -> bool:
    """Whether a decoded string is real UTF-8 text (no escaped bytes) without NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def tolerant_unmarshal(self: header.ContentHeader, data: bytes) -> None:
    """pamqp's ``ContentHeader.unmarshal``; properties that do not decode are replaced, not raised.

    The class id, weight and body size come from the broker (the frame is unusable without them,
    and they cannot fail for a frame the broker sent), so only the publisher's part is tolerated.
    """
    try:
        _original_unmarshal(self, data)
    except (RecursionError, ValueError, struct.error, TypeError, KeyError, IndexError, OverflowError) as exc:
        self.class_id, self.weight, self.body_size = struct.unpack(">HHQ", data[0:12])
        self.properties = Basic.Properties(headers={UNDECODABLE: type(exc).__name__})


def install() -> None:
    """Route pamqp's short-string and table decoding through the tolerant versions (idempotent)."""
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["table"] = field_table
    decode.TABLE_MAPPING[b"F"] = field_table
    decode.short_str = short_str
    decode.field_table = field_table
    header.ContentHeader.unmarshal = tolerant_unmarshal  # type: ignore[method-assign]
