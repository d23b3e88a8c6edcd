"""Notifiers: the one place that talks to webhooks, SMTP, MQTT, Alertmanager and InfluxDB.

Every notifier takes the engine's payload (`{"v", "event", "patient", "alerts": [...]}`, see
`alerts.engine.alert_message`) and delivers it, or raises `NotifyError`. Whatever the wire
libraries raise is mapped to `NotifyError` in `_delivering`, so the outbox (alerts.outbox) sees
one exception type and retries it later; nothing else in alerts imports these libraries.

Blocking clients (urllib, smtplib, InfluxStore) run in a worker thread; MQTT goes through
`osteotel.mqttwire.open_source`, whose persistent session also tells which alerts the broker
already accepted (`MqttNotifier`).

Every notification carries an idempotency key per alert (`key`, alert id:event:t_ns, the same in
every copy); `notification_key` joins a payload's keys into the key of the whole message: the
webhook's `Idempotency-Key` header and the e-mail's Message-ID.
"""

import asyncio
import http.client
import json
import logging
import os
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any, Protocol

from alerts.settings import SmtpSettings
from osteotel.errors import OsteotelError, StoreError
from osteotel.logs import kv
from osteotel.mqtt import MQTT_ERRORS, MqttSource, Received
from osteotel.mqttwire import open_source
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
    "PublishedLog",
    "WebhookNotifier",
    "alert_topic",
    "marker_topic",
    "message_id",
    "notification_key",
]

_log = logging.getLogger("osteotel.alerts.notify")
_DRAIN_BATCH = 100  # messages of the session read back, recorded and acknowledged at once

# Notifications go straight to their peers: proxy variables are for other traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # urllib's URLError and HTTPError, smtplib's SMTPException, sockets, TLS
    http.client.HTTPException,
    *MQTT_ERRORS,  # paho's, behind osteotel.mqtt (TimeoutError, a wait's end, is an OSError)
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


def marker_topic(client_id: str) -> str:
    """Where the MQTT notifier with `client_id` publishes the marker that ends reading back its
    session: two levels below `osteotel/v1/alerts/`, so no alert topic filter (`+`) sees it."""
    return f"osteotel/v1/alerts/marker/{client_id}"


def notification_key(payload: dict[str, Any]) -> str:
    """The idempotency key of a whole notification: its alerts' keys, space-separated (one
    alert, the usual case: that alert's key). The same in every copy of the message."""
    return " ".join(alert["key"] for alert in payload["alerts"] if "key" in alert)


def _post_json(
    url: str, body: object, timeout_s: float, *, idempotency_key: str | None = None
) -> int:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if idempotency_key:
        # draft-ietf-httpapi-idempotency-key-header: a Structured Field string, quoted.
        headers["Idempotency-Key"] = f'"{idempotency_key}"'
    # S310: the scheme was checked above, so no file: URL can be opened.
    request = urllib.request.Request(  # noqa: S310
        url, data=data, method="POST", headers=headers
    )
    with _OPENER.open(request, timeout=timeout_s) as response:
        response.read()
        status: int = response.status
        return status


class WebhookNotifier:
    """POSTs the payload as JSON to a URL, with its `notification_key` as the
    `Idempotency-Key` header; any 2xx counts as delivered."""

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
        key = notification_key(payload)
        with _delivering(self._name):
            await asyncio.to_thread(
                _post_json, self._url, payload, self._timeout_s, idempotency_key=key
            )


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


def message_id(payload: dict[str, Any]) -> str:
    """The e-mail's Message-ID, derived from the `notification_key` (RFC 5322 allows no ':' or
    space on its left: they become '.' and '+'), the same in every copy."""
    left = notification_key(payload).replace(":", ".").replace(" ", "+")
    return f"<{left}@osteotel.alerts>"


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
        if notification_key(payload):
            message["Message-ID"] = message_id(payload)
        message.set_content(body)
        with _delivering(self._name):
            await asyncio.to_thread(self._send_blocking, message, recipients)


class PublishedLog(Protocol):
    """Where the MQTT notifier records what the broker accepted (`alerts.store.AlertStore`)."""

    def record_published(
        self, channel: str, pairs: Collection[tuple[str, str]], *, now_ns: int
    ) -> int:
        """Record accepted notifications (device, key) of undelivered rows; returns how many."""
        ...

    def published(self, channel: str) -> set[tuple[str, str]]:
        """The accepted notifications (device, key) of `channel`'s undelivered rows."""
        ...


