"""A broker configured by apps.brokerconf refuses strangers and confines each hub.

Every broker test starts its own Mosquitto in `tmp_path` with the generated password file,
ACL and TLS listener, and uses the example registry (HUB-A serves DX-0001 and DX-0002, HUB-B
serves DX-0003). A denied publish is silently dropped by the broker, so "not delivered" is
shown by an observer with full read rights that does receive a later allowed message from
the same client: the broker forwards one client's messages in order, so nothing sent before
it can still be on the way.
"""

import asyncio
import json
import queue
import socket
import ssl
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from alerts.inputs import estimates_topic
from alerts.notify import MqttNotifier, NotifyError, alert_topic
from alerts.service import AlertService
from alerts.settings import AlertSettings
from alerts.store import AlertStore
from apps.brokerconf import (
    ALERTS_USER,
    EMULATOR_USER,
    INGEST_USER,
    broker_accounts,
    generate_password,
    main,
    production_config,
    read_secret_file,
    render_acl,
    security_config,
    tls_listener_config,
    write_acl_file,
    write_password_file,
    write_secret_file,
)
from apps.services import Mosquitto, free_port
from devices.registry import Registry
from osteotel.errors import ConfigError, MissingBinaryError
from osteotel.mqttwire import open_source
from osteotel.settings import InfluxSettings, MqttSettings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_REGISTRY = REPO / "deploy" / "registry.example.toml"
# An upper bound on every wait; a passing test only waits for events that do happen.
_WAIT_S = 10.0


# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
        "-subj", f"/CN=osteotel test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt", directory / f"{name}.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> _Certs:
    """A test CA, a server certificate it signs for IP 127.0.0.1, and an unrelated CA."""
    directory = tmp_path_factory.mktemp("certs")
    ca_cert, _ = _make_ca(directory, "ca")
    other_ca, _ = _make_ca(directory, "other-ca")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n",
        encoding="utf-8",
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.key").chmod(0o600)
    return _Certs(ca_cert, directory / "server.crt", directory / "server.key", other_ca)


# --- a secured broker --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Secured:
    broker: Mosquitto
    passwords: dict[str, SecretStr]
    tls_port: int
    password_file: Path


@pytest.fixture
def secured(tmp_path: Path, certs: _Certs) -> Iterator[_Secured]:
    """A Mosquitto with no anonymous access, a password per account, the ACL and TLS."""
    registry = Registry.load(EXAMPLE_REGISTRY)
    accounts = broker_accounts(registry, include_emulator=True)
    passwords = {account.username: generate_password() for account in accounts}
    password_file = write_password_file(tmp_path / "passwd", passwords)
    acl_file = write_acl_file(tmp_path / "acl", accounts)
    tls_port = free_port()
    extra = security_config(password_file=password_file, acl_file=acl_file)
    extra += tls_listener_config(
        port=tls_port,
        host="127.0.0.1",
        cafile=certs.ca,
        certfile=certs.server_cert,
        keyfile=certs.server_key,
    )
    with Mosquitto(tmp_path / "broker", allow_anonymous=False, extra_config=extra) as broker:
        yield _Secured(broker, passwords, tls_port, password_file)


