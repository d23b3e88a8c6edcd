"""The MQTT boundary of the services: a persistent QoS 1 subscription with manual acknowledgement.

aiomqtt 2.x acknowledges a QoS 1 message as soon as it arrives, before its effect is stored, so
a crash between receipt and write would lose it. This module drives paho-mqtt 2 directly with
`manual_ack=True`: a message is acknowledged only when `ack()` is called, after its effect is
durable (ingest: the data stored; alerts: the engine's state and outbox committed). Until then
the broker holds it, and its in-flight window (`max_inflight_messages`) is the backpressure: a
slow consumer stops the broker sending instead of memory growing here.

paho runs its network loop in its own thread; messages cross to the event loop in batches: the
paho thread appends to a deque and schedules one wake-up (`call_soon_threadsafe`) for however
many messages arrive before the loop runs it, so a burst costs one hop, not one per message.
On leaving, the source waits until the broker has read its last acknowledgements (`_settle`)
before it disconnects. No other module of ours sees paho.

`MqttSource` is what ingest and the alert service use of a source; `PahoSource` here and
`osteotel.mqttwire.WireSource` (MQTT 3.1.1 on the event loop, no thread) both give it, and
`osteotel.mqttwire.open_source` makes the one `MqttSettings.receive_path` names.
"""

import asyncio
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MQTTException

from osteotel.logs import kv
from osteotel.settings import MqttSettings

__all__ = ["MQTT_ERRORS", "MqttSource", "PahoSource", "Received", "SourceBase"]

log = logging.getLogger("osteotel.mqtt")

MQTT_ERRORS: tuple[type[BaseException], ...] = (MQTTException,)
"""paho's own exception root (its other classes derive from it or from OSError), for a
caller's error mapping that must not import paho."""

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
SETTLE_TIMEOUT_S = 5.0
CONFIRM_TIMEOUT_S = 5.0
_CONFIRM_POLL_S = 0.005
# Never subscribed: only its UNSUBACK matters (see PahoSource._settle).
SETTLE_FILTER = "osteotel/v1/settle"


@dataclass(frozen=True, slots=True)
class Received:
    """One message as it came from the broker, not yet acknowledged."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received_ns: int
    dup: bool = False  # the broker sends it again: it was in flight, unacknowledged, before
    connection: int = 0  # which of the source's connections brought it (WireSource acks by it)


class MqttSource(Protocol):
    """What ingest and the alert service use of an MQTT source (osteotel.mqttwire.open_source
    makes one): `PahoSource` here, or `osteotel.mqttwire.WireSource`."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def connected(self) -> bool: ...

    async def wait_connected(self, timeout_s: float) -> None: ...

    def batches(self, *, max_messages: int) -> AsyncIterator[list[Received]]: ...

    def ack(self, message: Received) -> None: ...

    def publish(self, topic: str, payload: bytes) -> None: ...

    async def confirmed(self, timeout_s: float = CONFIRM_TIMEOUT_S) -> bool: ...

    def set_subscriptions(self, subscriptions: Sequence[str], stale: Sequence[str]) -> None: ...


