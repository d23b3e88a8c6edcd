"""A lean asyncio MQTT 3.1.1 client that only publishes, for replay and the emulator.

paho-mqtt spends about 250 us of Python per QoS 1 message (docs/capture.md); a day of ten
devices at 100 Hz is 864 k messages. This client does the least a publisher needs, written from
the MQTT 3.1.1 OASIS standard: CONNECT/CONNACK, PUBLISH at QoS 0, 1 or 2 with retain, the
QoS 1 (PUBACK) and QoS 2 (PUBREC/PUBREL/PUBCOMP) acknowledgements, a will, PINGREQ when idle,
and DISCONNECT. Packets are built with `bytes` and `struct`, gathered in a buffer and handed to
the transport many at a time; one reader task parses whatever the broker sends back.

Every message is written in call order on one connection, so the broker receives (and, per
topic, delivers) them in that order. At most `window` QoS 1/2 publishes wait for their
acknowledgement; `publish` waits when the window is full (backpressure). Packet ids run through
1..65535 and an id is only reused once its previous publish has been acknowledged.

Every failure (refused connection, bad CONNACK, lost connection, missing acknowledgement or
PINGRESP within the bounds) raises `PublishError`.
"""

import asyncio
import contextlib
import ssl
import struct
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from osteotel.errors import ConfigError, OsteotelError
from osteotel.settings import MqttSettings

__all__ = [
    "CONNACK_REASONS",
    "DEFAULT_QOS2_WINDOW",
    "DEFAULT_WINDOW",
    "FastPublisher",
    "PublishError",
    "Will",
    "encode_remaining_length",
]

DEFAULT_WINDOW: Final = 1_000
"""QoS 1/2 publishes awaiting acknowledgement before `publish` waits."""

DEFAULT_QOS2_WINDOW: Final = 10
"""QoS 2 publishes awaiting PUBCOMP before `publish` waits.

A broker holds each QoS 2 publish until its PUBREL and caps how many (Mosquitto's
`max_inflight_messages`, 20 by default); MQTT 3.1.1 cannot tell the client the cap, and Mosquitto
2.0 acknowledges the ones beyond it with PUBREC and drops them. QoS 1 publishes are passed on at
once and not held, so the large window is safe for them.
"""

CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
"""CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3) other than 0, accepted."""

_MAX_REMAINING_LENGTH: Final = 268_435_455  # four 7-bit groups, section 2.2.3
_MAX_PACKET_ID: Final = 65_535
_MAX_STRING_BYTES: Final = 65_535

# Control packet types (first byte, high nibble), section 2.2.1.
_CONNECT: Final = 0x10
_CONNACK: Final = 0x20
_PUBLISH: Final = 0x30
_PUBACK: Final = 0x40
_PUBREC: Final = 0x50
_PUBREL: Final = 0x62  # PUBREL's fixed header has flags 0b0010, section 3.6.1
_PUBCOMP: Final = 0x70
_PINGREQ: Final = b"\xc0\x00"
_PINGRESP: Final = 0xD0
_DISCONNECT: Final = b"\xe0\x00"

_FLUSH_BYTES: Final = 1 << 16  # hand the buffer to the transport once it holds this much
_READ_BYTES: Final = 1 << 16
_TOPIC_CACHE: Final = 4_096  # encoded topic prefixes kept; replay has a few dozen topics
_CLOSE_TIMEOUT_S: Final = 5.0

# What a packet id in flight awaits; each acknowledgement type is accepted in one state only.
_AWAIT_PUBACK: Final = 1
_AWAIT_PUBREC: Final = 2
_AWAIT_PUBCOMP: Final = 3
_AWAITED_BY: Final = {_PUBACK: _AWAIT_PUBACK, _PUBREC: _AWAIT_PUBREC, _PUBCOMP: _AWAIT_PUBCOMP}

_U16: Final = struct.Struct(">H")
_ACK: Final = struct.Struct(">BBH")  # PUBACK, PUBREC, PUBREL, PUBCOMP: type, 2, packet id


class PublishError(OsteotelError):
    """The broker could not be reached, refused the session, or lost or stalled it.

    Attributes:
        return_code: the CONNACK return code when the broker refused the connection.
    """

    def __init__(self, message: str, *, return_code: int | None = None) -> None:
        super().__init__(message)
        self.return_code = return_code


def encode_remaining_length(length: int) -> bytes:
    """Encode an MQTT remaining length: 7 bits a byte, least significant first (section 2.2.3).

    Args:
        length: the byte count of the variable header plus payload, 0 to 268,435,455.

    Returns:
        One to four bytes, each but the last with its top bit set.

    Raises:
        ValueError: `length` is negative or above 268,435,455.
    """
    if not 0 <= length <= _MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length is {length}, must be 0..{_MAX_REMAINING_LENGTH}")
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


