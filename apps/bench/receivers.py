"""The receivers `osteotel bench receive` compares, each run as its own process.

    python -m apps.bench.receivers RECEIVER --host H --port P --client-id ID --messages N

resumes the persistent session `ID` (the bench created it), prints `ready` once the session is up,
receives N QoS 1 messages (queued before it connected, or published while it runs),
acknowledges each one in the order it came, waits until the broker has read the last
acknowledgement, disconnects, and prints one JSON object: messages and payload bytes received,
DUP-flagged ones, and the process's CPU time (user + system, all its threads, from
`resource.getrusage`) and wall time from just before connecting until after disconnecting.

Receivers:
    source  osteotel.mqtt.PahoSource as ingest uses it by default: paho's thread, a batch
            hand-over to the event loop, `ack()` per message from the loop (MQTT 3.1.1)
    wire    osteotel.mqttwire.WireSource as ingest uses it with `receive_path = "asyncio"`:
            MQTT 3.1.1 on the event loop, `ack()` per message, a turn's PUBACKs in one write
    paho    bare paho-mqtt 2 with `manual_ack=True`, acknowledging in its callback, its loop in
            the main thread: what MqttSource adds over paho (MQTT 3.1.1)
    mqtt5   an asyncio Protocol on the event loop itself with the `mqtt5` packet codec (Rust);
            messages handed to a consumer task in batches, acknowledged in order, the PUBACKs
            of one loop turn written together (MQTT 5)
    plain   the same Protocol with our plain-Python codec, osteotel/mqttcodec.py (MQTT 3.1.1):
            the codec's share

The `mqtt5` and `plain` receivers are a measuring prototype, not a client: no keep-alive (they
connect with keep-alive 0), no reconnect, no TLS, no credentials, no publishing, no subscribing
(the bench made the session's subscription). `wire` is the client built from them.
"""

import argparse
import asyncio
import importlib
import json
import resource
import sys
import time
from collections import deque
from typing import Protocol

from osteotel import mqttcodec

__all__ = ["READY_LINE", "RECEIVERS", "SETTLE_FILTER", "TELEMETRY_FILTER", "main"]

RECEIVERS = ("source", "wire", "paho", "mqtt5", "plain")
"""The Python receivers, in the order the bench runs them."""

TELEMETRY_FILTER = "osteotel/v1/+/+/telemetry"
"""The filter of every receiver's session, as ingest's wildcard subscription."""

SETTLE_FILTER = "osteotel-bench/settle"
"""Never subscribed: the UNSUBACK to it says the broker has read every PUBACK before it."""

RECEIVE_MAX = 1000
"""The MQTT 5 receiver announces the in-flight window that Mosquitto's `max_inflight_messages`
gives the 3.1.1 ones (apps/services.py), so every receiver gets the same window."""

READY_LINE = "ready"
"""What a receiver prints once its session is up, before its figures."""

# What each receiver loads before the clock starts, as a long-running service has it loaded.
_PRELOAD = {
    "source": "osteotel.mqtt",
    "wire": "osteotel.mqttwire",
    "paho": "paho.mqtt.client",
    "mqtt5": "mqtt5",
}

