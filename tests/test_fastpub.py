"""The fast publisher speaks MQTT 3.1.1 to a real Mosquitto: order, payloads, flags, failures."""

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from apps.brokerconf import write_password_file
from apps.services import Mosquitto, free_port
from devices.emulator.fastpub import FastPublisher, PublishError, encode_remaining_length
from osteotel.errors import ConfigError
from osteotel.settings import MqttSettings

_WAIT_S = 60.0  # bound on waiting for deliveries; a healthy run needs a fraction of it


@dataclass(frozen=True)
class _Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class _Subscriber:
    """A paho client on its own network thread that keeps every message it is sent."""

    def __init__(self, broker: Mosquitto, topic_filter: str) -> None:
        self.messages: list[_Received] = []
        self._arrived = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.connect(broker.host, broker.port, keepalive=30)
        self._client.subscribe(topic_filter, qos=2)
        self._client.loop_start()
        if not self._subscribed.wait(_WAIT_S):
            self.close()
            raise RuntimeError("no SUBACK")

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        with self._arrived:
            self.messages.append(
                _Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain))
            )
            self._arrived.notify_all()

    def wait_for(self, count: int) -> list[_Received]:
        """The messages received, once there are `count` of them or the bound has passed."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.messages) >= count, _WAIT_S)
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def subscriber(mosquitto: Mosquitto, unique_topic_prefix: str) -> Iterator[_Subscriber]:
    """A subscriber to everything under the test's topic prefix."""
    client = _Subscriber(mosquitto, f"{unique_topic_prefix}/#")
    yield client
    client.close()


def _settings(broker: Mosquitto, **fields: object) -> MqttSettings:
    return MqttSettings.model_validate({"host": broker.host, "port": broker.port, **fields})


def _payload(index: int) -> bytes:
    # Sizes cross the one-, two- and three-byte remaining-length boundaries (127, 16,383).
    size = (0, 1, 100, 126, 127, 128, 1_400, 16_380, 16_383, 20_000)[index % 10]
    return (f"{index:08d}".encode() * (size // 8 + 1))[:size]


# --- remaining length --------------------------------------------------------------------------


def _reference_remaining_length(value: int) -> bytes:
    """Section 2.2.3 of MQTT 3.1.1, step by step: 7 bits a byte, continuation bit on top."""
    out = []
    while True:
        digit = value % 128
        value //= 128
        if value > 0:
            digit += 128
        out.append(digit)
        if value == 0:
            return bytes(out)


@given(st.integers(min_value=0, max_value=268_435_455))
def test_remaining_length_matches_the_spec_algorithm(value: int) -> None:
    """Every remaining length encodes as the specification's own algorithm encodes it."""
    assert encode_remaining_length(value) == _reference_remaining_length(value)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
     (16_384, b"\x80\x80\x01"), (2_097_151, b"\xff\xff\x7f"), (2_097_152, b"\x80\x80\x80\x01"),
     (268_435_455, b"\xff\xff\xff\x7f")],
    ids=["0", "127", "128", "16383", "16384", "2097151", "2097152", "max"],
)  # fmt: skip
def test_remaining_length_boundaries_match_the_spec_table(value: int, encoded: bytes) -> None:
    """The boundary values of the specification's table encode to its bytes."""
    assert encode_remaining_length(value) == encoded


@pytest.mark.parametrize("value", [-1, 268_435_456], ids=["negative", "above-max"])
def test_remaining_length_out_of_range_is_refused(value: int) -> None:
    """A remaining length outside 0..268,435,455 is a ValueError."""
    with pytest.raises(ValueError, match="remaining length"):
        encode_remaining_length(value)


# --- delivery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2], ids=["qos0", "qos1", "qos2"])
def test_messages_arrive_in_order_with_exact_payloads(
    mosquitto: Mosquitto, subscriber: _Subscriber, unique_topic_prefix: str, qos: int
) -> None:
    """Every message reaches a subscriber once, in publish order, with its payload byte for byte."""
    count = 1_000
    topics = [f"{unique_topic_prefix}/HUB-1/DX-{n}/telemetry" for n in range(3)]
    sent = [(topics[index % 3], _payload(index)) for index in range(count)]

    async def publish() -> int:
        async with FastPublisher(_settings(mosquitto), client_id="fastpub-order") as publisher:
            for topic, payload in sent:
                await publisher.publish(topic, payload, qos=qos)
            return publisher.published

    assert asyncio.run(publish()) == count
    received = subscriber.wait_for(count)
    assert [(m.topic, m.payload) for m in received] == sent
    assert {m.qos for m in received} == {qos}
    assert not any(m.retain for m in received)


