"""The alert service (`osteotel alerts run`): MQTT in, rules, lifecycle, notifications out.

Three named tasks in one TaskGroup:

- `alerts.receive`: a persistent MQTT session (QoS 1) on estimates, events and hub status, and
  QoS 0 on telemetry when `watch_telemetry` is set; each message goes through the rules and
  the resulting observations through the engine (SQLite, in a worker thread);
- `alerts.tick`: every `tick_s`, silence rules, pending for-durations, repeats, escalations,
  and a registry reload when the file changed;
- `alerts.deliver`: the outbox, woken at once when something was queued, else every `tick_s`.

On start the rules replay the stored recent estimates, so patient-relative rules keep their
trajectories across restarts. aiomqtt acknowledges a QoS 1 message on receipt; a crash between
receipt and the SQLite commit can lose that one input (estimates are re-derived daily; the
next input of the same kind re-judges the rule).
"""

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiomqtt
from pydantic import TypeAdapter, ValidationError

from alerts.engine import HISTORY_CHANNEL, AlertEngine
from alerts.inputs import ESTIMATES_FILTER, Estimate, parse_estimate
from alerts.metrics import AlertMetrics
from alerts.model import Observation
from alerts.notify import (
    AlertmanagerNotifier,
    EmailNotifier,
    HistoryWriter,
    MqttNotifier,
    Notifier,
    WebhookNotifier,
)
from alerts.outbox import Dispatcher
from alerts.rules import RuleBook, UnknownDeviceError
from alerts.settings import AlertSettings
from alerts.store import AlertStore
from alerts.thresholds import load_overrides
from devices.codec import decode_event, decode_frame, decode_status
from devices.contract import SUBSCRIPTIONS, MessageKind, Rejected, parse_topic
from devices.registry import RegistryFile
from osteotel.errors import ConfigError
from osteotel.logs import kv
from osteotel.settings import InfluxSettings, MqttSettings

__all__ = ["AlertService", "build_notifiers"]

_log = logging.getLogger("osteotel.alerts.service")
_KEEP_INPUTS = 400  # per device and kind: ~100 days of 4 steps a day
_RECONNECT_S = 2.0
_ESTIMATE: TypeAdapter[Estimate] = TypeAdapter(Estimate)


def build_notifiers(
    settings: AlertSettings, *, mqtt: MqttSettings, influx: InfluxSettings
) -> list[Notifier]:
    """The notifiers the settings ask for, each with its outbox channel name.

    Webhooks are `webhook-0`, `webhook-1`... in settings order; e-mail only with recipients;
    `history` writes InfluxDB when `write_history` is set.
    """
    timeout_s = settings.send_timeout_s
    notifiers: list[Notifier] = [
        WebhookNotifier(url, name=f"webhook-{i}", timeout_s=timeout_s)
        for i, url in enumerate(settings.webhook_urls)
    ]
    if settings.smtp.to:
        notifiers.append(EmailNotifier(settings.smtp))
    if settings.mqtt_alerts:
        notifiers.append(
            MqttNotifier(mqtt, client_id=f"{settings.client_id}-notify", timeout_s=timeout_s)
        )
    if settings.alertmanager_url:
        notifiers.append(AlertmanagerNotifier(settings.alertmanager_url, timeout_s=timeout_s))
    if settings.write_history:
        notifiers.append(HistoryWriter(influx, name=HISTORY_CHANNEL))
    return notifiers


