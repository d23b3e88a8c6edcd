"""A lean asyncio MQTT 3.1.1 client that only publishes, for replay and the emulator.

paho-mqtt spends about 250 us of Python per QoS 1 message (docs/capture.md); a day of ten
devices at 100 Hz is 864 k messages. This client does the least a publisher needs, written from
the MQTT 3.1.1 OASIS standard: CONNECT/CONNACK, PUBLISH at QoS 0, 1 or 2 with retain, the
QoS 1 (PUBACK) and QoS 2 (PUBREC/PUBREL/PUBCOMP) acknowledgements, a will, PINGREQ when idle,
and DISCONNECT. Packets are built and read by osteotel/mqttcodec.py, gathered in a buffer and
handed to the transport many at a time; one reader task parses whatever the broker sends back.

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
import time
from types import TracebackType
from typing import Final, Self

from osteotel.errors import ConfigError, OsteotelError
from osteotel.mqttcodec import (
    CONNACK_REASONS,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Ack,
    Connack,
    MalformedPacketError,
    Pingresp,
    Will,
    ack_packet,
    connect_packet,
    encode_remaining_length,
    publish_packet,
    read_packet,
    topic_bytes,
)
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

_MAX_PACKET_ID: Final = 65_535

_FLUSH_BYTES: Final = 1 << 16  # hand the buffer to the transport once it holds this much
_READ_BYTES: Final = 1 << 16
_TOPIC_CACHE: Final = 4_096  # encoded topic prefixes kept; replay has a few dozen topics
_CLOSE_TIMEOUT_S: Final = 5.0

# What a packet id in flight awaits; each acknowledgement type is accepted in one state only.
_AWAIT_PUBACK: Final = 1
_AWAIT_PUBREC: Final = 2
_AWAIT_PUBCOMP: Final = 3
_AWAITED_BY: Final = {PUBACK: _AWAIT_PUBACK, PUBREC: _AWAIT_PUBREC, PUBCOMP: _AWAIT_PUBCOMP}


class PublishError(OsteotelError):
    """The broker could not be reached, refused the session, or lost or stalled it.

    Attributes:
        return_code: the CONNACK return code when the broker refused the connection.
    """

    def __init__(self, message: str, *, return_code: int | None = None) -> None:
        super().__init__(message)
        self.return_code = return_code


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
        self._connect = connect_packet(
            client_id,
            keepalive_s=keepalive,
            clean_session=True,  # a replay leaves no state behind on the broker
            username=mqtt.username,
            password=password,
            will=will,
        )
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
                self._send(DISCONNECT)
                self._write_buffer()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(self._writer_drain(), _CLOSE_TIMEOUT_S)
        finally:
            await self._close()

    async def _read_connack(self) -> None:
        assert self._reader is not None
        data = await self._reader.readexactly(4)
        try:
            packet, _ = read_packet(data, 0)
        except MalformedPacketError as exc:
            raise PublishError(f"{self._where} answered CONNECT with {exc.reason}") from exc
        if not isinstance(packet, Connack):
            raise PublishError(f"{self._where} answered CONNECT with {data.hex()}, not CONNACK")
        code = packet.return_code
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
            prefix = topic_bytes(topic)
            if len(self._topics) >= _TOPIC_CACHE:
                self._topics.clear()
            self._topics[topic] = prefix
        if qos not in (0, 1, 2):
            raise ValueError(f"qos is {qos!r}, must be 0, 1 or 2")
        if qos == 0:
            self._send(publish_packet(prefix, payload, qos=0, retain=retain))
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
            self._send(publish_packet(prefix, payload, qos=qos, packet_id=number, retain=retain))
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
        position = 0
        acked = False
        while True:
            try:
                packet, after = read_packet(data, position)
            except MalformedPacketError as exc:
                raise self._fail(f"{self._where} sent a malformed packet: {exc.reason}") from exc
            if packet is None:
                break
            position = after
            # A publish-only client gets acknowledgements and PINGRESPs, nothing else.
            if isinstance(packet, Ack) and packet.kind in _AWAITED_BY:
                kind, packet_id = packet.kind, packet.packet_id
                if in_flight.get(packet_id) != _AWAITED_BY[kind]:
                    raise self._fail(
                        f"{self._where} sent packet type {kind} for packet id "
                        f"{packet_id}, which does not await it"
                    )
                if kind == PUBREC:
                    in_flight[packet_id] = _AWAIT_PUBCOMP
                    self._send(ack_packet(PUBREL, packet_id))
                else:
                    if kind == PUBCOMP:
                        self._qos2_in_flight -= 1
                    del in_flight[packet_id]
                    acked = True
            elif isinstance(packet, Pingresp):
                self._ping_sent_at = None
            else:
                raise self._fail(f"{self._where} sent an unexpected {type(packet).__name__}")
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
                self._send(PINGREQ)
