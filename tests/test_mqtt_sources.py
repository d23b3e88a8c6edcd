"""Both receive paths (paho's thread, `PahoSource`; asyncio, `WireSource`) on a real Mosquitto:
the guarantees ingest and the alert service rely on, one test each."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from apps.services import Mosquitto
from osteotel.mqtt import MqttSource, PahoSource, Received
from osteotel.mqttwire import WireSource, open_source
from osteotel.settings import MqttSettings

PATHS = ("paho", "asyncio")
_WAIT_S = 30.0
_ROOT = Path(__file__).resolve().parent.parent


def _settings(broker: Mosquitto, client_id: str, path: str) -> MqttSettings:
    return MqttSettings(
        host=broker.host, port=broker.port, client_id=client_id, receive_path=path, keepalive_s=5
    )


class _Publisher:
    """A paho client (not our codec) publishing QoS 1 and waiting for each PUBACK."""

    def __init__(self, broker: Mosquitto) -> None:
        self.paho = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self.paho.connect(broker.host, broker.port)
        self.paho.loop_start()

    def publish(self, topic: str, payloads: list[bytes]) -> None:
        infos = [self.paho.publish(topic, payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(timeout=_WAIT_S)
            assert info.is_published()

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[_Publisher]:
    """A QoS 1 publisher on the shared broker."""
    client = _Publisher(mosquitto)
    yield client
    client.close()


def _payloads(count: int, tag: str = "m") -> list[bytes]:
    return [f"{tag}-{k:05d}".encode() for k in range(count)]


async def _take(source: MqttSource, count: int, *, ack: bool = True) -> list[Received]:
    """Receive exactly `count` messages (acknowledging each unless told not to)."""
    taken: list[Received] = []
    async with asyncio.timeout(_WAIT_S):
        while len(taken) < count:
            # A batch of at most what is still wanted: the rest stays in the source.
            batch = await anext(source.batches(max_messages=min(200, count - len(taken))))
            for message in batch:
                taken.append(message)
                if ack:
                    source.ack(message)
    return taken


async def _acks_read(source: MqttSource, topic: str) -> None:
    """Return once the broker has read every acknowledgement sent so far: it answers packets
    of one connection in order, so the PUBACK of a publish made after them says so."""
    source.publish(f"{topic}-sync", b"sync")
    assert await source.confirmed(timeout_s=_WAIT_S)


async def _only_marker(source: MqttSource, topic: str) -> None:
    """The next message the source gets is the one it publishes now: nothing else was left."""
    source.publish(topic, b"marker")
    (message,) = await _take(source, 1)
    assert (message.topic, message.payload, message.dup) == (topic, b"marker", False)


def test_the_factory_picks_the_path_the_settings_name() -> None:
    """`receive_path` picks the class; asyncio (WireSource) is the default."""
    assert MqttSettings().receive_path == "asyncio"
    made = {
        path: type(open_source(settings=MqttSettings(receive_path=path), subscriptions=["a/b"]))
        for path in PATHS
    }
    expected: dict[str, type[MqttSource]] = {"paho": PahoSource, "asyncio": WireSource}
    assert made == expected


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_every_message_arrives_once_in_order_and_its_ack_reaches_the_broker(
    mosquitto: Mosquitto, publisher: _Publisher, unique_topic_prefix: str, unique_id: str, path: str
) -> None:
    """2,500 QoS 1 messages (more than the broker's in-flight window of 1,000) arrive in order,
    each once, none DUP; acknowledged, none comes back to the next connection."""
    topic = f"{unique_topic_prefix}/a"
    payloads = _payloads(2500)

    async def scenario() -> None:
        settings = _settings(mosquitto, unique_id, path)
        async with open_source(settings=settings, subscriptions=[topic]) as source:
            await source.wait_connected(_WAIT_S)
            sending = asyncio.create_task(asyncio.to_thread(publisher.publish, topic, payloads))
            taken = await _take(source, len(payloads))
            await sending
        assert [m.payload for m in taken] == payloads
        assert [m.dup for m in taken] == [False] * len(payloads)
        assert {m.qos for m in taken} == {1}
        async with open_source(settings=settings, subscriptions=[topic]) as source:
            await source.wait_connected(_WAIT_S)
            await _only_marker(source, topic)

    asyncio.run(scenario())


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_messages_published_while_away_are_delivered_on_return(
    mosquitto: Mosquitto, publisher: _Publisher, unique_topic_prefix: str, unique_id: str, path: str
) -> None:
    """The persistent session queues what is published while the source is away: all 300
    arrive on its return, in order, not DUP (never sent before)."""
    topic = f"{unique_topic_prefix}/a"
    payloads = _payloads(300)

    async def scenario() -> None:
        settings = _settings(mosquitto, unique_id, path)
        async with open_source(settings=settings, subscriptions=[topic]) as source:
            await source.wait_connected(_WAIT_S)
        await asyncio.to_thread(publisher.publish, topic, payloads)
        async with open_source(settings=settings, subscriptions=[topic]) as source:
            taken = await _take(source, len(payloads))
            assert [(m.payload, m.dup) for m in taken] == [(p, False) for p in payloads]
            await _only_marker(source, topic)

    asyncio.run(scenario())


_HOLDER = """
import asyncio, sys
from osteotel.mqttwire import open_source
from osteotel.settings import MqttSettings

async def hold(host, port, client_id, path, topic, count):
    settings = MqttSettings(host=host, port=int(port), client_id=client_id, receive_path=path)
    async with open_source(settings=settings, subscriptions=[topic]) as source:
        await source.wait_connected(30)
        print("subscribed", flush=True)
        held = 0
        async for batch in source.batches(max_messages=200):
            held += len(batch)  # received, never acknowledged
            if held >= int(count):
                print("held", held, flush=True)
                await asyncio.sleep(3600)

asyncio.run(hold(*sys.argv[1:]))
"""


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_messages_held_unacknowledged_by_a_killed_process_come_again_flagged_dup(
    mosquitto: Mosquitto, publisher: _Publisher, unique_topic_prefix: str, unique_id: str, path: str
) -> None:
    """A process that received 40 messages and acknowledged none is SIGKILLed: the next
    connection of its session gets exactly those 40 again, in order, each DUP-flagged."""
    topic = f"{unique_topic_prefix}/a"
    payloads = _payloads(40)
    args = [mosquitto.host, str(mosquitto.port), unique_id, path, topic, str(len(payloads))]
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, *args], cwd=_ROOT, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().split() == ["subscribed"]
            publisher.publish(topic, payloads)
            assert child.stdout.readline().split() == ["held", "40"]
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=_WAIT_S)

    async def scenario() -> None:
        settings = _settings(mosquitto, unique_id, path)
        async with open_source(settings=settings, subscriptions=[topic]) as source:
            taken = await _take(source, len(payloads))
            assert [(m.payload, m.dup) for m in taken] == [(p, True) for p in payloads]
            await _only_marker(source, topic)

    asyncio.run(scenario())


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_a_broker_restart_mid_stream_loses_nothing_and_acknowledges_nothing_twice(
    tmp_path: Path, unique_id: str, path: str
) -> None:
    """Mosquitto restarts while the source holds 300 unacknowledged messages of 1,000: the
    source reconnects by itself and gets those 300 again, DUP-flagged. Acknowledging the held
    ones then sends nothing on the new connection (it would acknowledge the copies, which
    share their packet ids, before they are stored): the copies, left unacknowledged, come a
    third time to the next connection. Then 500 more arrive, and nothing is left over."""
    topic = "osteotel-test/restart/a"
    first, second = _payloads(1000, "first"), _payloads(500, "second")
    with Mosquitto(tmp_path / "broker") as broker:

        async def publish(payloads: list[bytes]) -> None:
            sender = _Publisher(broker)
            await asyncio.to_thread(sender.publish, topic, payloads)
            sender.close()

        async def scenario() -> None:
            settings = _settings(broker, unique_id, path)
            async with open_source(settings=settings, subscriptions=[topic]) as source:
                await source.wait_connected(_WAIT_S)
                await publish(first)
                acked = await _take(source, 700)
                held = await _take(source, 300, ack=False)
                await _acks_read(source, topic)
                await asyncio.to_thread(broker.restart)
                again = await _take(source, 300, ack=False)
                for message in held:  # stored now, but their connection is gone
                    source.ack(message)
            assert [m.payload for m in acked + held] == first
            assert [(m.payload, m.dup) for m in again] == [(m.payload, True) for m in held]
            async with open_source(settings=settings, subscriptions=[topic]) as source:
                third = await _take(source, 300)
                await publish(second)
                rest = await _take(source, len(second))
                await _only_marker(source, topic)
            assert [(m.payload, m.dup) for m in third] == [(m.payload, True) for m in held]
            assert [(m.payload, m.dup) for m in rest] == [(p, False) for p in second]

        asyncio.run(scenario())


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_publishes_made_while_the_broker_is_down_are_confirmed_once_it_is_back(
    tmp_path: Path, unique_id: str, path: str
) -> None:
    """With the broker stopped, five QoS 1 publishes are not confirmed; once it is back they
    are, and a subscriber's persistent session gets all five, in order."""
    topic = "osteotel-test/confirm/a"
    payloads = _payloads(5)
    received: list[bytes] = []
    with Mosquitto(tmp_path / "broker") as broker:
        observer = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{unique_id}-observer", clean_session=False
        )
        subscribed = threading.Event()
        observer.on_subscribe = lambda *_: subscribed.set()
        observer.on_message = lambda _c, _u, message: received.append(bytes(message.payload))
        observer.connect(broker.host, broker.port)
        observer.subscribe(topic, qos=1)
        observer.loop_start()
        try:
            assert subscribed.wait(_WAIT_S)

            async def scenario() -> None:
                settings = _settings(broker, unique_id, path)
                async with open_source(settings=settings, subscriptions=[]) as source:
                    await source.wait_connected(_WAIT_S)
                    source.publish(topic, b"before")
                    assert await source.confirmed(timeout_s=_WAIT_S)
                    await asyncio.to_thread(broker.stop)
                    for payload in payloads:
                        source.publish(topic, payload)
                    assert not await source.confirmed(timeout_s=0.5)
                    await asyncio.to_thread(broker.start)
                    assert await source.confirmed(timeout_s=_WAIT_S)

            asyncio.run(scenario())
            for _ in range(int(_WAIT_S * 10)):
                if len(received) >= 1 + len(payloads):
                    break
                threading.Event().wait(0.1)
        finally:
            observer.disconnect()
            observer.loop_stop()
    # The observer's own QoS 1 delivery is at least once: across the broker's restart it can
    # get a message again whose PUBACK the broker had not stored. What the source published
    # is there once each, in order.
    assert list(dict.fromkeys(received)) == [b"before", *payloads]


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_set_subscriptions_and_stale_filters_change_what_arrives(
    mosquitto: Mosquitto, unique_topic_prefix: str, unique_id: str, path: str
) -> None:
    """`set_subscriptions` swaps filter a for b while connected (a's messages stop, b's come);
    a later session naming a as stale unsubscribes it on connect."""
    topic_a, topic_b = f"{unique_topic_prefix}/a", f"{unique_topic_prefix}/b"

    async def scenario() -> None:
        settings = _settings(mosquitto, unique_id, path)
        async with open_source(settings=settings, subscriptions=[topic_a]) as source:
            await source.wait_connected(_WAIT_S)
            # One connection: the broker handles our SUBSCRIBE before a PUBLISH sent after it.
            source.publish(topic_a, b"a1")
            source.set_subscriptions([topic_b], stale=[])
            source.publish(topic_a, b"a2")
            source.publish(topic_b, b"b1")
            taken = await _take(source, 2)
            assert [(m.topic, m.payload) for m in taken] == [(topic_a, b"a1"), (topic_b, b"b1")]
            source.set_subscriptions([topic_a, topic_b], stale=[])
            source.publish(topic_a, b"a3")
            (message,) = await _take(source, 1)
            assert (message.topic, message.payload) == (topic_a, b"a3")
        async with open_source(settings=settings, subscriptions=[topic_b], stale=[topic_a]) as s:
            await s.wait_connected(_WAIT_S)
            s.publish(topic_a, b"a4")
            s.publish(topic_b, b"b2")
            (message,) = await _take(s, 1)
            assert (message.topic, message.payload) == (topic_b, b"b2")

    asyncio.run(scenario())


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_best_effort_filters_are_qos_0_and_need_no_ack(
    mosquitto: Mosquitto, unique_topic_prefix: str, unique_id: str, path: str
) -> None:
    """A best-effort filter's messages arrive at QoS 0; the QoS 1 filter's at QoS 1."""
    reliable, best_effort = f"{unique_topic_prefix}/r", f"{unique_topic_prefix}/e"

    async def scenario() -> None:
        settings = _settings(mosquitto, unique_id, path)
        async with open_source(
            settings=settings, subscriptions=[reliable], best_effort=[best_effort]
        ) as source:
            await source.wait_connected(_WAIT_S)
            source.publish(best_effort, b"e")
            source.publish(reliable, b"r")
            taken = await _take(source, 2)
        assert [(m.topic, m.qos) for m in taken] == [(best_effort, 0), (reliable, 1)]

    asyncio.run(scenario())