class AlertService:
    """Runs the alert service until a stop event is set."""

    def __init__(
        self, *, settings: AlertSettings, mqtt: MqttSettings, influx: InfluxSettings
    ) -> None:
        """Open the database and load the registry and its alert overrides.

        Args:
            settings: the `[alerts]` section.
            mqtt: the broker.
            influx: where the history goes (used only with `write_history`).

        Raises:
            ConfigError: the registry or an override is invalid.
        """
        self._settings = settings
        self._mqtt = mqtt
        self.store = AlertStore(settings.db_path)
        self._registry_file = RegistryFile(settings.registry)
        self.rules = RuleBook(
            self._registry_file.current, load_overrides(settings.registry), now_ns=time.time_ns()
        )
        notifiers = build_notifiers(settings, mqtt=mqtt, influx=influx)
        self.engine = AlertEngine(
            self.store,
            channels=[n.name for n in notifiers if n.name != HISTORY_CHANNEL],
            grafana_url=settings.grafana_url,
            repeat_s=settings.repeat_s,
            escalate_after_s=settings.escalate_after_s,
            history=settings.write_history,
        )
        self.metrics = AlertMetrics(self.store)
        self.dispatcher = Dispatcher(
            self.store,
            {n.name: n for n in notifiers},
            retry_min_s=settings.retry_min_s,
            retry_max_s=settings.retry_max_s,
            metrics=self.metrics,
        )
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()
        self._replay()

    def _replay(self) -> None:
        replayed = 0
        for payload in self.store.inputs():
            try:
                self.rules.estimate(_ESTIMATE.validate_python(payload))
            except (ValidationError, UnknownDeviceError):
                continue  # a device since removed from the registry, or an old format
            replayed += 1
        self.rules.forget_emitted()
        _log.info(kv("alerts_replayed", inputs=replayed))

    async def run(self, stop: asyncio.Event) -> None:
        """Receive, judge, notify, until `stop` is set; then close the database."""
        if self._settings.http_port:
            self.metrics.serve(self._settings.http_host, self._settings.http_port)
        try:
            async with asyncio.TaskGroup() as group:
                receive = group.create_task(self._receive_forever(), name="alerts.receive")
                group.create_task(self._tick_loop(stop), name="alerts.tick")
                group.create_task(self._deliver_loop(stop), name="alerts.deliver")
                await stop.wait()
                receive.cancel()
        finally:
            self.metrics.close()
            self.store.close()

    # --- receive --------------------------------------------------------------------------------

    async def _receive_forever(self) -> None:
        settings = self._mqtt
        password = settings.password_text()
        tls = (
            aiomqtt.TLSParameters(ca_certs=str(settings.tls_ca_file))
            if settings.tls_ca_file is not None
            else None
        )
        while True:
            try:
                async with aiomqtt.Client(
                    settings.host,
                    settings.port,
                    identifier=self._settings.client_id,
                    username=settings.username,
                    password=password,
                    tls_params=tls,
                    clean_session=False,
                    keepalive=settings.keepalive_s,
                ) as client:
                    await client.subscribe(ESTIMATES_FILTER, qos=1)
                    for topic in SUBSCRIPTIONS:
                        if topic.endswith("/telemetry"):
                            if self._settings.watch_telemetry:
                                await client.subscribe(topic, qos=0)
                        else:
                            await client.subscribe(topic, qos=1)
                    self.connected.set()
                    _log.info(kv("alerts_mqtt_connected", host=settings.host, port=settings.port))
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes):
                            await self.handle(str(message.topic), payload)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                _log.warning(kv("alerts_mqtt_disconnected", error=exc))
                await asyncio.sleep(_RECONNECT_S)

    def _judge(self, topic: str, payload: bytes) -> tuple[str, list[Observation]]:
        if topic.startswith("osteotel/v1/derived/"):
            estimate = parse_estimate(payload)
            if topic != f"osteotel/v1/derived/{estimate.device}/estimates":
                raise ValueError(f"device {estimate.device} does not match topic {topic}")
            observations = self.rules.estimate(estimate)
            self.store.record_input(
                device=estimate.device,
                kind=estimate.kind,
                t_ns=estimate.t_ns,
                payload=estimate.model_dump(),
                keep=_KEEP_INPUTS,
            )
            return estimate.kind, observations
        parsed = parse_topic(topic)
        if parsed.kind is MessageKind.STATUS:
            return "status", self.rules.status(decode_status(payload, topic_hub=parsed.hub))
        assert parsed.device is not None
        if parsed.kind is MessageKind.EVENTS:
            event = decode_event(payload, topic_device=parsed.device)
            return "event", self.rules.event(parsed.hub, event)
        frame, _ = decode_frame(payload, topic_device=parsed.device)
        return "telemetry", self.rules.frame(parsed.hub, frame)

    async def handle(self, topic: str, payload: bytes) -> list[Observation]:
        """Judge one MQTT message and apply what the rules observed.

        Args:
            topic: the message's topic.
            payload: its bytes.

        Returns:
            The observations (empty for a refused message, which is counted and logged).
        """
        try:
            kind, observations = await asyncio.to_thread(self._judge, topic, payload)
        except (Rejected, ValueError, UnknownDeviceError) as exc:
            reason = exc.reason.value if isinstance(exc, Rejected) else type(exc).__name__
            self.metrics.rejected.labels(reason).inc()
            _log.warning(kv("alerts_input_rejected", topic=topic, reason=reason, error=exc))
            return []
        self.metrics.inputs.labels(kind).inc()
        if observations:
            await asyncio.to_thread(self.engine.observe, observations, now_ns=time.time_ns())
            self._wake.set()
        return observations

    # --- timers ---------------------------------------------------------------------------------

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self._tick)
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.tick_s)

    def _tick(self) -> None:
        if self._registry_file.reload_if_changed():
            try:
                self.rules.update(
                    self._registry_file.current, load_overrides(self._settings.registry)
                )
            except ConfigError as exc:
                _log.error(kv("alerts_overrides_reload_failed", error=exc))
        now_ns = time.time_ns()
        observations = self.rules.tick(now_ns)
        if observations:
            self.engine.observe(observations, now_ns=now_ns)
        self.engine.tick(now_ns=now_ns)

    async def _deliver_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            await self.dispatcher.deliver_due()
            waits: list[asyncio.Task[Any]] = [
                asyncio.create_task(self._wake.wait()),
                asyncio.create_task(stop.wait()),
            ]
            _, pending = await asyncio.wait(
                waits, timeout=self._settings.tick_s, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