def test_retained_message_reaches_a_later_subscriber(
    mosquitto: Mosquitto, unique_topic_prefix: str
) -> None:
    """A retained publish is kept by the broker and a non-retained one is not."""
    kept, passing = f"{unique_topic_prefix}/HUB-1/status", f"{unique_topic_prefix}/HUB-1/other"

    async def publish() -> None:
        async with FastPublisher(_settings(mosquitto), client_id="fastpub-retain") as publisher:
            await publisher.publish(kept, b'{"online":true}', qos=1, retain=True)
            await publisher.publish(passing, b"gone", qos=1, retain=False)

    asyncio.run(publish())
    later = _Subscriber(mosquitto, f"{unique_topic_prefix}/#")
    try:
        received = later.wait_for(1)
    finally:
        later.close()
    assert received == [_Received(kept, b'{"online":true}', 1, True)]


def test_a_small_window_holds_back_and_still_delivers_everything(
    mosquitto: Mosquitto, subscriber: _Subscriber, unique_topic_prefix: str
) -> None:
    """With a window of 4, at most 4 publishes await a PUBACK and all 2,000 arrive in order."""
    topic = f"{unique_topic_prefix}/HUB-1/DX-1/telemetry"
    largest = 0

    async def publish() -> None:
        nonlocal largest
        settings = _settings(mosquitto)
        async with FastPublisher(settings, client_id="fastpub-window", window=4) as publisher:
            for index in range(2_000):
                await publisher.publish(topic, b"%d" % index, qos=1)
                largest = max(largest, publisher.in_flight)

    asyncio.run(publish())
    received = subscriber.wait_for(2_000)
    assert [m.payload for m in received] == [b"%d" % index for index in range(2_000)]
    assert largest == 4


def test_packet_ids_wrap_after_65535_without_loss(
    mosquitto: Mosquitto, subscriber: _Subscriber, unique_topic_prefix: str
) -> None:
    """70,000 QoS 1 publishes reuse packet ids past 65,535 and every one arrives, in order."""
    count = 70_000
    topic = f"{unique_topic_prefix}/HUB-1/DX-1/telemetry"

    async def publish() -> int:
        async with FastPublisher(_settings(mosquitto), client_id="fastpub-wrap") as publisher:
            for index in range(count):
                await publisher.publish(topic, index.to_bytes(4, "big"), qos=1)
            await publisher.flush()
            return publisher.in_flight

    assert asyncio.run(publish()) == 0
    received = subscriber.wait_for(count)
    assert [int.from_bytes(m.payload, "big") for m in received] == list(range(count))


def test_an_idle_session_is_kept_alive_with_pings(
    mosquitto: Mosquitto, subscriber: _Subscriber, unique_topic_prefix: str
) -> None:
    """Idle for three keep-alive periods, the publisher pings and its session survives."""
    topic = f"{unique_topic_prefix}/HUB-1/DX-1/telemetry"

    async def publish() -> int:
        settings = _settings(mosquitto)
        async with FastPublisher(settings, client_id="fastpub-ping", keepalive_s=1) as publisher:
            await publisher.publish(topic, b"before", qos=1)
            # Mosquitto drops a client silent for 1.5 keep-alive periods.
            await asyncio.sleep(3.0)
            await publisher.publish(topic, b"after", qos=1)
            return publisher.pings

    assert asyncio.run(publish()) >= 1
    assert [m.payload for m in subscriber.wait_for(2)] == [b"before", b"after"]


# --- failures ----------------------------------------------------------------------------------


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto that takes only the account `HUB-001` with password `p` * 20."""
    passwd = write_password_file(tmp_path / "passwd", {"HUB-001": SecretStr("p" * 20)})
    with Mosquitto(
        tmp_path / "broker", allow_anonymous=False, extra_config=f"password_file {passwd}\n"
    ) as broker:
        yield broker


@pytest.mark.parametrize(
    ("username", "password"),
    [("HUB-001", "q" * 20), ("HUB-999", "p" * 20), (None, None)],
    ids=["wrong-password", "unknown-user", "anonymous"],
)
def test_refused_credentials_raise_publish_error(
    secured_broker: Mosquitto, username: str | None, password: str | None
) -> None:
    """A broker refusing the credentials gives PublishError carrying the CONNACK return code."""
    settings = _settings(secured_broker, username=username, password=password)

    async def connect() -> None:
        async with FastPublisher(settings, client_id="fastpub-refused"):
            pass

    with pytest.raises(PublishError, match="refused the connection") as caught:
        asyncio.run(connect())
    assert caught.value.return_code in (4, 5)


def test_valid_credentials_are_accepted(secured_broker: Mosquitto) -> None:
    """The account's own password opens a session and a QoS 1 publish is acknowledged."""
    settings = _settings(secured_broker, username="HUB-001", password="p" * 20)

    async def publish() -> int:
        async with FastPublisher(settings, client_id="fastpub-valid") as publisher:
            await publisher.publish("osteotel/v1/HUB-001/status", b"{}", qos=1)
            await publisher.flush()
            return publisher.published

    assert asyncio.run(publish()) == 1


