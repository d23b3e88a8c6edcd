"""MQTT 3.1.1 packets to and from bytes, in plain Python (OASIS standard, chapters 2 and 3).

Sans-I/O: functions build the packets a client sends, and `read_packet` reads the next packet a
broker sent from a byte buffer. Shared by the asyncio receive path (osteotel/mqttwire.py), the
lean publisher (devices/emulator/fastpub.py) and `osteotel bench receive`'s `plain` receiver.

`read_packet` trusts nothing: a remaining length of more than four bytes, a length field that
runs past its packet, a packet type or flags a broker may not send a client, a wrong fixed size
or a topic that is not UTF-8 raises `MalformedPacketError` naming the rule, and the caller closes
the connection (section 4.8: a protocol violation ends the network connection).
"""

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CONNACK_REASONS",
    "DISCONNECT",
    "MAX_REMAINING_LENGTH",
    "PINGREQ",
    "Ack",
    "Connack",
    "MalformedPacketError",
    "Packet",
    "Pingresp",
    "Publish",
    "Suback",
    "Will",
    "ack_packet",
    "connect_packet",
    "encode_remaining_length",
    "publish_packet",
    "read_packet",
    "subscribe_packet",
    "topic_bytes",
    "unsubscribe_packet",
]

MAX_REMAINING_LENGTH: Final = 268_435_455
"""Four 7-bit groups (section 2.2.3)."""

CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
"""CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3) other than 0, accepted."""

PINGREQ: Final = b"\xc0\x00"
DISCONNECT: Final = b"\xe0\x00"

# Control packet types (first byte, high nibble), section 2.2.1.
CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
PUBREC: Final = 5
PUBREL: Final = 6
PUBCOMP: Final = 7
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBSCRIBE: Final = 10
UNSUBACK: Final = 11
PINGRESP: Final = 13

_MAX_STRING_BYTES: Final = 65_535
_U16: Final = struct.Struct(">H")
_ACK: Final = struct.Struct(">BBH")
# Packets a broker sends a client with a fixed remaining length; PUBREL's flags are 0b0010
# (section 3.6.1), every other one's 0.
_FIXED_LENGTH: Final = {CONNACK: 2, PUBACK: 2, PUBREC: 2, PUBREL: 2, PUBCOMP: 2, UNSUBACK: 2}
_SUBACK_CODES: Final = frozenset((0x00, 0x01, 0x02, 0x80))


class MalformedPacketError(ValueError):
    """The broker sent bytes that are not a packet it may send (`reason` names the rule)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Will:
    """What the broker publishes for the client if its connection ends without DISCONNECT.

    Attributes:
        topic: the will's topic name.
        payload: the will's payload.
        qos: 0, 1 or 2.
        retain: whether the broker keeps it as the topic's retained message.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    """A PUBLISH (section 3.3); `packet_id` is 0 at QoS 0."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int
    dup: bool
    retain: bool


@dataclass(frozen=True, slots=True)
class Connack:
    """A CONNACK (section 3.2): 0 accepts, see `CONNACK_REASONS` for the others."""

    session_present: bool
    return_code: int


@dataclass(frozen=True, slots=True)
class Ack:
    """A PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK: its packet type and packet id."""

    kind: int
    packet_id: int


@dataclass(frozen=True, slots=True)
class Suback:
    """A SUBACK (section 3.9): one return code per filter, the granted QoS or 0x80 (failure)."""

    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pingresp:
    """A PINGRESP (section 3.13)."""


Packet = Publish | Connack | Ack | Suback | Pingresp


# --- writing -------------------------------------------------------------------------------------


