"""The alert service (`osteotel alerts run`): MQTT in, rules, lifecycle, notifications out.

Three named tasks in one TaskGroup:

- `alerts.receive`: a persistent MQTT session (`osteotel.mqtt.MqttSource`, QoS 1, manual
  acknowledgement) on estimates, events and hub status, and QoS 0 on telemetry when
  `watch_telemetry` is set; each message goes through the rules and the resulting
  observations through the engine (SQLite, in a worker thread), one message at a time;
- `alerts.tick`: every `tick_s`, silence rules, pending for-durations, repeats, escalations,
  and a registry reload when the file changed;
- `alerts.deliver`: the outbox, woken at once when something was queued, else every `tick_s`.

On start the rules replay the stored recent estimates, so patient-relative rules keep their
trajectories across restarts.

What a crash (even SIGKILL) leaves (docs/alerts.md, "After a crash"): a QoS 1 message is
acknowledged only after the engine's state, its audit lines, its outbox rows and the input's
key (and, for an estimate, the estimate itself, for the replay) are committed in one SQLite
transaction, in the order the messages arrived. A message the service had not committed is
redelivered by the broker and applied then; one it had committed but not yet acknowledged is
redelivered too, and its key makes it change nothing (counted in
`osteotel_alerts_repeated_total`). So every input raises, escalates or resolves what it should
exactly once. Notifications leave the outbox at least once: a crash after a notifier's send
and before the outbox records it sends that message again after the restart, with the same
idempotency key (`key`: alert id, event and time; the webhook's `Idempotency-Key` header) for
the receiver to drop the copy; the MQTT notifier drops it itself: it reads back from its
persistent session what the broker accepted and publishes only the rest (exactly once).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from alerts.engine import HISTORY_CHANNEL, AlertEngine
from alerts.inputs import (
    ESTIMATES_FILTER,
    CatchupInput,
    Estimate,
    estimates_topic,
    input_key,
    parse_estimate,
)
from alerts.metrics import AlertMetrics
from alerts.model import Input, Observation
from alerts.notify import (
    AlertmanagerNotifier,
    EmailNotifier,
    HistoryWriter,
    MqttNotifier,
    Notifier,
    PublishedLog,
    WebhookNotifier,
)
from alerts.outbox import Dispatcher
from alerts.rules import RuleBook, UnknownDeviceError
from alerts.settings import AlertSettings
from alerts.store import APPLIED_KEEP_S, AlertStore
from alerts.thresholds import load_overrides
from devices.codec import decode_event, decode_frame, decode_status
from devices.contract import SUBSCRIPTIONS, MessageKind, Rejected, parse_topic
from devices.registry import RegistryFile
from osteotel.errors import ConfigError
from osteotel.logs import kv
from osteotel.mqttwire import open_source
from osteotel.settings import InfluxSettings, MqttSettings

__all__ = ["AlertService", "build_notifiers"]

_log = logging.getLogger("osteotel.alerts.service")
_BATCH = 100  # messages taken from the source at once, each acknowledged once applied
_CONNECT_WAIT_S = 60.0  # between log lines while the broker is away
_NS = 1_000_000_000
_ESTIMATE: TypeAdapter[Estimate] = TypeAdapter(Estimate)


def build_notifiers(
    settings: AlertSettings,
    *,
    mqtt: MqttSettings,
    influx: InfluxSettings,
    published: PublishedLog,
) -> list[Notifier]:
    """The notifiers the settings ask for, each with its outbox channel name.

    Webhooks are `webhook-0`, `webhook-1`... in settings order; e-mail only with recipients;
    `history` writes InfluxDB when `write_history` is set. `published` is where the MQTT
    notifier records the alerts its broker already accepted (the service's store).
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
            MqttNotifier(
                mqtt,
                client_id=f"{settings.client_id}-notify",
                published=published,
                timeout_s=timeout_s,
            )
        )
    if settings.alertmanager_url:
        notifiers.append(AlertmanagerNotifier(settings.alertmanager_url, timeout_s=timeout_s))
    if settings.write_history:
        notifiers.append(HistoryWriter(influx, name=HISTORY_CHANNEL))
    return notifiers