@pytest.mark.parametrize("how", ["stop", "kill"], ids=["sigterm", "sigkill"])
def test_a_broker_gone_mid_stream_raises_publish_error(tmp_path: Path, how: str) -> None:
    """A broker stopped or killed while messages flow ends the stream with PublishError."""
    broker = Mosquitto(tmp_path / "broker", persistence=False)
    broker.start()
    try:

        async def publish() -> None:
            settings = _settings(broker)
            async with FastPublisher(settings, client_id="fastpub-gone", window=50) as publisher:
                for index in range(2_000_000):  # a bound, should the failure never be noticed
                    await publisher.publish("gone/DX-1", b"x" * 200, qos=index % 2)
                    if index == 1_000:
                        await asyncio.to_thread(getattr(broker, how))

        with pytest.raises(PublishError, match=r"closed the connection|connection to .* lost"):
            asyncio.run(publish())
    finally:
        broker.stop()


def test_no_broker_raises_publish_error() -> None:
    """Connecting to a port where nothing listens raises PublishError, not OSError."""
    settings = MqttSettings(host="127.0.0.1", port=free_port())

    async def connect() -> None:
        async with FastPublisher(settings, client_id="fastpub-none"):
            pass

    with pytest.raises(PublishError, match="cannot reach"):
        asyncio.run(connect())


def test_publishing_outside_the_session_raises_publish_error() -> None:
    """A publish before `async with` raises PublishError instead of buffering silently."""
    publisher = FastPublisher(MqttSettings(), client_id="fastpub-early")
    with pytest.raises(PublishError, match="not connected"):
        asyncio.run(publisher.publish("a/b", b"x"))


@pytest.mark.parametrize(
    ("fields", "window", "error"),
    [({}, 0, ValueError), ({}, 65_536, ValueError), ({"password": "p" * 20}, 1, ConfigError)],
    ids=["window-0", "window-65536", "password-without-user"],
)
def test_bad_settings_are_refused_before_connecting(
    fields: dict[str, object], window: int, error: type[Exception]
) -> None:
    """A window outside 1..65535 or a password with no user name is refused at construction."""
    with pytest.raises(error):
        FastPublisher(MqttSettings.model_validate(fields), client_id="fastpub-bad", window=window)


@pytest.mark.parametrize(
    ("topic", "qos"),
    [("a/+/b", 1), ("a/#", 0), ("", 1), ("a/b", 3)],
    ids=["plus", "hash", "empty", "qos3"],
)
def test_bad_publish_arguments_are_value_errors(mosquitto: Mosquitto, topic: str, qos: int) -> None:
    """A wildcard or empty topic, or a QoS other than 0..2, is a ValueError and sends nothing."""

    async def publish() -> int:
        async with FastPublisher(_settings(mosquitto), client_id="fastpub-args") as publisher:
            with pytest.raises(ValueError, match=r"topic|qos"):
                await publisher.publish(topic, b"x", qos=qos)
            return publisher.published + publisher.in_flight

    assert asyncio.run(publish()) == 0


# --- TLS ---------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, int, Path]]:
    """A Mosquitto with a TLS listener whose certificate a fresh test CA signed for 127.0.0.1."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=fastpub test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign", cwd=tmp_path,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=tmp_path,
    )  # fmt: skip
    (tmp_path / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "server.ext",
        cwd=tmp_path,
    )  # fmt: skip
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncertfile {tmp_path / 'server.crt'}\n"
        f"keyfile {tmp_path / 'server.key'}\n"
    )
    with Mosquitto(tmp_path / "broker", extra_config=extra) as broker:
        yield broker, tls_port, tmp_path / "ca.crt"


def test_a_tls_session_delivers_when_the_ca_is_trusted(
    tls_broker: tuple[Mosquitto, int, Path], unique_topic_prefix: str
) -> None:
    """With `tls_ca_file` set the publisher talks TLS and its message reaches a subscriber."""
    broker, tls_port, ca_file = tls_broker
    subscriber = _Subscriber(broker, f"{unique_topic_prefix}/#")
    settings = MqttSettings(host="127.0.0.1", port=tls_port, tls_ca_file=ca_file)

    async def publish() -> None:
        async with FastPublisher(settings, client_id="fastpub-tls") as publisher:
            await publisher.publish(f"{unique_topic_prefix}/x", b"sealed", qos=1)

    try:
        asyncio.run(publish())
        received = subscriber.wait_for(1)
    finally:
        subscriber.close()
    assert [m.payload for m in received] == [b"sealed"]


def test_a_tls_broker_with_an_unknown_ca_is_refused(
    tls_broker: tuple[Mosquitto, int, Path], tmp_path: Path
) -> None:
    """Trusting another CA, the publisher fails the handshake with PublishError."""
    broker, tls_port, _ = tls_broker
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "other.key", "-out", "other.crt", "-days", "1", "-subj", "/CN=other CA",
        cwd=tmp_path,
    )  # fmt: skip
    settings = MqttSettings(host=broker.host, port=tls_port, tls_ca_file=tmp_path / "other.crt")

    async def connect() -> None:
        async with FastPublisher(settings, client_id="fastpub-untrusted"):
            pass

    with pytest.raises(PublishError, match="cannot reach") as caught:
        asyncio.run(connect())
    assert isinstance(caught.value.__cause__, ssl.SSLError)