def _topic_bytes(topic: str) -> bytes:
    """The topic as it sits in a PUBLISH variable header, after checking section 4.7 rules."""
    if not topic:
        raise ValueError("a PUBLISH topic cannot be empty")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"a PUBLISH topic cannot hold '+', '#' or NUL: {topic!r}")
    return _string(topic, "topic")


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


def _connect_packet(
    client_id: str,
    keepalive_s: int,
    username: str | None,
    password: str | None,
    will: Will | None,
) -> bytes:
    flags = 0x02  # clean session: a replay leaves no state behind on the broker
    payload = _string(client_id, "client id")
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise ValueError(f"will qos is {will.qos!r}, must be 0, 1 or 2")
        # Will flag, its QoS and retain bits (section 3.1.2.5-7); topic and message follow
        # the client id in the payload (section 3.1.3).
        flags |= 0x04 | will.qos << 3 | will.retain << 5
        payload += _topic_bytes(will.topic) + _string(will.payload, "will message")
    if username is not None:
        flags |= 0x80
        payload += _string(username, "user name")
    if password is not None:
        flags |= 0x40
        payload += _string(password.encode("utf-8"), "password")
    body = _string("MQTT", "protocol name") + bytes((4, flags)) + _U16.pack(keepalive_s) + payload
    return bytes((_CONNECT,)) + encode_remaining_length(len(body)) + body