class _Client:
    """A paho client on its own network thread that records what it is sent."""

    def __init__(self, name: str) -> None:
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{name}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self.connacks: queue.Queue[ReasonCode] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.paho.on_connect = lambda _c, _u, _f, code, _p: self.connacks.put(code)
        self.paho.on_subscribe = lambda _c, _u, _m, codes, _p: self.subacks.put(codes)
        self.paho.on_message = lambda _c, _u, message: self.messages.put(message)

    def connect(self, host: str, port: int) -> ReasonCode:
        self.paho.connect(host, port, keepalive=30)
        self.paho.loop_start()
        return self.connacks.get(timeout=_WAIT_S)

    def subscribe(self, topic_filter: str) -> ReasonCode:
        self.paho.subscribe(topic_filter, qos=1)
        (code,) = self.subacks.get(timeout=_WAIT_S)
        return code

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and return once the broker acknowledged it (allowed or not)."""
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=_WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def wait_for(self, topic: str) -> list[str]:
        """Return the topics received up to and including the first message on `topic`."""
        seen: list[str] = []
        while not seen or seen[-1] != topic:
            seen.append(self.messages.get(timeout=_WAIT_S).topic)
        return seen

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


_Connect = Callable[[str], _Client]


@pytest.fixture
def connect(secured: _Secured) -> Iterator[_Connect]:
    """Open an authenticated client on the plain listener; all are closed after the test."""
    clients: list[_Client] = []

    def open_client(username: str) -> _Client:
        client = _Client(username)
        clients.append(client)
        client.paho.username_pw_set(username, secured.passwords[username].get_secret_value())
        code = client.connect(secured.broker.host, secured.broker.port)
        assert not code.is_failure, f"{username} was refused: {code}"
        return client

    yield open_client
    for client in clients:
        client.close()


# --- authentication ----------------------------------------------------------------------------

_WRONG = SecretStr("not-the-password-0123456789")


@pytest.mark.parametrize(
    ("username", "given_by", "listener"),
    [
        (None, None, "plain"),
        (None, None, "tls"),
        ("HUB-A", "wrong", "plain"),
        ("HUB-A", "wrong", "tls"),
        ("HUB-A", "HUB-B", "plain"),
        ("HUB-C", "wrong", "plain"),
        (INGEST_USER, "wrong", "plain"),
    ],
    ids=[
        "anonymous",
        "anonymous-over-tls",
        "wrong-password",
        "wrong-password-over-tls",
        "another-hubs-password",
        "unknown-user",
        "service-wrong-password",
    ],
)
def test_a_client_without_valid_credentials_is_refused(
    secured: _Secured,
    certs: _Certs,
    username: str | None,
    given_by: str | None,
    listener: str,
) -> None:
    """A connection without a username or with a wrong password gets CONNACK not-authorized."""
    client = _Client("stranger")
    if username is not None:
        password = _WRONG if given_by == "wrong" else secured.passwords[str(given_by)]
        client.paho.username_pw_set(username, password.get_secret_value())
    port = secured.broker.port
    if listener == "tls":
        client.paho.tls_set_context(ssl.create_default_context(cafile=certs.ca))
        port = secured.tls_port
    try:
        code = client.connect("127.0.0.1", port)
    finally:
        client.close()
    assert code.is_failure
    assert str(code) == "Not authorized"


@pytest.mark.parametrize(
    "username",
    ["HUB-A", "HUB-B", INGEST_USER, ALERTS_USER, EMULATOR_USER],
    ids=["hub-a", "hub-b", "ingest", "alerts", "emulator"],
)
def test_every_account_connects_with_its_own_password(
    secured: _Secured, connect: _Connect, username: str
) -> None:
    """Each generated account is accepted with its own password."""
    client = connect(username)
    assert client.paho.is_connected()


def test_no_password_reaches_the_broker_log_or_the_password_file(secured: _Secured) -> None:
    """The broker's log and the password file hold no plaintext password, good or wrong."""
    for password in (secured.passwords["HUB-A"], _WRONG):
        client = _Client("log-probe")
        client.paho.username_pw_set("HUB-A", password.get_secret_value())
        try:
            client.connect("127.0.0.1", secured.broker.port)
        finally:
            client.close()
    log = secured.broker.log_path.read_text(encoding="utf-8")
    stored = secured.password_file.read_text(encoding="utf-8")
    assert "HUB-A" in log  # the log does record who connected
    for password in [*secured.passwords.values(), _WRONG]:
        assert password.get_secret_value() not in log
        assert password.get_secret_value() not in stored
    assert stat.S_IMODE(secured.password_file.stat().st_mode) == 0o600
    assert all(line.split(":", 1)[1].startswith("$7$") for line in stored.splitlines())


# --- authorisation -----------------------------------------------------------------------------

_ALLOWED = "osteotel/v1/HUB-A/DX-0001/telemetry"


@pytest.mark.parametrize(
    "denied_topic",
    [
        "osteotel/v1/HUB-B/DX-0003/telemetry",
        "osteotel/v1/HUB-B/DX-0003/events",
        "osteotel/v1/HUB-B/status",
        "osteotel/v1/derived/DX-0001/stiffness",
        "osteotel/v1/alerts/DX-0001",
    ],
    ids=["other-hub-telemetry", "other-hub-events", "other-hub-status", "derived", "alerts"],
)
def test_a_hub_cannot_publish_outside_its_own_subtree(connect: _Connect, denied_topic: str) -> None:
    """A hub's publish on another hub's or a service's topic never reaches a subscriber."""
    observer = connect(INGEST_USER)
    assert not observer.subscribe("osteotel/v1/#").is_failure
    hub = connect("HUB-A")
    hub.publish(denied_topic, b"denied")
    hub.publish(_ALLOWED, b"allowed")
    assert observer.wait_for(_ALLOWED) == [_ALLOWED]