class AlertService:
    """Runs the alert service until a stop event is set.

    Attributes:
        connected: set once the broker has acknowledged the first subscriptions (it stays set
            while the source reconnects by itself).
    """

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
        notifiers = build_notifiers(settings, mqtt=mqtt, influx=influx, published=self.store)
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
        telemetry = [topic for topic in SUBSCRIPTIONS if topic.endswith("/telemetry")]
        source = open_source(
            settings=self._mqtt.model_copy(update={"client_id": self._settings.client_id}),
            subscriptions=[ESTIMATES_FILTER, *(t for t in SUBSCRIPTIONS if t not in telemetry)],
            best_effort=telemetry if self._settings.watch_telemetry else (),
        )
        async with source:
            # The source reconnects by itself; nothing arrives before its first SUBACK.
            while not source.connected:
                with contextlib.suppress(TimeoutError):
                    await source.wait_connected(timeout_s=_CONNECT_WAIT_S)
            self.connected.set()
            _log.info(kv("alerts_mqtt_connected", host=self._mqtt.host, port=self._mqtt.port))
            async for batch in source.batches(max_messages=_BATCH):
                for message in batch:
                    await self.handle(message.topic, message.payload)
                    # Committed (or refused, counted and logged): the broker may forget it.
                    source.ack(message)

    def _parse(
        self, topic: str, payload: bytes
    ) -> tuple[str, Input | None, Callable[[], list[Observation]]]:
        """The message's kind, the input to record (None for telemetry, which is QoS 0 and
        never redelivered) and the call that judges it."""
        if topic.startswith("osteotel/v1/derived/"):
            estimate = parse_estimate(payload)
            if topic != estimates_topic(estimate.device):
                raise ValueError(f"device {estimate.device} does not match topic {topic}")
            # A catch-up status is kept for nothing: the rules need no history of it.
            kept = None if isinstance(estimate, CatchupInput) else estimate.model_dump()
            source = Input(input_key(estimate), estimate=kept)
            return estimate.kind, source, lambda: self.rules.estimate(estimate)
        parsed = parse_topic(topic)
        if parsed.kind is MessageKind.STATUS:
            status = decode_status(payload, topic_hub=parsed.hub)
            return "status", Input(input_key(status)), lambda: self.rules.status(status)
        assert parsed.device is not None
        if parsed.kind is MessageKind.EVENTS:
            event = decode_event(payload, topic_device=parsed.device)
            return "event", Input(input_key(event)), lambda: self.rules.event(parsed.hub, event)
        frame, _ = decode_frame(payload, topic_device=parsed.device)
        return "telemetry", None, lambda: self.rules.frame(parsed.hub, frame)

    def _apply(self, topic: str, payload: bytes) -> tuple[str, list[Observation] | None]:
        """Judge one message and commit its effect with its key; None for a repeated input.

        The key is looked up before the rules see the input, so a repeat changes neither the
        rules' trajectories nor the stored alerts (the engine checks it again in its
        transaction). Only this worker thread applies inputs, one at a time.
        """
        kind, source, judge = self._parse(topic, payload)
        if source is not None and self.store.applied(source.key):
            return kind, None
        observations = judge()
        if observations or source is not None:
            self.engine.observe(observations, now_ns=time.time_ns(), source=source)
        return kind, observations

    async def handle(self, topic: str, payload: bytes) -> list[Observation]:
        """Judge one MQTT message and commit what the rules observed; the message may be
        acknowledged once this returns.

        Args:
            topic: the message's topic.
            payload: its bytes.

        Returns:
            The observations (empty for a refused message, which is counted and logged, and
            for a repeated input, which is counted).
        """
        try:
            kind, observations = await asyncio.to_thread(self._apply, topic, payload)
        except (Rejected, ValueError, UnknownDeviceError) as exc:
            reason = exc.reason.value if isinstance(exc, Rejected) else type(exc).__name__
            self.metrics.rejected.labels(reason).inc()
            _log.warning(kv("alerts_input_rejected", topic=topic, reason=reason, error=exc))
            return []
        if observations is None:
            self.metrics.repeated.labels(kind).inc()
            _log.info(kv("alerts_input_repeated", topic=topic, kind=kind))
            return []
        self.metrics.inputs.labels(kind).inc()
        if observations:
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
        self.store.forget_applied(before_ns=now_ns - round(APPLIED_KEEP_S * _NS))
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
