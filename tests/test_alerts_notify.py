"""Each notifier against its real peer on loopback, and the outbox retrying a peer that was down."""

import asyncio
import email.policy
import http.client
import json
import smtplib
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import paho.mqtt.exception as paho_exception
import pytest
from aiosmtpd.controller import Controller

from alerts.engine import AlertEngine
from alerts.model import Observation, Severity
from alerts.notify import (
    LIBRARY_ERRORS,
    AlertmanagerNotifier,
    EmailNotifier,
    MqttNotifier,
    NotifyError,
    WebhookNotifier,
    alert_topic,
)
from alerts.outbox import Dispatcher
from alerts.settings import SmtpSettings
from alerts.store import AlertStore
from apps.services import Alertmanager, Mosquitto, free_port
from osteotel.settings import MqttSettings

S = 1_000_000_000
T0 = 1_700_000_000 * S
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Receiver:
    """A stdlib HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self, port: int) -> None:
        self.bodies: list[Any] = []
        self.got = threading.Event()
        bodies, got = self.bodies, self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                bodies.append(json.loads(self.rfile.read(length)))
                got.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP webhook receiver on a free loopback port."""
    server = Receiver(free_port())
    yield server
    server.close()


class Mailbox:
    """An aiosmtpd handler that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """An aiosmtpd SMTP server on a free loopback port."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


def payload(
    event: str = "firing", device: str = "DX-0001", state: str = "firing"
) -> dict[str, Any]:
    return {
        "v": 1,
        "event": event,
        "patient": "P-7F3A",
        "alerts": [
            {
                "id": 7,
                "event": event,
                "key": f"7:{event}:{T0}",
                "patient": "P-7F3A",
                "device": device,
                "hub": "HUB-A",
                "rule": "distraction_force",
                "severity": "critical",
                "priority": "high",
                "state": state,
                "value": 1234.5,
                "summary": "peak force 1234.5 N above 1000 N",
                "t_ns": T0,
                "time": "2023-11-14T22:13:20.000000Z",
                "started_ns": T0,
                "started": "2023-11-14T22:13:20.000000Z",
                "fired_ns": T0,
                "resolved_ns": None,
                "acked_by": None,
                "link": f"http://grafana.test/d/osteotel-patient?var-device={device}",
            }
        ],
    }


def test_webhook_posts_json(receiver: Receiver) -> None:
    """The webhook notifier POSTs the payload as JSON to the receiver."""
    asyncio.run(WebhookNotifier(receiver.url, timeout_s=5).send(payload()))
    [body] = receiver.bodies
    assert body["alerts"][0]["patient"] == "P-7F3A"
    assert body["alerts"][0]["link"].endswith("var-device=DX-0001")


def test_webhook_down_raises_notify_error() -> None:
    """A webhook nobody listens on raises NotifyError naming the channel."""
    notifier = WebhookNotifier(f"http://127.0.0.1:{free_port()}/hook", timeout_s=2)
    with pytest.raises(NotifyError) as caught:
        asyncio.run(notifier.send(payload()))
    assert caught.value.channel == "webhook"


def test_email_reaches_smtp_server(smtp_server: tuple[Mailbox, int]) -> None:
    """The e-mail notifier delivers one message with the pseudonym, rule and board link, and a
    Message-ID derived from the notification's key."""
    mailbox, port = smtp_server
    settings = SmtpSettings(host="127.0.0.1", port=port, to=["ward3@example.org"], timeout_s=5)
    asyncio.run(EmailNotifier(settings).send(payload()))
    [(recipients, raw)] = mailbox.messages
    message = message_from_bytes(raw, policy=email.policy.default)
    assert recipients == ["ward3@example.org"]
    assert message["Message-ID"] == f"<7.firing.{T0}@osteotel.alerts>"  # from the key
    assert "P-7F3A" in str(message["Subject"])
    assert isinstance(message, EmailMessage)
    body = message.get_content()
    assert "var-device=DX-0001" in body
    assert "distraction_force" in body


def test_escalation_email_adds_escalation_recipients(smtp_server: tuple[Mailbox, int]) -> None:
    """An escalation e-mail also goes to the escalation list."""
    mailbox, port = smtp_server
    settings = SmtpSettings(
        host="127.0.0.1", port=port, to=["ward3@example.org"],
        escalation_to=["oncall@example.org"], timeout_s=5,
    )  # fmt: skip
    asyncio.run(EmailNotifier(settings).send(payload(event="escalation")))
    [(recipients, _)] = mailbox.messages
    assert recipients == ["ward3@example.org", "oncall@example.org"]


def test_mqtt_publishes_on_alert_topic(
    mosquitto: Mosquitto, unique_id: str, tmp_path: Path
) -> None:
    """The MQTT notifier publishes each alert on osteotel/v1/alerts/{device}."""
    device = f"DX-{unique_id}"
    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port)

    async def scenario() -> dict[str, Any]:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.subscribe(alert_topic(device), qos=1)
            with AlertStore(tmp_path / "alerts.db") as store:
                notifier = MqttNotifier(
                    settings, client_id=f"alerts-{unique_id}", published=store, timeout_s=5
                )
                await notifier.send(payload(device=device))
            async with asyncio.timeout(10):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    received: dict[str, Any] = json.loads(message.payload)
                    return received
        raise AssertionError("no message")

    body = asyncio.run(scenario())
    assert (body["device"], body["rule"], body["event"]) == (device, "distraction_force", "firing")