@pytest.mark.parametrize(
    ("topic_filter", "publisher", "topic"),
    [
        ("osteotel/v1/#", EMULATOR_USER, "osteotel/v1/HUB-B/DX-0003/telemetry"),
        ("osteotel/v1/HUB-B/#", EMULATOR_USER, "osteotel/v1/HUB-B/status"),
        ("osteotel/v1/HUB-A/#", EMULATOR_USER, "osteotel/v1/HUB-A/DX-0001/events"),
        ("osteotel/v1/derived/#", INGEST_USER, "osteotel/v1/derived/DX-0001/stiffness"),
        ("#", ALERTS_USER, "osteotel/v1/alerts/DX-0001"),
    ],
    ids=["all-v1", "other-hub", "own-subtree", "derived", "everything"],
)
def test_a_hub_reads_nothing(
    connect: _Connect, topic_filter: str, publisher: str, topic: str
) -> None:
    """A hub's subscription is refused and delivers nothing, while the ingest receives it."""
    observer = connect(INGEST_USER)
    assert not observer.subscribe("osteotel/v1/#").is_failure
    hub = connect("HUB-A")
    # Mosquitto 2.0.11 grants the subscription and filters at delivery, so only delivery
    # is checked; a refusing SUBACK from a later version would pass as well.
    hub.subscribe(topic_filter)
    connect(publisher).publish(topic, b"not for hubs")
    assert observer.wait_for(topic) == [topic]
    # A QoS 1 round trip after the observer got it: anything the broker had sent the hub
    # would have arrived before this acknowledgement on the same connection.
    hub.publish(_ALLOWED, b"barrier")
    assert hub.messages.empty()


@pytest.mark.parametrize(
    ("username", "topic_filter", "topic", "publisher"),
    [
        (ALERTS_USER, "osteotel/v1/+/status", "osteotel/v1/HUB-B/status", "HUB-B"),
        (ALERTS_USER, "osteotel/v1/derived/#", "osteotel/v1/derived/DX-0002/x", INGEST_USER),
        (INGEST_USER, "osteotel/v1/#", "osteotel/v1/alerts/DX-0002", ALERTS_USER),
    ],
    ids=["alerts-reads-status", "alerts-reads-derived", "ingest-reads-alerts"],
)
def test_services_receive_what_their_flows_need(
    connect: _Connect, username: str, topic_filter: str, topic: str, publisher: str
) -> None:
    """The services read and write the topics their flows use."""
    reader = connect(username)
    assert not reader.subscribe(topic_filter).is_failure
    connect(publisher).publish(topic, b"flow")
    assert reader.wait_for(topic) == [topic]


def test_the_alerts_service_reads_the_device_topics_its_rules_need(connect: _Connect) -> None:
    """Events (faults, battery, steps) and telemetry (overload, gaps, silence) reach the alerts
    account; before, the broker accepted its subscriptions and delivered nothing, so those
    rules could never fire in a secured deployment. Another account's alerts topic does not."""
    alerts = connect(ALERTS_USER)
    for topic_filter in ("osteotel/v1/+/+/telemetry", "osteotel/v1/+/+/events"):
        assert not alerts.subscribe(topic_filter).is_failure
    hub = connect("HUB-A")
    hub.publish(_ALLOWED, b"raw")
    hub.publish("osteotel/v1/HUB-A/DX-0001/events", b"event")
    assert alerts.wait_for(_ALLOWED) == [_ALLOWED]
    assert alerts.wait_for("osteotel/v1/HUB-A/DX-0001/events") == [
        "osteotel/v1/HUB-A/DX-0001/events"
    ]


def test_an_account_that_cannot_read_its_alert_topics_publishes_no_alert(
    secured: _Secured, connect: _Connect, tmp_path: Path
) -> None:
    """The MQTT notifier under an account that may not read back the alert topics (here a
    hub's) fails with a NotifyError naming the read-back, and publishes no alert: without
    the read-back it could not publish exactly once."""
    observer = connect(INGEST_USER)
    assert not observer.subscribe("osteotel/v1/#").is_failure
    settings = MqttSettings(
        host=secured.broker.host, port=secured.broker.port, username="HUB-A",
        password=secured.passwords["HUB-A"],
    )  # fmt: skip
    alert = {"device": "DX-0001", "key": "1:firing:1", "rule": "distraction_force"}
    with AlertStore(tmp_path / "alerts.db") as store:
        notifier = MqttNotifier(settings, client_id="hub-as-notifier", published=store, timeout_s=2)
        with pytest.raises(NotifyError, match="timed out waiting for the marker"):
            asyncio.run(notifier.send({"event": "firing", "alerts": [alert]}))
    # A QoS 1 round trip after the failure: an alert the broker had taken would be here first.
    connect(INGEST_USER).publish("osteotel/v1/derived/DX-0001/x", b"barrier")
    assert observer.wait_for("osteotel/v1/derived/DX-0001/x") == ["osteotel/v1/derived/DX-0001/x"]