class FastPublisher:
    """A publish-only MQTT 3.1.1 session, as an async context manager.

    `async with` connects and checks the CONNACK; leaving the block normally waits (bounded)
    for every QoS 1/2 publish to be acknowledged, sends DISCONNECT and closes. Leaving on an
    exception closes at once.

    Args:
        mqtt: broker address, credentials (`password_text()`), TLS CA file and keep-alive.
        client_id: the MQTT client id (clean session).
        will: published by the broker if the connection ends without DISCONNECT (leaving
            the `async with` block on an exception, a lost connection, a killed process).
        window: most QoS 1/2 publishes awaiting acknowledgement, 1 to 65,535.
        qos2_window: most QoS 2 publishes awaiting their PUBCOMP (at most `window` apply).
        keepalive_s: the keep-alive sent in CONNECT, seconds; `mqtt.keepalive_s` when None.
        connect_timeout_s: bound on reaching the broker and receiving its CONNACK, seconds.
        ack_timeout_s: bound on waiting for window room, the final acknowledgements and
            a PINGRESP, seconds.
    """

    def __init__(
        self,
        mqtt: MqttSettings,
        *,
        client_id: str,
        will: Will | None = None,
        window: int = DEFAULT_WINDOW,
        qos2_window: int = DEFAULT_QOS2_WINDOW,
        keepalive_s: int | None = None,
        connect_timeout_s: float = 10.0,
        ack_timeout_s: float = 30.0,
    ) -> None:
        if not 1 <= window <= _MAX_PACKET_ID:
            raise ValueError(f"window is {window!r}, must be 1..{_MAX_PACKET_ID}")
        if qos2_window < 1:
            raise ValueError(f"qos2_window is {qos2_window!r}, must be >= 1")
        keepalive = mqtt.keepalive_s if keepalive_s is None else keepalive_s
        if not 0 <= keepalive <= _MAX_PACKET_ID:
            raise ValueError(f"keepalive_s is {keepalive!r}, must be 0..65535")
        password = mqtt.password_text()
        if password is not None and mqtt.username is None:
            # Section 3.1.2.9: the password flag needs the user name flag.
            raise ConfigError("an MQTT password is set without a user name")
        self._mqtt = mqtt
        self._connect = _connect_packet(client_id, keepalive, mqtt.username, password, will)
        self._window = window
        self._qos2_window = min(qos2_window, window)
        self._qos2_in_flight = 0
        self._keepalive_s = keepalive
        self._connect_timeout_s = connect_timeout_s
        self._ack_timeout_s = ack_timeout_s
        self._where = f"{mqtt.host}:{mqtt.port}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._buffer: list[bytes] = []
        self._buffered_bytes = 0
        self._flush_scheduled = False
        self._topics: dict[str, bytes] = {}
        self._in_flight: dict[int, int] = {}  # packet id -> the acknowledgement it awaits
        self._next_id = 1
        self._room = asyncio.Event()
        self._acked = asyncio.Event()
        self._failure: PublishError | None = None
        self._last_sent = 0.0
        self._ping_sent_at: float | None = None
        self.published = 0
        """Messages handed to `publish` so far."""
        self.pings = 0
        """PINGREQs sent so far."""

    @property
    def in_flight(self) -> int:
        """QoS 1/2 publishes sent and not yet acknowledged."""
        return len(self._in_flight)

    async def __aenter__(self) -> Self:
        ssl_context: ssl.SSLContext | None = None
        if self._mqtt.tls_ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=str(self._mqtt.tls_ca_file))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._mqtt.host, self._mqtt.port, ssl=ssl_context, limit=_READ_BYTES
                ),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise PublishError(f"cannot reach {self._where}: {exc}") from exc
        self._reader, self._writer = reader, writer
        try:
            writer.write(self._connect)
            await asyncio.wait_for(self._read_connack(), self._connect_timeout_s)
        except BaseException as exc:
            writer.close()
            self._writer = None
            if isinstance(exc, TimeoutError):
                raise PublishError(f"no CONNACK from {self._where} within the bound") from exc
            if isinstance(exc, OSError | asyncio.IncompleteReadError):
                raise PublishError(f"{self._where} closed the connection: {exc!r}") from exc
            raise
        self._last_sent = time.monotonic()
        self._room.set()
        self._acked.set()
        self._tasks = [
            asyncio.create_task(self._read_loop(), name=f"fastpub[{self._where}].read"),
            asyncio.create_task(self._keepalive_loop(), name=f"fastpub[{self._where}].ping"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                await self.flush()
                self._send(_DISCONNECT)
                self._write_buffer()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(self._writer_drain(), _CLOSE_TIMEOUT_S)
        finally:
            await self._close()

    async def _read_connack(self) -> None:
        assert self._reader is not None
        packet = await self._reader.readexactly(4)
        if packet[0] != _CONNACK or packet[1] != 2:
            raise PublishError(f"{self._where} answered CONNECT with {packet.hex()}, not CONNACK")
        code = packet[3]
        if code != 0:
            reason = CONNACK_REASONS.get(code, "unknown return code")
            raise PublishError(
                f"{self._where} refused the connection: {reason} ({code})", return_code=code
            )

    async def _writer_drain(self) -> None:
        if self._writer is not None:
            await self._writer.drain()

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, PublishError, OSError):
                await task
        self._tasks = []
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)

    # --- sending ---------------------------------------------------------------------------------

    def _send(self, packet: bytes) -> None:
        """Queue a packet: it reaches the transport in a batch, at latest on the next loop turn."""
        self._buffer.append(packet)
        self._buffered_bytes += len(packet)
        if self._buffered_bytes >= _FLUSH_BYTES:
            self._write_buffer()
        elif not self._flush_scheduled:
            # A caller that publishes one message and then sleeps still gets it sent.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_buffer)

    def _write_buffer(self) -> None:
        self._flush_scheduled = False
        if not self._buffer or self._writer is None:
            return
        self._writer.write(b"".join(self._buffer))
        self._buffer.clear()
        self._buffered_bytes = 0
        self._last_sent = time.monotonic()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._writer is None:
            raise PublishError("the publisher is not connected (use `async with`)")

    def _packet_id(self) -> int:
        packet_id = self._next_id
        # The window is below 65,535, so a free id is always found; the loop skips ids whose
        # earlier publish still awaits its acknowledgement.
        while packet_id in self._in_flight:
            packet_id = packet_id % _MAX_PACKET_ID + 1
        self._next_id = packet_id % _MAX_PACKET_ID + 1
        return packet_id

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Send one message, after the ones before it; wait first if the window is full.

        It returns once the message is queued for sending, not when it is acknowledged: use
        `flush` (or leave the `async with` block) for that.

        Args:
            topic: the topic name (no wildcards), at most 65,535 bytes in UTF-8.
            payload: the payload bytes.
            qos: 0, 1 or 2.
            retain: ask the broker to keep it as the topic's retained message.

        Raises:
            PublishError: the connection failed, or no window room came within `ack_timeout_s`.
            ValueError: a bad topic, QoS, or a packet above 268,435,455 bytes.
        """
        self._check()
        prefix = self._topics.get(topic)
        if prefix is None:
            prefix = _topic_bytes(topic)
            if len(self._topics) >= _TOPIC_CACHE:
                self._topics.clear()
            self._topics[topic] = prefix
        if qos not in (0, 1, 2):
            raise ValueError(f"qos is {qos!r}, must be 0, 1 or 2")
        length = len(prefix) + len(payload) + (2 if qos else 0)
        if length < 128:
            fixed = bytes((_PUBLISH | qos << 1 | retain, length))
        else:
            fixed = bytes((_PUBLISH | qos << 1 | retain,)) + encode_remaining_length(length)
        if qos == 0:
            self._send(b"".join((fixed, prefix, payload)))
        else:
            if len(self._in_flight) >= self._window or (
                qos == 2 and self._qos2_in_flight >= self._qos2_window
            ):
                await self._wait_for_room(qos)
            number = self._packet_id()
            if qos == 2:
                self._qos2_in_flight += 1
            # QoS 1 awaits PUBACK; QoS 2 awaits PUBREC, then (after our PUBREL) PUBCOMP.
            self._in_flight[number] = _AWAIT_PUBACK if qos == 1 else _AWAIT_PUBREC
            self._send(b"".join((fixed, prefix, _U16.pack(number), payload)))
        self.published += 1

    async def _wait_for_room(self, qos: int) -> None:
        self._write_buffer()  # the acks we wait for need these publishes on the wire
        deadline = time.monotonic() + self._ack_timeout_s
        while len(self._in_flight) >= self._window or (
            qos == 2 and self._qos2_in_flight >= self._qos2_window
        ):
            self._check()
            self._room.clear()
            remaining_s = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._room.wait(), max(0.0, remaining_s))
            except TimeoutError:
                raise PublishError(
                    f"{self._where} acknowledged nothing of {len(self._in_flight)} publishes "
                    f"within {self._ack_timeout_s:g} s"
                ) from None
        self._check()
        await self._writer_drain_or_fail()

    async def _writer_drain_or_fail(self) -> None:
        try:
            await self._writer_drain()
        except OSError as exc:
            raise self._fail(f"connection to {self._where} lost: {exc!r}") from exc

    async def flush(self) -> None:
        """Send what is buffered and wait until every QoS 1/2 publish is acknowledged.

        Raises:
            PublishError: the connection failed, or acknowledgements stopped for `ack_timeout_s`.
        """
        self._check()
        self._write_buffer()
        await self._writer_drain_or_fail()
        while self._in_flight:
            self._check()
            self._acked.clear()
            try:
                await asyncio.wait_for(self._acked.wait(), self._ack_timeout_s)
            except TimeoutError:
                raise PublishError(
                    f"{self._where} acknowledged none of {len(self._in_flight)} publishes "
                    f"within {self._ack_timeout_s:g} s"
                ) from None
        self._check()

    # --- receiving -------------------------------------------------------------------------------

    def _fail(self, message: str) -> PublishError:
        if self._failure is None:
            self._failure = PublishError(message)
        # Wake every waiter: each one checks `_failure` and raises it.
        self._room.set()
        self._acked.set()
        return self._failure

    async def _read_loop(self) -> None:
        assert self._reader is not None
        pending = b""
        try:
            while True:
                chunk = await self._reader.read(_READ_BYTES)
                if not chunk:
                    raise self._fail(f"{self._where} closed the connection")
                pending = self._handle(pending + chunk if pending else chunk)
        except (OSError, ssl.SSLError) as exc:
            raise self._fail(f"connection to {self._where} lost: {exc!r}") from exc

    def _handle(self, data: bytes) -> bytes:
        """Act on every whole packet in `data`; return the incomplete rest."""
        in_flight = self._in_flight
        position, end = 0, len(data)
        acked = False
        while position < end:
            kind = data[position]
            # Every packet a broker sends a publish-only client is 2 or 4 bytes long.
            if kind in _AWAITED_BY:
                if end - position < 4:
                    break
                _, length, packet_id = _ACK.unpack_from(data, position)
                if length != 2:
                    raise self._fail(f"{self._where} sent a malformed acknowledgement")
                position += 4
                if in_flight.get(packet_id) != _AWAITED_BY[kind]:
                    raise self._fail(
                        f"{self._where} sent packet type 0x{kind:02x} for packet id "
                        f"{packet_id}, which does not await it"
                    )
                if kind == _PUBREC:
                    in_flight[packet_id] = _AWAIT_PUBCOMP
                    self._send(_ACK.pack(_PUBREL, 2, packet_id))
                else:
                    if kind == _PUBCOMP:
                        self._qos2_in_flight -= 1
                    del in_flight[packet_id]
                    acked = True
            elif kind == _PINGRESP:
                if end - position < 2:
                    break
                position += 2
                self._ping_sent_at = None
            else:
                raise self._fail(f"{self._where} sent an unexpected packet type 0x{kind:02x}")
        if acked:
            # `flush` bounds the time between acknowledgements, not the whole drain.
            self._acked.set()
            self._room.set()  # the waiter checks which window has room
        return data[position:]

    async def _keepalive_loop(self) -> None:
        if self._keepalive_s == 0:
            return  # keep-alive 0 turns the mechanism off (section 3.1.2.10)
        # Section 3.1.2.10: some packet must reach the broker within each keep-alive period.
        # Pinging at half of it leaves room for a loaded event loop.
        period_s = self._keepalive_s / 2
        while True:
            await asyncio.sleep(period_s)
            now = time.monotonic()
            if self._ping_sent_at is not None and now - self._ping_sent_at > max(
                self._keepalive_s, self._ack_timeout_s
            ):
                self._fail(f"no PINGRESP from {self._where}")
                return
            if now - self._last_sent >= period_s and self._ping_sent_at is None:
                self._ping_sent_at = now
                self.pings += 1
                self._send(_PINGREQ)
