"""The asyncio receive path: MQTT 3.1.1 on the event loop, with PahoSource's interface.

`osteotel bench receive` measured paho's receive path at 19-31 µs of CPU a message more than
an asyncio Protocol on the event loop (docs/ingest.md, "A faster MQTT receive path?"): paho
reads each packet with four system calls and writes each PUBACK with one, and PahoSource adds
a thread hop and a socket-pair wake-up per acknowledgement. Here one `data_received` reads
every whole packet in the chunk (osteotel/mqttcodec.py), and the PUBACKs `ack()` makes in one
loop turn go out in one write.

What PahoSource gives its users, this gives the same way: a persistent session (clean session
off) subscribed at QoS 1 (and QoS 0 for `best_effort` filters), acknowledgements only on
`ack()`, in arrival order, and never for a message of an earlier connection (the broker sends
it again, DUP set, on the next one); the broker's in-flight window as backpressure;
reconnecting with a 1-30 s backoff, re-subscribing and unsubscribing `stale` filters on every
connect; QoS 1 `publish` held until its PUBACK and sent again, DUP set, after a reconnect;
`confirmed()`; a PINGREQ when nothing was sent for half the keep-alive; the `_settle` step
before disconnecting; TLS and user name and password from the settings. A packet that breaks
the standard closes the connection with the reason logged, and the source reconnects.
"""

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from osteotel import mqttcodec as codec
from osteotel.logs import kv
from osteotel.mqtt import (
    CONFIRM_TIMEOUT_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    SETTLE_FILTER,
    SETTLE_TIMEOUT_S,
    MqttSource,
    PahoSource,
    Received,
    SourceBase,
)
from osteotel.settings import MqttSettings

__all__ = ["WireSource", "open_source"]

log = logging.getLogger("osteotel.mqtt")

_CONNECT_TIMEOUT_S: Final = 10.0  # reaching the broker and its CONNACK
_MAX_PACKET_ID: Final = 65_535


@dataclass(slots=True)
class _Outgoing:
    """A QoS 1 publish awaiting its PUBACK."""

    number: int  # its place among all publishes, for `confirmed`
    topic: bytes  # encoded
    payload: bytes
    sent: bool  # written on some connection: a resend sets DUP


class _Connection(asyncio.Protocol):
    """One network connection: bytes in, each whole packet to `on_packet`, then `on_read`
    once per chunk; a malformed packet closes it; its loss ends it."""

    def __init__(
        self, on_packet: Callable[[codec.Packet], None], on_read: Callable[[], None]
    ) -> None:
        self._on_packet = on_packet
        self._on_read = on_read
        self._rest = b""
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.answered: asyncio.Future[None] = loop.create_future()  # a CONNACK came
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        position = 0
        try:
            while True:
                packet, after = codec.read_packet(data, position)
                if packet is None:
                    break
                position = after
                self._on_packet(packet)
        except codec.MalformedPacketError as exc:
            log.error(kv("mqtt_malformed_packet", reason=exc.reason))
            self._rest = b""
            self.close()
        else:
            self._rest = data[position:]
        self._on_read()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._rest:
            log.warning(kv("mqtt_truncated_packet", bytes=len(self._rest)))
        if not self.lost.done():
            self.lost.set_result(None)