# --- TLS ---------------------------------------------------------------------------------------


def test_a_client_trusting_the_ca_connects_over_tls(secured: _Secured, certs: _Certs) -> None:
    """A hub that trusts the test CA completes the handshake and is accepted."""
    client = _Client("tls-hub")
    client.paho.username_pw_set("HUB-A", secured.passwords["HUB-A"].get_secret_value())
    client.paho.tls_set_context(ssl.create_default_context(cafile=certs.ca))
    try:
        code = client.connect("127.0.0.1", secured.tls_port)
        cipher = client.paho.socket().cipher()  # type: ignore[union-attr]
    finally:
        client.close()
    assert not code.is_failure
    assert cipher is not None


def test_a_client_not_trusting_the_ca_fails_the_handshake(secured: _Secured, certs: _Certs) -> None:
    """A client that trusts another CA refuses the broker's certificate."""
    # A bare TLS handshake: paho leaves its socket open when the handshake fails.
    context = ssl.create_default_context(cafile=certs.other_ca)
    with (
        socket.create_connection(("127.0.0.1", secured.tls_port), timeout=_WAIT_S) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_the_alert_service_receives_over_tls_with_its_password(
    secured: _Secured, certs: _Certs, connect: _Connect, tmp_path: Path
) -> None:
    """The alert service, as its own account over TLS, raises the alert of an estimate ingest
    publishes, and its MQTT notifier publishes it on the alerts topic the same way."""
    settings = AlertSettings(
        data_dir=tmp_path / "alerts", registry=EXAMPLE_REGISTRY, mqtt_alerts=True,
        write_history=False, client_id="alerts-tls", http_port=0, tick_s=0.2,
    )  # fmt: skip
    mqtt_settings = MqttSettings(
        host="127.0.0.1", port=secured.tls_port, username=ALERTS_USER,
        password=secured.passwords[ALERTS_USER], tls_ca_file=certs.ca,
    )  # fmt: skip
    service = AlertService(settings=settings, mqtt=mqtt_settings, influx=InfluxSettings())
    estimate = json.dumps({
        "v": 1, "device": "DX-0001", "hub": "HUB-A", "patient": "P-7F3A",
        "t_ns": 1_700_000_000_000_000_000, "kind": "step", "f_peak_n": 800.0,
    }).encode()  # fmt: skip

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        try:
            async with asyncio.timeout(_WAIT_S):
                await service.connected.wait()
                observer = connect(INGEST_USER)
                assert not observer.subscribe(alert_topic("DX-0001")).is_failure
                connect(INGEST_USER).publish(estimates_topic("DX-0001"), estimate)
                await asyncio.to_thread(observer.wait_for, alert_topic("DX-0001"))
                rules = [a.rule for a in service.store.alerts()]
        finally:
            stop.set()
            await runner
        assert rules == ["distraction_force"]

    asyncio.run(scenario())


@pytest.mark.parametrize("path", ["paho", "asyncio"], ids=["paho", "asyncio"])
def test_either_receive_path_receives_over_tls_with_its_password(
    secured: _Secured, certs: _Certs, connect: _Connect, path: str
) -> None:
    """Ingest's account, over TLS with its password, receives a hub's telemetry on either
    receive path; with a wrong password it never connects."""
    settings = MqttSettings(
        host="127.0.0.1", port=secured.tls_port, username=INGEST_USER,
        password=secured.passwords[INGEST_USER], tls_ca_file=certs.ca,
        client_id=f"ingest-tls-{path}", receive_path=path,
    )  # fmt: skip
    refused = settings.model_copy(update={"password": _WRONG, "client_id": f"wrong-{path}"})
    hub = connect("HUB-A")

    async def scenario() -> None:
        async with open_source(settings=settings, subscriptions=[_ALLOWED]) as source:
            await source.wait_connected(_WAIT_S)
            await asyncio.to_thread(hub.publish, _ALLOWED, b"raw")
            async with asyncio.timeout(_WAIT_S):
                (message,) = await anext(source.batches(max_messages=10))
            source.ack(message)
            assert (message.topic, message.payload, message.qos) == (_ALLOWED, b"raw", 1)
        async with open_source(settings=refused, subscriptions=[_ALLOWED]) as source:
            with pytest.raises(TimeoutError):
                await source.wait_connected(3.0)  # refused: CONNACK "bad user name or password"
            assert not source.connected

    asyncio.run(scenario())


# --- generated files ---------------------------------------------------------------------------


def test_the_acl_gives_each_hub_write_on_its_subtree_only() -> None:
    """Each hub's ACL block is one write rule on its own subtree."""
    acl = render_acl(broker_accounts(Registry.load(EXAMPLE_REGISTRY)))
    blocks = [block.strip().splitlines() for block in acl.split("\n\n")[1:]]
    by_user = {lines[1]: lines[2:] for lines in blocks}
    assert by_user["user HUB-A"] == ["topic write osteotel/v1/HUB-A/#"]
    assert by_user["user HUB-B"] == ["topic write osteotel/v1/HUB-B/#"]
    assert f"user {EMULATOR_USER}" not in by_user
    assert not acl.split("\nuser ", 1)[0].count("\ntopic")


@pytest.mark.parametrize(
    "hub_id",
    ["derived", "alerts", INGEST_USER, EMULATOR_USER],
    ids=["derived", "alerts", "ingest-user", "emulator-user"],
)
def test_a_hub_id_that_collides_with_a_service_is_refused(hub_id: str) -> None:
    """A registry whose hub id is a service subtree or username cannot produce an ACL."""
    registry = Registry.from_toml(f'[[hub]]\nid = "{hub_id}"\n')
    with pytest.raises(ConfigError, match=hub_id):
        broker_accounts(registry)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("HUB-A", "short"),
        ("HUB-A", "a-long-enough-password\nHUB-B"),
        ("HUB:A", "a-long-enough-password"),
        ("HUB A", "a-long-enough-password"),
    ],
    ids=["short-password", "newline-in-password", "colon-in-username", "space-in-username"],
)
def test_a_bad_credential_writes_no_password_file(
    tmp_path: Path, username: str, password: str
) -> None:
    """A credential mosquitto_passwd would mangle is refused before any file is written."""
    path = tmp_path / "passwd"
    with pytest.raises(ConfigError) as caught:
        write_password_file(path, {username: SecretStr(password)})
    assert not path.exists()
    assert password not in str(caught.value)


