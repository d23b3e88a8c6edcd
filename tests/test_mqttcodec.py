"""osteotel/mqttcodec.py against paho-mqtt's own packet code (MQTT 3.1.1), and on bad input.

paho is the oracle: a paho client whose socket is one end of a socket pair writes its packets
there (its encoder, read back as bytes) and reads what we write at the other end (its decoder).
These reach into paho's private methods on purpose: they are its encoder and decoder.
"""

import socket
from collections.abc import Iterator
from typing import Final, Literal

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from osteotel import mqttcodec as codec

_SURROGATES: Final[tuple[Literal["Cs"]]] = ("Cs",)  # not encodable as UTF-8
_TOPICS = st.text(
    st.characters(codec="utf-8", exclude_characters="#+\x00", exclude_categories=_SURROGATES),
    min_size=1,
    max_size=80,
)
_FILTERS = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=_SURROGATES),
    min_size=1,
    max_size=40,
)
_IDS = st.integers(1, 65_535)


class _Paho:
    """A paho client wired to a socket pair instead of a broker."""

    def __init__(self, client_id: str = "codec-test") -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
            manual_ack=True,
        )
        self.ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        self.client._sock = theirs
        self.messages: list[paho.MQTTMessage] = []
        self.client.on_message = lambda _c, _u, message: self.messages.append(message)

    def written(self) -> bytes:
        """Every byte paho has written so far."""
        self.ours.setblocking(False)
        out = b""
        while True:
            try:
                chunk = self.ours.recv(1 << 20)
            except BlockingIOError:
                return out
            out += chunk

    def read(self, data: bytes) -> list[paho.MQTTMessage]:
        """Hand `data` to paho's reader; the messages it delivered."""
        self.ours.setblocking(True)
        self.ours.sendall(data)
        while True:
            rc = self.client._packet_read()
            if rc != paho.MQTT_ERR_SUCCESS:
                break
        return self.messages

    def close(self) -> None:
        self.ours.close()
        sock = self.client._sock
        if sock is not None:
            sock.close()


@pytest.fixture
def wired() -> Iterator[_Paho]:
    """A paho client on a socket pair (closed after the test)."""
    client = _Paho()
    yield client
    client.close()


def _publish_by_paho(
    *, topic: str, payload: bytes, qos: int, packet_id: int, dup: bool, retain: bool
) -> bytes:
    client = _Paho()
    try:
        client.client._send_publish(
            packet_id, topic.encode(), payload, qos, retain, dup, paho.MQTTMessageInfo(packet_id)
        )
        return client.written()
    finally:
        client.close()