def _notified(message: Received) -> tuple[str, str] | None:
    """The (device, key) of an alert read back from the broker; None for anything else."""
    try:
        body = json.loads(message.payload)
    except ValueError:  # not JSON, or not UTF-8: someone else's message on an alert topic
        return None
    if not isinstance(body, dict):
        return None
    device, key = body.get("device"), body.get("key")
    return (device, key) if isinstance(device, str) and isinstance(key, str) else None


class MqttNotifier:
    """Publishes each alert of a payload, QoS 1, on `osteotel/v1/alerts/{device}`, exactly once
    even across a crash between the broker's PUBACK and the outbox recording it.

    Its client holds a persistent session subscribed (QoS 1) to `osteotel/v1/alerts/+`, so the
    broker queues every alert published, ours included, for it. Before publishing, `send`
    reads that queue back up to a marker it publishes itself, records in `published` every
    (device, key) it finds of an undelivered outbox row, acknowledges what it read, and then
    publishes only the alerts not found. Why the marker ends the read-back: the previous
    connection with this client id has ended (Mosquitto closes an old connection when the same
    id connects), so the broker has queued every PUBLISH of it that it accepted before ours;
    Mosquitto 2.0 keeps one FIFO list of outgoing messages per session, whatever the topic
    (docs/alerts.md, "After a crash"). The session's queue holds what was published on alert
    topics since the previous send: bounded, and read at every send.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        published: PublishedLog,
        name: str = "mqtt",
        timeout_s: float = 10.0,
    ) -> None:
        """Args: settings: the broker; client_id: our MQTT id (a persistent session);
        published: the record of accepted alerts; name: channel; timeout_s: seconds."""
        self._settings = settings.model_copy(update={"client_id": client_id})
        self._marker = marker_topic(client_id)
        self._published = published
        self._name = name
        self._timeout_s = timeout_s

    @property
    def name(self) -> str:
        """The outbox channel name."""
        return self._name

    async def send(self, payload: dict[str, Any]) -> None:
        """Read back what the broker accepted, publish the rest of the alerts (QoS 1), and
        return once the broker acknowledged them; raises `NotifyError` otherwise."""
        source = open_source(
            settings=self._settings, subscriptions=[alert_topic("+"), self._marker]
        )
        # What a timeout was waiting for: a read-back that never ends is most likely an ACL
        # that lets this account write alert topics but not read them.
        waiting = "the broker's CONNACK and SUBACK"
        try:
            with _delivering(self._name):
                async with asyncio.timeout(self._timeout_s), source:
                    await source.wait_connected(self._timeout_s)
                    waiting = f"the marker on {self._marker} (can this account read it?)"
                    await self._read_back(source)
                    waiting = "the broker's PUBACKs"
                    await self._publish_rest(source, payload)
        except NotifyError as exc:
            if isinstance(exc.__cause__, TimeoutError):
                raise NotifyError(self._name, f"timed out waiting for {waiting}") from exc
            raise

    async def _publish_rest(self, source: MqttSource, payload: dict[str, Any]) -> None:
        """Publish the payload's alerts the broker has not accepted yet; wait for the PUBACKs."""
        accepted = await asyncio.to_thread(self._published.published, self._name)
        skipped = 0
        for alert in payload["alerts"]:
            if (alert["device"], alert.get("key")) in accepted:
                skipped += 1
                continue
            body = {"v": 1, "event": payload["event"], **alert}
            source.publish(alert_topic(alert["device"]), json.dumps(body).encode())
        if skipped:
            _log.info(kv("alerts_mqtt_already_published", channel=self._name, alerts=skipped))
        if not await source.confirmed(self._timeout_s):
            raise TimeoutError("the broker did not acknowledge every alert")

    async def _read_back(self, source: MqttSource) -> None:
        """Read the session's queue up to a marker published now, recording each alert of an
        undelivered row before acknowledging it (a crash in between reads it again)."""
        token = os.urandom(8).hex().encode()
        source.publish(self._marker, token)
        async for batch in source.batches(max_messages=_DRAIN_BATCH):
            pairs = [
                p for m in batch if m.topic != self._marker and (p := _notified(m)) is not None
            ]
            if pairs:
                await asyncio.to_thread(
                    self._published.record_published, self._name, pairs, now_ns=time.time_ns()
                )
            for message in batch:
                source.ack(message)
            if any(m.topic == self._marker and m.payload == token for m in batch):
                return


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