def test_alertmanager_receives_alert(alertmanager: Alertmanager, unique_id: str) -> None:
    """An alert posted to Alertmanager's v2 API is listed by GET /api/v2/alerts."""
    device = f"DX-{unique_id}"
    asyncio.run(AlertmanagerNotifier(alertmanager.url, timeout_s=5).send(payload(device=device)))
    with _HTTP.open(f"{alertmanager.url}/api/v2/alerts", timeout=5) as response:
        listed = json.loads(response.read())
    [mine] = [a for a in listed if a["labels"].get("device") == device]
    assert mine["labels"]["alertname"] == "distraction_force"
    assert mine["labels"]["severity"] == "critical"
    assert mine["generatorURL"].endswith(f"var-device={device}")


def test_down_webhook_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    """Notifications queued while the webhook is down all arrive, in order, once it is up."""
    port = free_port()
    store = AlertStore(tmp_path / "alerts.db")
    engine = AlertEngine(
        store, channels=["webhook"], grafana_url="http://grafana.test", repeat_s=3600,
        escalate_after_s=600, history=False,
    )  # fmt: skip
    for rule in ("distraction_force", "battery_low", "device_silent"):
        engine.observe(
            [
                Observation(
                    device="DX-0001",
                    hub="HUB-A",
                    patient="P-7F3A",
                    rule=rule,
                    t_ns=T0,
                    trigger=True,
                    clear=False,
                    severity=Severity.WARNING,
                    value=1.0,
                    summary=rule,
                )
            ],
            now_ns=T0,
        )
    notifier = WebhookNotifier(f"http://127.0.0.1:{port}/hook", timeout_s=2)
    dispatcher = Dispatcher(store, {"webhook": notifier}, retry_min_s=1.0, retry_max_s=60.0)

    assert asyncio.run(dispatcher.deliver_due(now_ns=T0)) == 0
    # The first failed; the ones behind it waited their turn instead of overtaking it.
    assert [item.attempts for item in store.due(now_ns=T0 + 10 * S)] == [1, 0, 0]
    assert store.due(now_ns=T0 + S // 2) == []  # the channel backs off as a whole
    assert store.backlog() == {"webhook": 3}

    server = Receiver(port)
    try:
        assert asyncio.run(dispatcher.deliver_due(now_ns=T0 + 10 * S)) == 3
    finally:
        server.close()
    assert [b["alerts"][0]["rule"] for b in server.bodies] == [
        "distraction_force",
        "battery_low",
        "device_silent",
    ]
    assert store.backlog() == {}
    store.close()


def test_backoff_doubles_up_to_the_limit(tmp_path: Path) -> None:
    """The retry delay doubles with every failure and stops at retry_max_s."""
    with AlertStore(tmp_path / "a.db") as store:
        dispatcher = Dispatcher(store, {}, retry_min_s=1.0, retry_max_s=10.0)
        assert [dispatcher.backoff_s(n) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]


def _library_exceptions() -> list[type[BaseException]]:
    """Every public exception class the notifiers' wire libraries define, read from the
    modules themselves (not a hand list): urllib's, smtplib's, http.client's, ssl's,
    socket's, paho's (under osteotel.mqtt), and the store's (`StoreError` and below)."""
    import inspect  # noqa: PLC0415
    import socket  # noqa: PLC0415

    from osteotel.errors import StoreError  # noqa: PLC0415

    found: set[type[BaseException]] = {StoreError, *StoreError.__subclasses__()}
    for module in (urllib.error, smtplib, http.client, ssl, socket, paho, paho_exception):
        root = module.__name__.split(".")[0]
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and not name.startswith("_") and (
                cls.__module__.split(".")[0].lstrip("_") == root
            ):  # fmt: skip
                found.add(cls)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


@pytest.mark.parametrize(
    "cls", _library_exceptions(), ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}"
)
def test_library_errors_are_all_mapped(cls: type[BaseException]) -> None:
    """Every exception class the notifiers' libraries define becomes a NotifyError."""
    assert issubclass(cls, LIBRARY_ERRORS)


def test_the_enumeration_sees_the_libraries() -> None:
    """The enumeration finds each library's own classes (a broken filter would pass
    vacuously)."""
    names = {cls.__name__ for cls in _library_exceptions()}
    assert {"URLError", "SMTPRecipientsRefused", "RemoteDisconnected", "SSLError",
            "MalformedPacket", "StoreUnavailable"} <= names  # fmt: skip


def test_a_library_error_becomes_a_notify_error_of_its_channel() -> None:
    """Inside `_delivering`, a library's error comes out as NotifyError naming the channel,
    with the original as its cause; anything else passes through."""
    from alerts.notify import NotifyError, _delivering  # noqa: PLC0415

    with pytest.raises(NotifyError, match="webhook: URLError") as caught, _delivering("webhook"):
        raise urllib.error.URLError("refused")
    assert isinstance(caught.value.__cause__, urllib.error.URLError)
    with pytest.raises(KeyError), _delivering("webhook"):
        raise KeyError("a bug, not a delivery")
