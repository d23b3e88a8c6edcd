"""Notifiers: the one place that talks to webhooks, SMTP, MQTT, Alertmanager and InfluxDB.

Every notifier takes the engine's payload (`{"v", "event", "patient", "alerts": [...]}`, see
`alerts.engine.alert_message`) and delivers it, or raises `NotifyError`. Whatever the wire
libraries raise is mapped to `NotifyError` in `_delivering`, so the outbox (alerts.outbox) sees
one exception type and retries it later; nothing else in alerts imports these libraries.

Blocking clients (urllib, smtplib, InfluxStore) run in a worker thread; MQTT uses aiomqtt.
"""

import asyncio
import http.client
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any, Protocol

import aiomqtt

from alerts.settings import SmtpSettings
from osteotel.errors import OsteotelError, StoreError
from osteotel.settings import InfluxSettings, MqttSettings
from osteotel.store.influx import InfluxStore

__all__ = [
    "LIBRARY_ERRORS",
    "AlertmanagerNotifier",
    "EmailNotifier",
    "HistoryWriter",
    "MqttNotifier",
    "Notifier",
    "NotifyError",
    "WebhookNotifier",
    "alert_topic",
]

# Notifications go straight to their peers: proxy variables are for other traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # urllib's URLError and HTTPError, smtplib's SMTPException, sockets, TLS
    http.client.HTTPException,
    aiomqtt.MqttError,
    StoreError,
    ValueError,  # a malformed URL or header
)
"""Every exception family the notifiers' libraries raise; each becomes a `NotifyError`."""


class NotifyError(OsteotelError):
    """A notification was not delivered; the outbox tries again later.

    Attributes:
        channel: the notifier's name.
    """

    def __init__(self, channel: str, message: str) -> None:
        super().__init__(f"{channel}: {message}")
        self.channel = channel


@contextmanager
def _delivering(channel: str) -> Iterator[None]:
    """Re-raise what a wire library raises inside as a `NotifyError` of `channel`: the one
    error mapping of every notifier."""
    try:
        yield
    except LIBRARY_ERRORS as exc:
        text = str(exc) or type(exc).__name__
        raise NotifyError(channel, f"{type(exc).__name__}: {text}"[:300]) from exc


class Notifier(Protocol):
    """Something that delivers a notification payload or raises `NotifyError`."""

    @property
    def name(self) -> str:
        """The outbox channel name."""
        ...

    async def send(self, payload: dict[str, Any]) -> None:
        """Deliver `payload`; raise `NotifyError` when it was not delivered."""
        ...


def alert_topic(device: str) -> str:
    """The MQTT topic alerts about `device` are published on."""
    return f"osteotel/v1/alerts/{device}"