def test_an_idle_asyncio_source_is_kept_alive_by_its_pings(
    mosquitto: Mosquitto, publisher: _Publisher, unique_topic_prefix: str, unique_id: str
) -> None:
    """Idle for 12 s on a 5 s keep-alive (Mosquitto drops a client silent for 7.5 s, checked
    every few seconds: without its PINGREQs WireSource is dropped within 12 s, tried), the
    source is still connected, the broker logged no timeout for it, and a message arrives.
    (PahoSource's pings are paho's own.)"""
    topic = f"{unique_topic_prefix}/a"

    async def scenario() -> None:
        settings = _settings(mosquitto, unique_id, "asyncio")
        async with open_source(settings=settings, subscriptions=[topic]) as source:
            await source.wait_connected(_WAIT_S)
            await asyncio.sleep(12.0)
            assert source.connected
            await asyncio.to_thread(publisher.publish, topic, [b"after"])
            (message,) = await _take(source, 1)
            assert (message.payload, message.dup) == (b"after", False)

    asyncio.run(scenario())
    log = mosquitto.log_path.read_text(encoding="utf-8", errors="replace")
    assert f"Client {unique_id} has exceeded timeout" not in log
    assert "New client connected from 127.0.0.1" in log  # the log is the broker's, and read


@pytest.mark.parametrize(
    ("sent", "logged"),
    [
        (b"\x30\xff\xff\xff\xff\x01", 'mqtt_malformed_packet reason="remaining length longer'),
        (b"\x32\x40\x00\x05a/b/c\x00\x01half", "mqtt_truncated_packet bytes=15"),
    ],
    ids=["bad-remaining-length", "truncated"],
)
def test_bad_input_closes_the_asyncio_connection_with_its_reason_logged(
    caplog: pytest.LogCaptureFixture, sent: bytes, logged: str
) -> None:
    """A broker (a plain TCP server here: Mosquitto sends nothing malformed) that sends a
    remaining length of five bytes, or half a PUBLISH and then closes: WireSource logs why the
    connection ended, delivers nothing of it, and connects again by itself."""
    connections: list[int] = []
    second = asyncio.Event()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        subscribe = await reader.read(1024)
        writer.write(b"\x90\x03" + subscribe[2:4] + b"\x01")  # SUBACK, QoS 1 granted
        if len(connections) == 1:
            writer.write(sent)
            if logged.startswith("mqtt_truncated"):
                return  # and the connection closes
        else:
            second.set()
        while data := await reader.read(1024):  # until the client closes
            if data[0] == 0xA2:  # the settle step's UNSUBSCRIBE: UNSUBACK
                writer.write(b"\xb0\x02" + data[2:4])

    async def scenario() -> None:
        async with (
            _scripted_broker(broker) as settings,
            WireSource(settings=settings, subscriptions=["a/b/c"]) as source,
        ):
            await asyncio.wait_for(second.wait(), _WAIT_S)  # the first connection ended
            await source.wait_connected(_WAIT_S)  # and the second one is up
            assert source._inbox == deque()

    with caplog.at_level("INFO", logger="osteotel.mqtt"):
        asyncio.run(scenario())
    assert len(connections) == 2
    assert [r.message for r in caplog.records if logged in r.message] != []


_Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _scripted_broker(script: _Script) -> AsyncIterator[MqttSettings]:
    """A TCP server on loopback running `script` for each connection, for the few things
    Mosquitto will not do; yields settings that reach it. On leaving, every connection's
    script is awaited (the source has disconnected, so each ends) and its socket closed."""
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await script(reader, writer)
        finally:
            writer.close()

    async with await asyncio.start_server(handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield MqttSettings(host="127.0.0.1", port=port, client_id=f"scripted-{port}")
        await asyncio.wait_for(asyncio.gather(*handlers), _WAIT_S)


async def _read_client_packet(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """One packet a client sent: (first byte, body); None once the client has closed."""
    try:
        first = (await reader.readexactly(1))[0]
        length = shift = 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_a_refused_subscription_is_logged_with_its_filter(
    caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """A broker (a scripted TCP server: Mosquitto 2.0 grants what its ACL then withholds) that
    refuses the second of two filters (SUBACK 0x80): the refusal is logged naming that filter,
    and the source is connected."""
    refused = "osteotel/v1/HUB-Z/#"

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while packet := await _read_client_packet(reader):
            first, body = packet
            if first >> 4 == 1:  # CONNECT
                writer.write(b"\x20\x02\x00\x00")
            elif first >> 4 == 8:  # SUBSCRIBE: the first filter granted QoS 1, the second refused
                writer.write(b"\x90\x04" + body[:2] + b"\x01\x80")
            elif first >> 4 == 10:  # UNSUBSCRIBE (the settle step)
                writer.write(b"\xb0\x02" + body[:2])

    async def scenario() -> None:
        async with _scripted_broker(broker) as scripted:
            settings = scripted.model_copy(update={"receive_path": path})
            filters = ["osteotel/v1/HUB-A/#", refused]
            async with open_source(settings=settings, subscriptions=filters) as source:
                await source.wait_connected(_WAIT_S)

    with caplog.at_level("INFO", logger="osteotel.mqtt"):
        asyncio.run(scenario())
    logged = [r.message for r in caplog.records if "mqtt_subscription_refused" in r.message]
    assert len(logged) == 1
    assert f"topic={refused}" in logged[0]


@pytest.mark.parametrize("path", PATHS, ids=PATHS)
def test_a_publish_unacknowledged_when_the_connection_ends_is_sent_again_flagged_dup(
    path: str,
) -> None:
    """A broker (a scripted TCP server, to see the client's bytes) that reads a QoS 1 PUBLISH
    and closes without a PUBACK: on the next connection the source sends it again, same packet
    id and payload, DUP set; acknowledged then, it is confirmed."""
    publishes: list[tuple[bool, bytes]] = []  # (DUP, packet id + payload after the topic)
    connections: list[int] = []

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while packet := await _read_client_packet(reader):
            first, body = packet
            if first >> 4 == 1:  # CONNECT
                writer.write(b"\x20\x02\x00\x00")
            elif first >> 4 == 3:  # PUBLISH, QoS 1
                topic_end = 2 + int.from_bytes(body[:2])
                publishes.append((bool(first & 0x08), body[topic_end:]))
                if len(connections) == 1:
                    break  # gone before acknowledging
                writer.write(b"\x40\x02" + body[topic_end : topic_end + 2])
            elif first >> 4 == 10:  # UNSUBSCRIBE (the settle step)
                writer.write(b"\xb0\x02" + body[:2])

    async def scenario() -> None:
        async with _scripted_broker(broker) as scripted:
            settings = scripted.model_copy(update={"receive_path": path})
            async with open_source(settings=settings, subscriptions=[]) as source:
                await source.wait_connected(_WAIT_S)
                source.publish("osteotel/v1/derived/DX-0001/estimates", b"estimate")
                assert await source.confirmed(timeout_s=_WAIT_S)

    asyncio.run(scenario())
    assert len(connections) == 2
    assert len(publishes) == 2
    assert publishes[0][0] is False
    assert publishes[1] == (True, publishes[0][1])
    assert publishes[0][1].endswith(b"estimate")


def test_a_broker_that_stops_answering_pings_is_left_and_connected_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker (scripted) that accepts the session but never answers a PINGREQ: WireSource,
    on a 5 s keep-alive, closes the connection with `mqtt_ping_unanswered` logged and connects
    again by itself (a half-open connection is not kept forever)."""
    pings: list[int] = []
    second = asyncio.Event()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = len(pings)
        pings.append(0)
        if connection == 1:
            second.set()
        while packet := await _read_client_packet(reader):
            first, body = packet
            if first >> 4 == 1:  # CONNECT
                writer.write(b"\x20\x02\x00\x00")
            elif first >> 4 == 8:  # SUBSCRIBE
                writer.write(b"\x90\x03" + body[:2] + b"\x01")
            elif first >> 4 == 10:  # UNSUBSCRIBE (the settle step)
                writer.write(b"\xb0\x02" + body[:2])
            elif first >> 4 == 12:  # PINGREQ: counted, never answered
                pings[connection] += 1

    async def scenario() -> None:
        async with _scripted_broker(broker) as scripted:
            settings = scripted.model_copy(update={"keepalive_s": 5})
            async with WireSource(settings=settings, subscriptions=["a/b/c"]) as source:
                await asyncio.wait_for(second.wait(), _WAIT_S)
                await source.wait_connected(_WAIT_S)

    with caplog.at_level("INFO", logger="osteotel.mqtt"):
        asyncio.run(scenario())
    assert pings[0] == 1  # one PINGREQ, unanswered, then the connection was left
    assert len(pings) == 2
    assert [r for r in caplog.records if r.message.startswith("mqtt_ping_unanswered")] != []