class SourceBase:
    """What both MQTT sources share: their subscriptions, the messages received and waiting
    for the event loop, and whether the session is up (`PahoSource`, `WireSource`).

    Args:
        settings: broker address, credentials and client id. The client id is fixed so that
            the broker keeps the session (and queues QoS 1 messages) while the service is away.
        subscriptions: topic filters, each subscribed with QoS 1.
        best_effort: topic filters subscribed with QoS 0: the broker neither queues their
            messages while the service is away nor waits for an acknowledgement.
        stale: topic filters an earlier run may have left in the persistent session,
            unsubscribed on every connect (unsubscribing a filter the session lacks is harmless).
    """

    def __init__(
        self,
        *,
        settings: MqttSettings,
        subscriptions: Sequence[str],
        best_effort: Sequence[str] = (),
        stale: Sequence[str] = (),
    ) -> None:
        self._settings = settings
        self._subscriptions = [(topic, 1) for topic in subscriptions]
        self._subscriptions += [(topic, 0) for topic in best_effort]
        self._stale = list(stale)
        # Bounded by the broker's in-flight window: it sends no more until we acknowledge.
        self._inbox: deque[Received] = deque()
        self._arrived = asyncio.Event()
        self._connected = asyncio.Event()

    def _replace_subscriptions(
        self, subscriptions: Sequence[str], stale: Sequence[str]
    ) -> tuple[list[tuple[str, int]], list[str]]:
        """Take `subscriptions` as the QoS 1 filters and `stale` as the stale ones; return the
        filters to subscribe (new ones) and those to unsubscribe (dropped and stale)."""
        old = {topic for topic, qos in self._subscriptions if qos == 1}
        new = list(dict.fromkeys(subscriptions))
        self._subscriptions = [(topic, 1) for topic in new] + [
            (topic, qos) for topic, qos in self._subscriptions if qos == 0
        ]
        self._stale = list(stale)
        added = [(topic, 1) for topic in new if topic not in old]
        return added, sorted((old - set(new)) | set(stale))

    @property
    def connected(self) -> bool:
        """Whether the session to the broker is up and its subscriptions acknowledged."""
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until the first SUBACK; raises TimeoutError after `timeout_s` seconds."""
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def batches(self, *, max_messages: int) -> AsyncIterator[list[Received]]:
        """Yield received messages in arrival order, forever, in batches.

        Args:
            max_messages: the most messages in one batch; a batch is never empty.
        """
        inbox = self._inbox
        while True:
            if inbox:
                # Only this task takes from the inbox, so that many items are there to take.
                yield [inbox.popleft() for _ in range(min(len(inbox), max_messages))]
                continue
            self._arrived.clear()
            if not inbox:  # a message may have come between the check above and clear()
                await self._arrived.wait()


class PahoSource(SourceBase):
    """Subscribes with a persistent session and yields messages until closed (paho's thread).

    Args: as `SourceBase`.
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
        # SUBSCRIBE packets in flight (mid -> their filters), to name a refused one; written
        # under the lock so that paho's thread cannot see a SUBACK before its mid is recorded.
        self._subscribing: dict[int, list[tuple[str, int]]] = {}
        self._subscribing_lock = threading.Lock()
        # Message ids `publish` sent that the broker has not acknowledged in order yet, oldest
        # first, and ids it acknowledged out of that order (paho's thread adds them; a PUBACK
        # can come before `publish` has recorded its id, so acknowledgements are kept, not
        # looked up).
        self._sent: deque[int] = deque()
        self._acknowledged: set[int] = set()
        self._acknowledged_lock = threading.Lock()
        self._published = 0
        self._wake_pending = False
        self._connection = 0  # counts disconnects: a Received carries the number it came in
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
            manual_ack=True,
        )
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password_text())
        if settings.tls_ca_file is not None:
            self._client.tls_set_context(ssl.create_default_context(cafile=settings.tls_ca_file))
        self._client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = self._on_unsubscribe
        self._client.on_publish = self._on_publish
        self._subscribe_mid: int | None = None
        self._settled = asyncio.Event()
        self._settle_mid: int | None = None

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(
            self._settings.host, self._settings.port, keepalive=self._settings.keepalive_s
        )
        self._client.loop_start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.connected:
            await self._settle()
        # Disconnect without unsubscribing: the broker keeps the session and queues for us.
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def _settle(self) -> None:
        """Return once the broker has read every acknowledgement sent so far (bounded).

        Closing the connection while the broker's newer messages sit unread here makes the
        kernel reset it, and the broker then loses what it had not read yet — the last
        PUBACKs included — and delivers those messages again after the restart. MQTT
        answers packets in order, so the UNSUBACK to an UNSUBSCRIBE sent after the PUBACKs
        means they are in. The filter is one nothing subscribes to: the broker answers an
        UNSUBSCRIBE whether or not it removed anything (MQTT 3.1.1, section 3.10.4).
        """
        self._settled.clear()
        _, self._settle_mid = self._client.unsubscribe(SETTLE_FILTER)
        try:
            await asyncio.wait_for(self._settled.wait(), SETTLE_TIMEOUT_S)
        except TimeoutError:
            log.warning(kv("mqtt_unsettled", timeout_s=SETTLE_TIMEOUT_S))

    def _wake(self) -> None:
        # Runs on the loop. Reset the flag before setting the event: a message appended after
        # this line schedules a new wake-up, one appended before is seen by the consumer.
        self._wake_pending = False
        self._arrived.set()

    def set_subscriptions(self, subscriptions: Sequence[str], stale: Sequence[str]) -> None:
        """Change the QoS 1 filters while connected (a registry reload moved hubs): subscribe
        the new ones, unsubscribe those dropped and `stale`; a reconnect uses the new set."""
        added, dropped = self._replace_subscriptions(subscriptions, stale)
        if dropped:
            self._client.unsubscribe(dropped)
        if added:
            self._subscribe(self._client, added)
        log.info(kv("mqtt_subscriptions_changed", added=len(added), dropped=len(dropped)))

    def _subscribe(self, client: paho.Client, filters: list[tuple[str, int]]) -> int:
        with self._subscribing_lock:
            _, mid = client.subscribe(filters)
            assert mid is not None  # paho returns None only for an empty list
            self._subscribing[mid] = filters
        return mid

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1; paho queues it while the broker is away and sends it on reconnect
        (in this process: a crash loses what the broker has not acknowledged, see `confirmed`)."""
        info = self._client.publish(topic, payload, qos=1)
        self._sent.append(info.mid)
        self._published += 1
        self._match_acknowledged()

    async def confirmed(self, timeout_s: float = CONFIRM_TIMEOUT_S) -> bool:
        """Whether the broker acknowledged everything published so far, waiting up to
        `timeout_s` (polled: paho's thread records each PUBACK as it arrives)."""
        goal = self._published
        deadline = time.monotonic() + timeout_s
        while self._match_acknowledged() < goal:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_CONFIRM_POLL_S)
        return True

    def _match_acknowledged(self) -> int:
        """Drop the oldest published messages the broker has acknowledged; returns how many of
        all published are acknowledged, counted in order."""
        with self._acknowledged_lock:
            while self._sent and self._sent[0] in self._acknowledged:
                self._acknowledged.discard(self._sent.popleft())
        return self._published - len(self._sent)

    def ack(self, message: Received) -> None:
        """Acknowledge a message to the broker: call only once its effect is durable, and in
        the order messages were received (MQTT 3.1.1, section 4.6). A QoS 0 message needs none;
        one of an earlier connection gets none: the broker has sent it again, DUP set, with the
        same packet id, and a PUBACK now would acknowledge that copy before it is stored."""
        if message.qos > 0 and message.connection == self._connection:
            # A loss after this check is harmless: paho drops what it queued on reconnecting.
            self._client.ack(message.mid, message.qos)

    # paho's callbacks run in paho's network thread.
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error(kv("mqtt_connect_refused", reason=str(reason)))
            return
        log.info(
            kv(
                "mqtt_connected",
                host=self._settings.host,
                port=self._settings.port,
                session_present=flags.session_present,
            )
        )
        # Subscribing again is harmless when the session survived, and needed when it did not.
        # `connected` waits for the SUBACK: a message published after it is ours to receive.
        # (This runs in paho's thread, as `_on_subscribe` does: the mid is set before it looks.)
        if self._stale:
            client.unsubscribe(self._stale)
        if not self._subscriptions:  # a partition that owns no hub yet
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._connected.set)
            return
        self._subscribe_mid = self._subscribe(client, self._subscriptions)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        # Our own disconnect (a stop, or a notifier's short session) is no warning.
        level = logging.WARNING if reason.is_failure else logging.INFO
        log.log(level, kv("mqtt_disconnected", reason=str(reason)))
        self._connection += 1  # the messages received so far may no longer be acknowledged
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected.clear)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        with self._subscribing_lock:
            filters = self._subscribing.pop(mid, [])
        for (topic, _), reason in zip(filters, reasons, strict=False):
            if reason.is_failure:
                log.warning(kv("mqtt_subscription_refused", topic=topic, reason=str(reason)))
        if mid != self._subscribe_mid:
            if filters:  # subscribed while connected (`set_subscriptions`)
                log.info(kv("mqtt_subscribed", filters=len(filters)))
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected.set)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        with self._acknowledged_lock:
            self._acknowledged.add(mid)

    def _on_unsubscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        assert self._loop is not None
        # Compared on the loop: `_settle` learns the mid only when `unsubscribe` returns.
        self._loop.call_soon_threadsafe(self._unsubscribed, mid)

    def _unsubscribed(self, mid: int) -> None:
        if mid == self._settle_mid:
            self._settled.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        received = Received(
            topic=message.topic,
            payload=bytes(message.payload),
            mid=message.mid,
            qos=message.qos,
            received_ns=time.time_ns(),
            dup=bool(message.dup),
            connection=self._connection,
        )
        self._inbox.append(received)
        if not self._wake_pending:
            self._wake_pending = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._wake)