def encode_remaining_length(length: int) -> bytes:
    """Encode an MQTT remaining length: 7 bits a byte, least significant first (section 2.2.3).

    Args:
        length: the byte count of the variable header plus payload, 0 to 268,435,455.

    Returns:
        One to four bytes, each but the last with its top bit set.

    Raises:
        ValueError: `length` is negative or above 268,435,455.
    """
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length is {length}, must be 0..{MAX_REMAINING_LENGTH}")
    if length < 128:
        return bytes((length,))
    out = bytearray()
    while True:
        digit, length = length & 0x7F, length >> 7
        if length:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _string(text: str | bytes, what: str) -> bytes:
    """A length-prefixed UTF-8 string (section 1.5.3)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if len(data) > _MAX_STRING_BYTES:
        raise ValueError(f"{what} is {len(data)} bytes, at most {_MAX_STRING_BYTES}")
    return _U16.pack(len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_remaining_length(len(body)) + body


def topic_bytes(topic: str) -> bytes:
    """The topic as it sits in a PUBLISH variable header, after checking section 4.7's rules.

    Raises:
        ValueError: an empty topic, or one holding a wildcard or NUL.
    """
    if not topic:
        raise ValueError("a PUBLISH topic cannot be empty")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"a PUBLISH topic cannot hold '+', '#' or NUL: {topic!r}")
    return _string(topic, "topic")


def connect_packet(
    client_id: str,
    *,
    keepalive_s: int,
    clean_session: bool,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
) -> bytes:
    """A CONNECT of protocol level 4 (section 3.1).

    Raises:
        ValueError: a will QoS outside 0..2, a password without a user name, a string too long.
    """
    flags = 0x02 if clean_session else 0x00
    payload = _string(client_id, "client id")
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise ValueError(f"will qos is {will.qos!r}, must be 0, 1 or 2")
        # Will flag, its QoS and retain bits (section 3.1.2.5-7); topic and message follow
        # the client id in the payload (section 3.1.3).
        flags |= 0x04 | will.qos << 3 | will.retain << 5
        payload += topic_bytes(will.topic) + _string(will.payload, "will message")
    if password is not None and username is None:
        raise ValueError("a password needs a user name (section 3.1.2.9)")
    if username is not None:
        flags |= 0x80
        payload += _string(username, "user name")
    if password is not None:
        flags |= 0x40
        payload += _string(password.encode("utf-8"), "password")
    body = _string("MQTT", "protocol name") + bytes((4, flags)) + _U16.pack(keepalive_s) + payload
    return _packet(0x10, body)


def publish_packet(
    encoded_topic: bytes,
    payload: bytes,
    *,
    qos: int,
    packet_id: int = 0,
    dup: bool = False,
    retain: bool = False,
) -> bytes:
    """A PUBLISH (section 3.3) of a topic already encoded by `topic_bytes` (callers keep it).

    Raises:
        ValueError: a QoS outside 0..2, or a packet above the largest remaining length.
    """
    if qos not in (0, 1, 2):
        raise ValueError(f"qos is {qos!r}, must be 0, 1 or 2")
    first = PUBLISH << 4 | dup << 3 | qos << 1 | retain
    length = len(encoded_topic) + len(payload) + (2 if qos else 0)
    if length < 128:
        header = bytes((first, length))
    else:
        header = bytes((first,)) + encode_remaining_length(length)
    if qos == 0:
        return b"".join((header, encoded_topic, payload))
    return b"".join((header, encoded_topic, _U16.pack(packet_id), payload))


def ack_packet(kind: int, packet_id: int) -> bytes:
    """A PUBACK, PUBREC, PUBREL or PUBCOMP of `packet_id` (PUBREL with its flags 0b0010)."""
    return _ACK.pack(kind << 4 | (0x02 if kind == PUBREL else 0), 2, packet_id)


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """A SUBSCRIBE (section 3.8) of (topic filter, requested QoS) pairs, at least one."""
    if not filters:
        raise ValueError("a SUBSCRIBE needs at least one filter (section 3.8.3)")
    body = _U16.pack(packet_id) + b"".join(
        _string(topic, "topic filter") + bytes((qos,)) for topic, qos in filters
    )
    return _packet(0x82, body)


def unsubscribe_packet(packet_id: int, filters: list[str]) -> bytes:
    """An UNSUBSCRIBE (section 3.10) of at least one topic filter."""
    if not filters:
        raise ValueError("an UNSUBSCRIBE needs at least one filter (section 3.10.3)")
    body = _U16.pack(packet_id) + b"".join(_string(topic, "topic filter") for topic in filters)
    return _packet(0xA2, body)


# --- reading -------------------------------------------------------------------------------------


def read_packet(data: bytes, start: int) -> tuple[Packet | None, int]:
    """Read the packet a broker sent that begins at `data[start]`.

    Returns:
        (the packet, the index after it), or (None, start) when `data` ends before it does.

    Raises:
        MalformedPacketError: the bytes break a rule of the standard for a broker-to-client packet.
    """
    size = len(data)
    at = start + 1
    remaining = shift = 0
    while True:
        if at >= size:
            return None, start
        byte = data[at]
        at += 1
        remaining |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MalformedPacketError("remaining length longer than four bytes")
    end = at + remaining
    if end > size:
        return None, start
    first = data[start]
    kind, flags = first >> 4, first & 0x0F
    if kind == PUBLISH:
        return _read_publish(data, flags, at, end), end
    expected_flags = 0x02 if kind == PUBREL else 0
    if flags != expected_flags:
        raise MalformedPacketError(f"packet type {kind} with flags 0x{flags:x}")
    if kind in _FIXED_LENGTH:
        if remaining != _FIXED_LENGTH[kind]:
            raise MalformedPacketError(f"packet type {kind} with remaining length {remaining}")
        if kind == CONNACK:
            if data[at] & 0xFE:
                raise MalformedPacketError("CONNACK with reserved flags set")
            return Connack(bool(data[at] & 0x01), data[at + 1]), end
        return Ack(kind, _U16.unpack_from(data, at)[0]), end
    if kind == SUBACK:
        if remaining < 3:
            raise MalformedPacketError(f"SUBACK with remaining length {remaining}")
        codes = tuple(data[at + 2 : end])
        if not _SUBACK_CODES.issuperset(codes):
            raise MalformedPacketError(f"SUBACK return codes {codes}")
        return Suback(_U16.unpack_from(data, at)[0], codes), end
    if kind == PINGRESP:
        if remaining:
            raise MalformedPacketError(f"PINGRESP with remaining length {remaining}")
        return Pingresp(), end
    raise MalformedPacketError(f"packet type {kind}, which a broker does not send a client")


def _read_publish(data: bytes, flags: int, at: int, end: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacketError("PUBLISH with QoS 3")
    if end - at < 2:
        raise MalformedPacketError("PUBLISH too short for its topic length")
    topic_end = at + 2 + _U16.unpack_from(data, at)[0]
    if topic_end + (2 if qos else 0) > end:
        raise MalformedPacketError("PUBLISH topic runs past the packet")
    try:
        topic = data[at + 2 : topic_end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacketError("PUBLISH topic is not UTF-8") from exc
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise MalformedPacketError("PUBLISH topic empty or with a wildcard or NUL")
    packet_id = 0
    if qos:
        packet_id = _U16.unpack_from(data, topic_end)[0]
        topic_end += 2
        if packet_id == 0:
            raise MalformedPacketError("PUBLISH with QoS > 0 and packet id 0")
    return Publish(
        topic, bytes(data[topic_end:end]), qos, packet_id, bool(flags & 0x08), bool(flags & 1)
    )