_SESSION_EXPIRY_S = 3600
_CONNECT_TIMEOUT_S = 10.0
_BATCH = 200  # the most messages one hand-over yields, as ingest (_HANDLE_MAX_MESSAGES)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Tally:
    """What one drain received; the figures the child prints."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.messages = 0
        self.payload_bytes = 0
        self.dup = 0

    def count(self, payload: bytes, dup: bool) -> None:
        self.messages += 1
        self.payload_bytes += len(payload)
        self.dup += dup

    @property
    def done(self) -> bool:
        return self.messages >= self.expected

    @staticmethod
    def ready() -> None:
        """Say on stdout that the session is up: a live run starts publishing now."""
        print(READY_LINE, flush=True)


# --- (a) ingest's sources, as ingest drives them -------------------------------------------------


async def _drain_source(receiver: str, host: str, port: int, client_id: str, tally: _Tally) -> None:
    from osteotel.mqttwire import open_source  # noqa: PLC0415 - each child loads its receiver
    from osteotel.settings import MqttSettings  # noqa: PLC0415

    path = "asyncio" if receiver == "wire" else "paho"
    settings = MqttSettings(host=host, port=port, client_id=client_id, receive_path=path)
    async with open_source(settings=settings, subscriptions=[TELEMETRY_FILTER]) as source:
        await source.wait_connected(timeout_s=_CONNECT_TIMEOUT_S)
        tally.ready()
        async for batch in source.batches(max_messages=_BATCH):
            for message in batch:
                tally.count(message.payload, message.dup)
                source.ack(message)
            if tally.done:
                break  # leaving the context settles: the broker reads the last PUBACKs


# --- (b) bare paho with manual acknowledgement ---------------------------------------------------


def _drain_paho(host: str, port: int, client_id: str, tally: _Tally, timeout_s: float) -> None:
    import paho.mqtt.client as paho  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=paho.MQTTv311,
        manual_ack=True,
    )

    def on_message(client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        tally.count(bytes(message.payload), bool(message.dup))
        client.ack(message.mid, message.qos)
        if tally.messages == tally.expected:
            client.unsubscribe(SETTLE_FILTER)

    finished: list[bool] = []
    client.on_message = on_message
    client.on_connect = lambda *_: tally.ready()
    client.on_unsubscribe = lambda client, *_: client.disconnect()
    client.on_disconnect = lambda *_: finished.append(True)
    client.connect(host, port, keepalive=60)
    deadline = time.monotonic() + timeout_s
    while not finished:  # paho's loop_forever, bounded
        if time.monotonic() > deadline:
            raise TimeoutError(f"paho received {tally.messages} of {tally.expected}")
        client.loop(timeout=1.0)


# --- (c), (d) an asyncio Protocol and two codecs -------------------------------------------------


class _Received:
    """One PUBLISH as the codecs read it."""

    __slots__ = ("dup", "packet_id", "payload", "qos", "topic")

    def __init__(self, topic: str, payload: bytes, packet_id: int, qos: int, dup: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.packet_id = packet_id
        self.qos = qos
        self.dup = dup


# What a codec reads: a PUBLISH, or (packet type, its first reason code or packet id).
_Packet = _Received | tuple[int, int]
_CONNACK, _UNSUBACK = 2, 11


class _Codec(Protocol):
    def connect(self, client_id: str) -> bytes: ...
    def puback(self, packet_id: int) -> bytes: ...
    def unsubscribe(self, packet_id: int, topic_filter: str) -> bytes: ...
    def disconnect(self) -> bytes: ...
    def read(self, data: bytes, start: int) -> tuple[_Packet | None, int]:
        """The packet at `start` and where the next begins; (None, start) if incomplete."""
        ...


class _Mqtt5Codec:
    """The `mqtt5` library (Rust): MQTT 5 packets to and from bytes."""

    def __init__(self) -> None:
        import mqtt5  # noqa: PLC0415 - only this receiver's child needs it

        self._mqtt5 = mqtt5

    def connect(self, client_id: str) -> bytes:
        return self._mqtt5.ConnectPacket(
            client_id,
            clean_start=False,
            session_expiry_interval=_SESSION_EXPIRY_S,
            receive_max=RECEIVE_MAX,
        ).write()

    def puback(self, packet_id: int) -> bytes:
        return self._mqtt5.PubAckPacket(packet_id).write()

    def unsubscribe(self, packet_id: int, topic_filter: str) -> bytes:
        return self._mqtt5.UnsubscribePacket(packet_id, [topic_filter]).write()

    def disconnect(self) -> bytes:
        return self._mqtt5.DisconnectPacket().write()

    def read(self, data: bytes, start: int) -> tuple[_Packet | None, int]:
        try:
            packet, size = self._mqtt5.read(memoryview(data)[start:])
        except IndexError:  # mqtt5's "Not enough bytes": the rest comes in a later read
            return None, start
        if isinstance(packet, self._mqtt5.PublishPacket):
            received = _Received(
                packet.topic, packet.payload, packet.packet_id or 0, packet.qos, packet.duplicate
            )
            return received, start + size
        if isinstance(packet, self._mqtt5.ConnAckPacket):
            return (_CONNACK, packet.reason_code), start + size
        if isinstance(packet, self._mqtt5.UnsubAckPacket):
            return (_UNSUBACK, packet.packet_id), start + size
        return (0, 0), start + size


class _PlainCodec:
    """osteotel/mqttcodec.py behind the receiver's codec interface (MQTT 3.1.1)."""

    def connect(self, client_id: str) -> bytes:
        # Keep-alive off: a measuring run, not a client.
        return mqttcodec.connect_packet(client_id, keepalive_s=0, clean_session=False)

    def puback(self, packet_id: int) -> bytes:
        return mqttcodec.ack_packet(mqttcodec.PUBACK, packet_id)

    def unsubscribe(self, packet_id: int, topic_filter: str) -> bytes:
        return mqttcodec.unsubscribe_packet(packet_id, [topic_filter])

    def disconnect(self) -> bytes:
        return mqttcodec.DISCONNECT

    def read(self, data: bytes, start: int) -> tuple[_Packet | None, int]:
        packet, end = mqttcodec.read_packet(data, start)
        if packet is None:
            return None, start
        if isinstance(packet, mqttcodec.Publish):
            received = _Received(
                packet.topic, packet.payload, packet.packet_id, packet.qos, packet.dup
            )
            return received, end
        if isinstance(packet, mqttcodec.Connack):
            return (_CONNACK, packet.return_code), end
        if isinstance(packet, mqttcodec.Ack) and packet.kind == mqttcodec.UNSUBACK:
            return (_UNSUBACK, packet.packet_id), end
        return (0, 0), end