class WireSource(SourceBase):
    """Subscribes with a persistent session and yields messages until closed (asyncio path).

    Args: as `SourceBase` (the TLS CA file and keep-alive come with the settings).
    """

    def __init__(
        self,
        *,
        settings: MqttSettings,
        subscriptions: Sequence[str],
        best_effort: Sequence[str] = (),
        stale: Sequence[str] = (),
    ) -> None:
        super().__init__(
            settings=settings, subscriptions=subscriptions, best_effort=best_effort, stale=stale
        )
        self._connection: _Connection | None = None
        self._number = 0  # of the connection whose messages `ack` may acknowledge
        self._accepted = False  # CONNACK accepted on the current connection
        self._unacknowledged: deque[int] = deque()  # packet ids, in arrival order
        self._puback_bytes = bytearray()
        self._subscribing: dict[int, list[tuple[str, int]]] = {}  # SUBSCRIBE id -> filters
        self._connect_subscribe_id: int | None = None
        self._unsubscribing: set[int] = set()
        self._settle_id: int | None = None
        self._settled = asyncio.Event()
        self._outbox: dict[int, _Outgoing] = {}  # packet id -> publish, oldest first
        self._published = 0
        self._puback_arrived = asyncio.Event()
        self._next_id = 1
        self._last_sent_s = 0.0
        self._ping_sent_s: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        if settings.tls_ca_file is not None:
            self._ssl = ssl.create_default_context(cafile=settings.tls_ca_file)
        # Built once, so that a bad credential setting fails here, not in the connect task.
        self._connect_packet = codec.connect_packet(
            settings.client_id,
            keepalive_s=settings.keepalive_s,
            clean_session=False,  # the broker keeps the session and queues while we are away
            username=settings.username,
            password=settings.password_text(),
        )

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(
            self._run(), name=f"mqtt[{self._settings.client_id}].connect"
        )
        self._task.add_done_callback(self._run_ended)
        return self

    def _run_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Not silent: the source no longer connects, and `__aexit__` raises it too.
            log.error(kv("mqtt_connect_loop_failed", error=repr(task.exception())))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection = self._connection
        if self.connected:
            await self._settle()
        if self._connection is connection and connection is not None:
            # Disconnect without unsubscribing: the broker keeps the session and queues for us.
            self._write(codec.DISCONNECT)
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _settle(self) -> None:
        """Return once the broker has read every acknowledgement sent so far (bounded).

        As PahoSource._settle: MQTT answers packets in order, so the UNSUBACK to an
        UNSUBSCRIBE written after the PUBACKs says they are in (MQTT 3.1.1, section 3.10.4).
        """
        self._settled.clear()
        self._settle_id = self._unsubscribe([SETTLE_FILTER])
        try:
            await asyncio.wait_for(self._settled.wait(), SETTLE_TIMEOUT_S)
        except TimeoutError:
            log.warning(kv("mqtt_unsettled", timeout_s=SETTLE_TIMEOUT_S))

    def ack(self, message: Received) -> None:
        """Acknowledge a message to the broker: call only once its effect is durable, and in
        the order messages were received (MQTT 3.1.1, section 4.6). A QoS 0 message needs none;
        one of an earlier connection gets none (the broker has sent it again, DUP set).

        Raises:
            RuntimeError: the message is not the oldest unacknowledged one of this connection.
        """
        if message.qos == 0:
            return
        if message.connection != self._number or not self._unacknowledged:
            log.debug(kv("mqtt_ack_of_earlier_connection", mid=message.mid))
            return
        oldest = self._unacknowledged.popleft()
        if message.mid != oldest:
            raise RuntimeError(f"ack of packet {message.mid} out of order: {oldest} is older")
        if not self._puback_bytes:
            asyncio.get_running_loop().call_soon(self._write_pubacks)
        self._puback_bytes += codec.ack_packet(codec.PUBACK, message.mid)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1; held until the broker acknowledges it and sent again, DUP set,
        on every reconnect until then (in this process: a crash loses what the broker has not
        acknowledged, see `confirmed`)."""
        packet_id = self._packet_id()
        self._published += 1
        outgoing = _Outgoing(self._published, codec.topic_bytes(topic), payload, sent=False)
        self._outbox[packet_id] = outgoing
        if self._accepted:
            self._send_publish(packet_id, outgoing)

    async def confirmed(self, timeout_s: float = CONFIRM_TIMEOUT_S) -> bool:
        """Whether the broker acknowledged everything published so far, waiting up to
        `timeout_s`."""
        goal = self._published
        try:
            async with asyncio.timeout(timeout_s):
                while self._outbox and next(iter(self._outbox.values())).number <= goal:
                    self._puback_arrived.clear()
                    await self._puback_arrived.wait()
        except TimeoutError:
            return False
        return True

    def set_subscriptions(self, subscriptions: Sequence[str], stale: Sequence[str]) -> None:
        """Change the QoS 1 filters while connected (a registry reload moved hubs): subscribe
        the new ones, unsubscribe those dropped and `stale`; a reconnect uses the new set."""
        added, dropped = self._replace_subscriptions(subscriptions, stale)
        if self._accepted:
            if dropped:
                self._unsubscribe(dropped)
            if added:
                self._subscribe(added)
        log.info(kv("mqtt_subscriptions_changed", added=len(added), dropped=len(dropped)))

    # --- the connection ---------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, and connect again after every loss, waiting 1 s, then twice as long after
        each failed attempt, at most 30 s (as PahoSource's paho reconnect delay)."""
        delay_s = RECONNECT_MIN_S
        while True:
            accepted = await self._connect_once()
            if accepted:
                delay_s = RECONNECT_MIN_S
            await asyncio.sleep(delay_s)
            if not accepted:
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)

    async def _connect_once(self) -> bool:
        """One connection from start to loss; whether the broker accepted it."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        connection = _Connection(self._on_packet, self._after_read)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                await loop.create_connection(
                    lambda: connection,
                    settings.host,
                    settings.port,
                    ssl=self._ssl,
                    server_hostname=settings.host if self._ssl else None,
                )
        except (OSError, TimeoutError) as exc:
            log.warning(kv("mqtt_connect_failed", host=settings.host, reason=repr(exc)))
            return False
        self._number += 1
        self._connection = connection
        self._accepted = False
        self._unacknowledged.clear()
        self._puback_bytes.clear()
        self._subscribing.clear()
        self._unsubscribing.clear()
        self._ping_sent_s = None
        self._write(self._connect_packet)
        keepalive = asyncio.create_task(
            self._keep_alive(connection), name=f"mqtt[{settings.client_id}].ping"
        )
        done, _ = await asyncio.wait(
            [connection.answered, connection.lost],
            timeout=_CONNECT_TIMEOUT_S,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not done:
            log.warning(kv("mqtt_no_connack", timeout_s=_CONNECT_TIMEOUT_S))
            connection.close()
        accepted = self._accepted
        try:
            await asyncio.shield(connection.lost)
        finally:
            keepalive.cancel()
            if self._connection is connection:
                self._lost()
            connection.close()
        return accepted

    def _lost(self) -> None:
        self._connection = None
        self._accepted = False
        self._connected.clear()
        self._puback_bytes.clear()  # for that connection's messages: the broker resends them
        self._number += 1  # acknowledgements of this connection's messages go nowhere now
        if self._settle_id is not None:
            self._settled.set()  # nothing left to settle on a lost connection
        log.warning(kv("mqtt_disconnected", host=self._settings.host))

    async def _keep_alive(self, connection: _Connection) -> None:
        """PINGREQ when nothing was sent for half the keep-alive (section 3.1.2.10); a broker
        silent to it for a whole keep-alive is taken as gone, and the connection closed."""
        period_s = self._settings.keepalive_s / 2
        while True:
            await asyncio.sleep(period_s)
            now_s = time.monotonic()
            if self._ping_sent_s is not None and now_s - self._ping_sent_s > 2 * period_s:
                log.warning(kv("mqtt_ping_unanswered", keepalive_s=self._settings.keepalive_s))
                connection.close()
                return
            if self._ping_sent_s is None and now_s - self._last_sent_s >= period_s:
                self._ping_sent_s = now_s
                self._write(codec.PINGREQ)

    def _write(self, packet: bytes) -> None:
        connection = self._connection
        if connection is None or connection.transport is None or connection.transport.is_closing():
            return
        if self._puback_bytes:  # acknowledgements first: they were made first
            self._write_pubacks()
        connection.transport.write(packet)
        self._last_sent_s = time.monotonic()

    def _write_pubacks(self) -> None:
        if not self._puback_bytes:
            return
        pubacks = bytes(self._puback_bytes)
        self._puback_bytes.clear()
        self._write(pubacks)

    def _packet_id(self) -> int:
        """A packet id no publish, subscribe or unsubscribe in flight holds (section 2.3.1)."""
        packet_id = self._next_id
        while (
            packet_id in self._outbox
            or packet_id in self._subscribing
            or packet_id in self._unsubscribing
        ):
            packet_id = packet_id % _MAX_PACKET_ID + 1
        self._next_id = packet_id % _MAX_PACKET_ID + 1
        return packet_id

    def _subscribe(self, filters: list[tuple[str, int]]) -> int:
        packet_id = self._packet_id()
        self._subscribing[packet_id] = filters
        self._write(codec.subscribe_packet(packet_id, filters))
        return packet_id

    def _unsubscribe(self, filters: list[str]) -> int:
        packet_id = self._packet_id()
        self._unsubscribing.add(packet_id)
        self._write(codec.unsubscribe_packet(packet_id, filters))
        return packet_id

    def _send_publish(self, packet_id: int, outgoing: _Outgoing) -> None:
        self._write(
            codec.publish_packet(
                outgoing.topic, outgoing.payload, qos=1, packet_id=packet_id, dup=outgoing.sent
            )
        )
        outgoing.sent = True

    # --- packets from the broker, on the loop -----------------------------------------------------

    def _on_packet(self, packet: codec.Packet) -> None:
        if isinstance(packet, codec.Publish):
            self._on_publish(packet)
        elif isinstance(packet, codec.Ack):
            self._on_ack(packet)
        elif isinstance(packet, codec.Suback):
            self._on_suback(packet)
        elif isinstance(packet, codec.Connack):
            self._on_connack(packet)
        else:  # PINGRESP
            self._ping_sent_s = None

    def _after_read(self) -> None:
        if self._inbox:
            self._arrived.set()

    def _on_publish(self, packet: codec.Publish) -> None:
        if packet.qos == 2:  # we subscribe at QoS 1 at most: the broker may not send QoS 2
            raise codec.MalformedPacketError("PUBLISH with QoS 2 to a QoS 1 subscription")
        self._inbox.append(
            Received(
                topic=packet.topic,
                payload=packet.payload,
                mid=packet.packet_id,
                qos=packet.qos,
                received_ns=time.time_ns(),
                dup=packet.dup,
                connection=self._number,
            )
        )
        if packet.qos:
            self._unacknowledged.append(packet.packet_id)

    def _on_connack(self, packet: codec.Connack) -> None:
        if self._accepted:
            raise codec.MalformedPacketError("a second CONNACK")
        if self._connection is not None and not self._connection.answered.done():
            self._connection.answered.set_result(None)
        if packet.return_code != 0:
            reason = codec.CONNACK_REASONS.get(packet.return_code, "unknown return code")
            log.error(kv("mqtt_connect_refused", reason=reason, code=packet.return_code))
            if self._connection is not None:
                self._connection.close()
            return
        self._accepted = True
        log.info(
            kv(
                "mqtt_connected",
                host=self._settings.host,
                port=self._settings.port,
                session_present=packet.session_present,
            )
        )
        # Publishes the broker has not acknowledged go again, in order, DUP set if sent before.
        for packet_id, outgoing in self._outbox.items():
            self._send_publish(packet_id, outgoing)
        if self._stale:
            self._unsubscribe(self._stale)
        if not self._subscriptions:  # a partition that owns no hub yet
            self._connect_subscribe_id = None
            self._connected.set()
            return
        self._connect_subscribe_id = self._subscribe(self._subscriptions)

    def _on_suback(self, packet: codec.Suback) -> None:
        filters = self._subscribing.pop(packet.packet_id, [])
        for (topic, _), code in zip(filters, packet.return_codes, strict=False):
            if code == 0x80:
                log.warning(kv("mqtt_subscription_refused", topic=topic, code=code))
        if packet.packet_id == self._connect_subscribe_id:
            self._connected.set()
        elif filters:  # subscribed while connected (`set_subscriptions`)
            log.info(kv("mqtt_subscribed", filters=len(filters)))

    def _on_ack(self, packet: codec.Ack) -> None:
        if packet.kind == codec.PUBACK:
            if self._outbox.pop(packet.packet_id, None) is None:
                log.warning(kv("mqtt_unexpected_puback", packet_id=packet.packet_id))
            self._puback_arrived.set()
        elif packet.kind == codec.UNSUBACK:
            self._unsubscribing.discard(packet.packet_id)
            if packet.packet_id == self._settle_id:
                self._settle_id = None
                self._settled.set()
        else:  # PUBREC, PUBREL, PUBCOMP: QoS 2, which this client never uses
            raise codec.MalformedPacketError(f"packet type {packet.kind} without a QoS 2 flow")


def open_source(
    *,
    settings: MqttSettings,
    subscriptions: Sequence[str],
    best_effort: Sequence[str] = (),
    stale: Sequence[str] = (),
) -> MqttSource:
    """The MQTT source `settings.receive_path` names: paho's thread (`PahoSource`, the default)
    or the asyncio path (`WireSource`); the arguments are theirs."""
    kind = WireSource if settings.receive_path == "asyncio" else PahoSource
    return kind(
        settings=settings, subscriptions=subscriptions, best_effort=best_effort, stale=stale
    )