def test_a_missing_mosquitto_passwd_is_reported_and_writes_nothing(tmp_path: Path) -> None:
    """Without mosquitto_passwd the error names the install command and no file is left."""
    with pytest.raises(MissingBinaryError, match="apt-get install mosquitto"):
        write_password_file(
            tmp_path / "passwd",
            {"HUB-A": generate_password()},
            binary=tmp_path / "no-such-mosquitto_passwd",
        )
    assert list(tmp_path.iterdir()) == []


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """A secret file is written 0600 and read back; once made world-readable it is refused."""
    path = write_secret_file(tmp_path / "HUB-A", SecretStr("a-long-enough-password"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret_file(path).get_secret_value() == "a-long-enough-password"
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        read_secret_file(path)


def test_the_committed_deploy_files_match_the_generator() -> None:
    """deploy/mosquitto holds exactly what brokerconf renders for the example registry."""
    deploy = REPO / "deploy" / "mosquitto"
    acl = render_acl(
        broker_accounts(Registry.load(EXAMPLE_REGISTRY)), source="deploy/registry.example.toml"
    )
    assert (deploy / "mosquitto.conf").read_text(encoding="utf-8") == production_config()
    assert (deploy / "acl.example").read_text(encoding="utf-8") == acl


def test_provisioning_twice_keeps_the_secrets_and_prints_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The provisioning command keeps existing secrets, writes private files, prints no secret."""
    args = [
        "--registry", str(EXAMPLE_REGISTRY),
        "--out-dir", str(tmp_path / "mosquitto"),
        "--secrets-dir", str(tmp_path / "secrets"),
    ]  # fmt: skip
    assert main(args) == 0
    first = read_secret_file(tmp_path / "secrets" / "HUB-A")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert read_secret_file(tmp_path / "secrets" / "HUB-A") == first
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == sorted(
        ["HUB-A", "HUB-B", INGEST_USER, ALERTS_USER]
    )
    for path in (tmp_path / "secrets").iterdir():
        assert read_secret_file(path).get_secret_value() not in out
    assert sorted(p.name for p in (tmp_path / "mosquitto").iterdir()) == ["acl", "passwd"]
    for path in (tmp_path / "mosquitto").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