class _WireReceiver(asyncio.Protocol):
    """Reads packets on the event loop, hands PUBLISHes over in batches, writes PUBACKs."""

    def __init__(self, codec: _Codec, client_id: str) -> None:
        self._codec = codec
        self._client_id = client_id
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._rest = b""
        self.inbox: deque[_Received] = deque()
        self.arrived = asyncio.Event()
        self._unacknowledged: deque[int] = deque()  # packet ids in the order they came
        self._outgoing = bytearray()
        self.connected: asyncio.Future[int] = self._loop.create_future()
        self.settled: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._codec.connect(self._client_id))

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        start = 0
        arrived = False
        while True:
            packet, end = self._codec.read(data, start)
            if packet is None:
                break
            start = end
            if isinstance(packet, _Received):
                self.inbox.append(packet)
                if packet.qos:
                    self._unacknowledged.append(packet.packet_id)
                arrived = True
            elif packet[0] == _CONNACK and not self.connected.done():
                self.connected.set_result(packet[1])
            elif packet[0] == _UNSUBACK and not self.settled.done():
                self.settled.set_result(None)
        self._rest = data[start:]
        if arrived:
            self.arrived.set()

    def ack(self, message: _Received) -> None:
        """Acknowledge in arrival order (section 4.6 of MQTT 3.1.1 and 5); written at the end of
        this turn."""
        if not message.qos:
            return
        expected = self._unacknowledged.popleft()
        if message.packet_id != expected:
            raise RuntimeError(f"ack of {message.packet_id} out of order: {expected} is older")
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing += self._codec.puback(message.packet_id)

    def _flush(self) -> None:
        assert self._transport is not None
        self._transport.write(bytes(self._outgoing))
        self._outgoing.clear()

    def send(self, packet: bytes) -> None:
        assert self._transport is not None
        if self._outgoing:
            self._flush()
        self._transport.write(packet)

    def close(self) -> None:
        assert self._transport is not None
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _drain_wire(codec: _Codec, host: str, port: int, client_id: str, tally: _Tally) -> None:
    loop = asyncio.get_running_loop()
    _, receiver = await loop.create_connection(lambda: _WireReceiver(codec, client_id), host, port)
    reason = await receiver.connected
    if reason != 0:
        raise ConnectionError(f"CONNACK reason {reason}")
    tally.ready()
    inbox = receiver.inbox
    while not tally.done:
        if not inbox:
            receiver.arrived.clear()
            await receiver.arrived.wait()
        for _ in range(min(len(inbox), _BATCH)):
            message = inbox.popleft()
            tally.count(message.payload, message.dup)
            receiver.ack(message)
        await asyncio.sleep(0)  # let the PUBACKs of this batch go out, as ingest's loop would
    receiver.send(codec.unsubscribe(1, SETTLE_FILTER))
    await receiver.settled
    receiver.send(codec.disconnect())
    receiver.close()
    await receiver.closed


# --- the child's entry point --------------------------------------------------------------------


async def _drain_async(args: argparse.Namespace, tally: _Tally) -> None:
    async with asyncio.timeout(args.timeout_s):
        if args.receiver in {"source", "wire"}:
            await _drain_source(args.receiver, args.host, args.port, args.client_id, tally)
        else:
            codec: _Codec = _Mqtt5Codec() if args.receiver == "mqtt5" else _PlainCodec()
            await _drain_wire(codec, args.host, args.port, args.client_id, tally)


def main(argv: list[str]) -> int:
    """Drain one session with one receiver; print its figures as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m apps.bench.receivers")
    parser.add_argument("receiver", choices=RECEIVERS)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.receiver in _PRELOAD:
        importlib.import_module(_PRELOAD[args.receiver])
    tally = _Tally(args.messages)
    cpu_before_s, wall_before_s = _cpu_s(), time.perf_counter()
    if args.receiver == "paho":
        _drain_paho(args.host, args.port, args.client_id, tally, args.timeout_s)
    else:
        asyncio.run(_drain_async(args, tally))
    figures = {
        "messages": tally.messages,
        "payload_bytes": tally.payload_bytes,
        "dup": tally.dup,
        "cpu_s": _cpu_s() - cpu_before_s,
        "seconds": time.perf_counter() - wall_before_s,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