@settings(max_examples=150, deadline=None)
@given(
    topic=_TOPICS,
    payload=st.binary(max_size=1000) | st.binary(min_size=16_000, max_size=20_000),
    qos=st.sampled_from([0, 1]),
    packet_id=_IDS,
    dup=st.booleans(),
    retain=st.booleans(),
)
def test_a_publish_reads_back_and_encodes_as_paho_does(
    *, topic: str, payload: bytes, qos: int, packet_id: int, dup: bool, retain: bool
) -> None:
    """paho's PUBLISH reads back field for field, every shorter prefix of it reads as
    incomplete, and ours is byte for byte paho's."""
    packet_id = packet_id if qos else 0
    theirs = _publish_by_paho(
        topic=topic, payload=payload, qos=qos, packet_id=packet_id, dup=dup, retain=retain
    )
    read, end = codec.read_packet(theirs, 0)
    assert end == len(theirs)
    assert read == codec.Publish(topic, payload, qos, packet_id, dup, retain)
    for cut in (0, 1, 2, len(theirs) // 2, len(theirs) - 1):
        assert codec.read_packet(theirs[:cut], 0) == (None, 0)
    ours = codec.publish_packet(
        codec.topic_bytes(topic), payload, qos=qos, packet_id=packet_id, dup=dup, retain=retain
    )
    assert ours == theirs


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(
        st.tuples(_TOPICS, st.binary(max_size=300), st.sampled_from([0, 1]), _IDS, st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_paho_reads_what_we_write_several_packets_to_a_chunk(
    messages: list[tuple[str, bytes, int, int, bool]],
) -> None:
    """Our PUBLISHes, written back to back, are what paho's reader delivers."""
    client = _Paho()
    try:
        data = b"".join(
            codec.publish_packet(codec.topic_bytes(t), p, qos=q, packet_id=i if q else 0, dup=d)
            for t, p, q, i, d in messages
        )
        delivered = client.read(data)
        got = [(m.topic, m.payload, m.qos, m.mid if m.qos else 0, m.dup) for m in delivered]
        assert got == [(t, p, q, i if q else 0, d) for t, p, q, i, d in messages]
    finally:
        client.close()


@settings(max_examples=60, deadline=None)
@given(
    client_id=st.text(min_size=1, max_size=23),  # paho needs one with clean session off
    keepalive_s=st.integers(0, 65_535),
    username=st.none() | st.text(max_size=20),
    password=st.none() | st.text(max_size=20),
)
def test_connect_is_byte_for_byte_pahos(
    *, client_id: str, keepalive_s: int, username: str | None, password: str | None
) -> None:
    """A CONNECT with clean session off and credentials is the one paho writes."""
    if password is not None and username is None:
        username = ""
    client = _Paho(client_id)
    try:
        if username is not None:
            client.client.username_pw_set(username, password)
        client.client._send_connect(keepalive_s)
        theirs = client.written()
    finally:
        client.close()
    ours = codec.connect_packet(
        client_id, keepalive_s=keepalive_s, clean_session=False, username=username,
        password=password,
    )  # fmt: skip
    assert ours == theirs


@settings(max_examples=60, deadline=None)
@given(filters=st.lists(st.tuples(_FILTERS, st.sampled_from([0, 1])), min_size=1, max_size=6))
def test_subscribe_and_unsubscribe_are_byte_for_byte_pahos(
    filters: list[tuple[str, int]],
) -> None:
    """SUBSCRIBE and UNSUBSCRIBE of the same filters, with paho's packet ids, are paho's."""
    client = _Paho()
    try:
        client.client._send_subscribe(False, [(topic.encode(), qos) for topic, qos in filters])
        subscribe, subscribe_id = client.written(), client.client._last_mid
        client.client._send_unsubscribe(False, [topic.encode() for topic, _ in filters])
        unsubscribe, unsubscribe_id = client.written(), client.client._last_mid
    finally:
        client.close()
    assert codec.subscribe_packet(subscribe_id, filters) == subscribe
    assert codec.unsubscribe_packet(unsubscribe_id, [t for t, _ in filters]) == unsubscribe


@pytest.mark.parametrize(
    ("data", "packet"),
    [
        (b"\x20\x02\x01\x00", codec.Connack(session_present=True, return_code=0)),
        (b"\x20\x02\x00\x05", codec.Connack(session_present=False, return_code=5)),
        (b"\x40\x02\x12\x34", codec.Ack(codec.PUBACK, 0x1234)),
        (b"\xb0\x02\x00\x07", codec.Ack(codec.UNSUBACK, 7)),
        (b"\x90\x05\x00\x09\x01\x00\x80", codec.Suback(9, (1, 0, 0x80))),
        (b"\xd0\x00", codec.Pingresp()),
    ],
    ids=["connack-session", "connack-refused", "puback", "unsuback", "suback", "pingresp"],
)
def test_the_brokers_other_packets_read_as_meant(data: bytes, packet: codec.Packet) -> None:
    """CONNACK, PUBACK, UNSUBACK, SUBACK and PINGRESP read as the standard's examples say."""
    assert codec.read_packet(b"junk" + data, 4) == (packet, 4 + len(data))
    assert codec.read_packet(data[:-1], 0) == (None, 0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "remaining length longer than four bytes"),
        (b"\x32\x04\x00\x09ab", "PUBLISH topic runs past the packet"),
        (b"\x32\x04\x00\x01a\x00", "PUBLISH topic runs past the packet"),
        (b"\x30\x01\x00", "PUBLISH too short for its topic length"),
        (b"\x36\x05\x00\x01a\x00\x01", "PUBLISH with QoS 3"),
        (b"\x32\x05\x00\x01a\x00\x00", "PUBLISH with QoS > 0 and packet id 0"),
        (b"\x30\x04\x00\x02\xff\xfe", "PUBLISH topic is not UTF-8"),
        (b"\x30\x03\x00\x01#", "PUBLISH topic empty or with a wildcard or NUL"),
        (b"\x40\x03\x00\x01\x00", "packet type 4 with remaining length 3"),
        (b"\x41\x02\x00\x01", "packet type 4 with flags 0x1"),
        (b"\x20\x02\x02\x00", "CONNACK with reserved flags set"),
        (b"\x90\x03\x00\x01\x03", "SUBACK return codes (3,)"),
        (b"\x90\x02\x00\x01", "SUBACK with remaining length 2"),
        (b"\xd0\x01\x00", "PINGRESP with remaining length 1"),
        (b"\x10\x00", "packet type 1, which a broker does not send a client"),
        (b"\x00\x00", "packet type 0, which a broker does not send a client"),
    ],
    ids=[
        "length-5-bytes", "topic-past-end", "packet-id-past-end", "no-topic-length", "qos-3",
        "packet-id-0", "topic-not-utf8", "topic-wildcard", "puback-length", "puback-flags",
        "connack-flags", "suback-code", "suback-empty", "pingresp-length", "connect", "type-0",
    ],
)  # fmt: skip
def test_malformed_packets_are_refused_with_the_rule(data: bytes, reason: str) -> None:
    """Each broken rule raises MalformedPacketError naming it."""
    with pytest.raises(codec.MalformedPacketError) as raised:
        codec.read_packet(data, 0)
    assert raised.value.reason == reason


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=64))
def test_any_bytes_read_as_a_packet_incomplete_or_malformed(data: bytes) -> None:
    """Whatever arrives, the reader returns a packet and where it ends, says it is incomplete,
    or raises MalformedPacketError: never another exception, never past the data."""
    position = 0
    while True:
        try:
            packet, end = codec.read_packet(data, position)
        except codec.MalformedPacketError:
            return
        if packet is None:
            assert end == position
            return
        assert position < end <= len(data)
        position = end


@settings(max_examples=150, deadline=None)
@given(
    topic=_TOPICS,
    payload=st.binary(max_size=200),
    at=st.integers(0, 10_000),
    byte=st.integers(0, 255),
)
def test_a_publish_with_one_byte_changed_never_escapes_the_reader(
    *, topic: str, payload: bytes, at: int, byte: int
) -> None:
    """A real PUBLISH with any one byte replaced reads, waits for more, or is refused."""
    data = bytearray(codec.publish_packet(codec.topic_bytes(topic), payload, qos=1, packet_id=3))
    data[at % len(data)] = byte
    try:
        packet, end = codec.read_packet(bytes(data), 0)
    except codec.MalformedPacketError:
        return
    assert (packet is None and end == 0) or end <= len(data)