def _post_json(url: str, body: object, timeout_s: float) -> int:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    data = json.dumps(body).encode()
    # S310: the scheme was checked above, so no file: URL can be opened.
    request = urllib.request.Request(  # noqa: S310
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    with _OPENER.open(request, timeout=timeout_s) as response:
        response.read()
        status: int = response.status
        return status


class WebhookNotifier:
    """POSTs the payload as JSON to a URL; any 2xx counts as delivered."""

    def __init__(self, url: str, *, name: str = "webhook", timeout_s: float = 10.0) -> None:
        """Args: url: the receiver; name: the outbox channel; timeout_s: seconds."""
        self._url = url
        self._name = name
        self._timeout_s = timeout_s

    @property
    def name(self) -> str:
        """The outbox channel name."""
        return self._name

    async def send(self, payload: dict[str, Any]) -> None:
        """POST `payload`; raises `NotifyError` on any failure (urllib raises for >= 400)."""
        with _delivering(self._name):
            await asyncio.to_thread(_post_json, self._url, payload, self._timeout_s)


def email_text(payload: dict[str, Any]) -> tuple[str, str]:
    """The subject and plain-text body of a notification e-mail."""
    alerts: list[dict[str, Any]] = payload["alerts"]
    worst = max(alerts, key=lambda a: {"critical": 2, "warning": 1}.get(a["severity"], 0))
    rules = ", ".join(sorted({a["rule"] for a in alerts}))
    subject = (
        f"[osteotel {worst['severity'].upper()}] {payload['event']}: {payload['patient']} {rules}"
    )
    lines = [f"Patient {payload['patient']}: {len(alerts)} alert(s), {payload['event']}.", ""]
    for alert in alerts:
        lines += [
            f"- {alert['severity']} ({alert['priority']} priority) {alert['rule']} "
            f"on {alert['device']} at {alert['time']}",
            f"  {alert['summary']}",
            f"  value: {alert['value']}   alert id: {alert['id']}"
            + (f"   key: {alert['key']}" if "key" in alert else ""),
            f"  {alert['link']}",
        ]
    lines += ["", "Acknowledge: osteotel alerts ack ID --by NAME --note TEXT"]
    return subject, "\n".join(lines) + "\n"


class EmailNotifier:
    """Sends one plain-text e-mail per notification through an SMTP relay."""

    def __init__(self, settings: SmtpSettings, *, name: str = "email") -> None:
        """Args: settings: relay, sender and recipients; name: the outbox channel."""
        self._settings = settings
        self._name = name

    @property
    def name(self) -> str:
        """The outbox channel name."""
        return self._name

    def recipients(self, event: str) -> list[str]:
        """Who receives an `event`: escalations also go to the escalation list."""
        extra = self._settings.escalation_to if event == "escalation" else []
        return list(dict.fromkeys([*self._settings.to, *extra]))

    def _send_blocking(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        settings = self._settings
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.username is not None and settings.password is not None:
                smtp.login(settings.username, settings.password.get_secret_value())
            smtp.send_message(message, to_addrs=list(recipients))

    async def send(self, payload: dict[str, Any]) -> None:
        """Send the e-mail; raises `NotifyError` when the relay does not take it."""
        recipients = self.recipients(payload["event"])
        if not recipients:
            return
        subject, body = email_text(payload)
        message = EmailMessage()
        message["From"] = self._settings.sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message.set_content(body)
        with _delivering(self._name):
            await asyncio.to_thread(self._send_blocking, message, recipients)


class MqttNotifier:
    """Publishes each alert of a payload, QoS 1, on `osteotel/v1/alerts/{device}`."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        name: str = "mqtt",
        timeout_s: float = 10.0,
    ) -> None:
        """Args: settings: the broker; client_id: our MQTT id; name: channel; timeout_s: s."""
        self._settings = settings
        self._client_id = client_id
        self._name = name
        self._timeout_s = timeout_s

    @property
    def name(self) -> str:
        """The outbox channel name."""
        return self._name

    async def send(self, payload: dict[str, Any]) -> None:
        """Connect, publish every alert (QoS 1, acknowledged by the broker), disconnect."""
        settings = self._settings
        password = settings.password_text()
        tls = (
            aiomqtt.TLSParameters(ca_certs=str(settings.tls_ca_file))
            if settings.tls_ca_file is not None
            else None
        )
        with _delivering(self._name):
            async with asyncio.timeout(self._timeout_s):
                async with aiomqtt.Client(
                    settings.host,
                    settings.port,
                    identifier=self._client_id,
                    username=settings.username,
                    password=password,
                    tls_params=tls,
                    timeout=self._timeout_s,
                ) as client:
                    for alert in payload["alerts"]:
                        body = {"v": 1, "event": payload["event"], **alert}
                        await client.publish(
                            alert_topic(alert["device"]), json.dumps(body).encode(), qos=1
                        )


def alertmanager_alerts(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The payload as Alertmanager v2 `postableAlerts`, one per alert."""
    posted = []
    for alert in payload["alerts"]:
        item: dict[str, Any] = {
            "labels": {
                "alertname": alert["rule"],
                "device": alert["device"],
                "hub": alert["hub"],
                "patient": alert["patient"],
                "severity": alert["severity"],
                "priority": alert["priority"],
                "osteotel_id": str(alert["id"]),
            },
            "annotations": {
                "summary": alert["summary"],
                "value": str(alert["value"]),
                "event": payload["event"],
                "acked_by": alert["acked_by"] or "",
            },
            "startsAt": alert["started"],
            "generatorURL": alert["link"],
        }
        if alert["state"] in ("resolved", "cancelled"):
            item["endsAt"] = alert["time"]
        posted.append(item)
    return posted


class AlertmanagerNotifier:
    """POSTs alerts to Prometheus Alertmanager's `/api/v2/alerts`."""

    def __init__(self, url: str, *, name: str = "alertmanager", timeout_s: float = 10.0) -> None:
        """Args: url: Alertmanager's base URL; name: the outbox channel; timeout_s: seconds."""
        self._url = url.rstrip("/") + "/api/v2/alerts"
        self._name = name
        self._timeout_s = timeout_s

    @property
    def name(self) -> str:
        """The outbox channel name."""
        return self._name

    async def send(self, payload: dict[str, Any]) -> None:
        """Post the alerts; raises `NotifyError` unless Alertmanager answers 2xx."""
        body = alertmanager_alerts(payload)
        with _delivering(self._name):
            await asyncio.to_thread(_post_json, self._url, body, self._timeout_s)


class HistoryWriter:
    """Writes the `history` channel's line protocol (`alert`, `alert_ack`) to InfluxDB."""

    def __init__(self, settings: InfluxSettings, *, name: str = "history") -> None:
        """Args: settings: the InfluxDB to write to; name: the outbox channel."""
        self._settings = settings
        self._name = name
        self._ready = False

    @property
    def name(self) -> str:
        """The outbox channel name."""
        return self._name

    def _write(self, lines: bytes) -> None:
        with InfluxStore(self._settings) as store:
            if not self._ready:
                store.ensure_database()
                self._ready = True
            store.write(lines)

    async def send(self, payload: dict[str, Any]) -> None:
        """Write the lines; raises `NotifyError` when InfluxDB does not take them."""
        with _delivering(self._name):
            await asyncio.to_thread(self._write, payload["lines"].encode())
