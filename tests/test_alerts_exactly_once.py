"""MQTT notifications exactly once across SIGKILLs of `osteotel alerts run`, the webhook at
least once with the same `Idempotency-Key`, and the broker's ordering the read-back relies on.

The decisive kill lands exactly between the MQTT notifier's publish (the broker acknowledged
it and a subscriber received it) and the outbox recording it, without any hook in the
service: the webhook receiver holds the first POST so the test knows the notification's rows
are committed; the broker is paused (SIGSTOP) while the webhook row is recorded; the test
then takes SQLite's write lock, lets the broker go on, and kills the service once the alert
reached the subscriber, while the service waits for the lock to record the MQTT row.
"""

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from test_alerts_crash import (
    DEADLINE_S,
    STEP_NS,
    T0,
    AlertsProcess,
    MqttWatcher,
    _estimate,
    _registry,
    _wait_for,
)
from test_alerts_service import Hook

from alerts.engine import AlertEngine
from alerts.inputs import estimates_topic
from alerts.model import Observation, Severity
from alerts.notify import MqttNotifier, alert_topic, marker_topic, message_id, notification_key
from alerts.store import AlertStore
from apps.services import Mosquitto
from osteotel.settings import MqttSettings

RAISE_KEY = f"1:firing:{T0}"
RESOLVE_KEY = f"1:resolved:{T0 + STEP_NS}"


def _publish(broker: Mosquitto, device: str, step: int) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(estimates_topic(device), _estimate(device, step), qos=1)
        info.wait_for_publish(timeout=DEADLINE_S)
    finally:
        client.disconnect()
        client.loop_stop()


def _outbox(db_path: Path) -> dict[str, list[int | None]]:
    """Each channel's rows' delivery times (None: not delivered), in row order."""
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT channel, delivered_ns FROM outbox ORDER BY id").fetchall()
    channels: dict[str, list[int | None]] = {}
    for channel, delivered_ns in rows:
        channels.setdefault(channel, []).append(delivered_ns)
    return channels


def _all_delivered(db_path: Path, rows: int) -> bool:
    outbox = _outbox(db_path)
    done = [t for times in outbox.values() for t in times if t is not None]
    return len(done) == rows


@contextlib.contextmanager
def _service(broker: Mosquitto, hook: Hook, tmp_path: Path) -> Iterator[tuple[AlertsProcess, str]]:
    tag = os.urandom(3).hex()
    device = f"DX-once-{tag}"
    (tmp_path / "registry.toml").write_text(_registry([device]))
    env = {
        **os.environ,
        "OSTEOTEL_MQTT__HOST": broker.host,
        "OSTEOTEL_MQTT__PORT": str(broker.port),
        "OSTEOTEL_ALERTS__DATA_DIR": str(tmp_path / "data"),
        "OSTEOTEL_ALERTS__REGISTRY": str(tmp_path / "registry.toml"),
        "OSTEOTEL_ALERTS__CLIENT_ID": f"alerts-once-{tag}",
        "OSTEOTEL_ALERTS__WEBHOOK_URLS": json.dumps([hook.url]),
        "OSTEOTEL_ALERTS__MQTT_ALERTS": "true",
        "OSTEOTEL_ALERTS__WRITE_HISTORY": "false",
        "OSTEOTEL_ALERTS__WATCH_TELEMETRY": "false",
        "OSTEOTEL_ALERTS__HTTP_PORT": "0",
        # The tick writes SQLite: it runs at start only, never while the test holds the lock
        # (nothing here needs it: the outbox is also sent at start and when an input raised).
        "OSTEOTEL_ALERTS__TICK_S": "3600",
        "OSTEOTEL_ALERTS__SEND_TIMEOUT_S": "30",
    }
    service = AlertsProcess(env, tmp_path)
    try:
        yield service, device
    finally:
        if service.process is not None and service.process.poll() is None:
            service.process.kill()
            service.process.wait()


def test_mqtt_exactly_once_when_killed_between_publish_and_record(tmp_path: Path) -> None:
    """Killed after the broker acknowledged an alert and a subscriber received it, but before
    the outbox recorded it, the restarted service publishes it no more (exactly once); killed
    while the webhook held a POST, it POSTs again with the same Idempotency-Key. The broker
    runs without persistence: the notifier's session survives the service, not the broker."""
    hook = Hook()
    with Mosquitto(tmp_path / "broker", persistence=False) as broker, _service(
        broker, hook, tmp_path
    ) as (service, device):  # fmt: skip
        db_path = tmp_path / "data" / "alerts.db"
        watcher = MqttWatcher(broker, [device])
        try:
            service.start()
            # 1. The raise: its webhook row is held at the receiver, so its rows are committed.
            hook.gate.clear()
            _publish(broker, device, 0)
            hook.wait_for_posts(1)
            pid = broker.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # the MQTT send that follows cannot connect yet
            try:
                hook.gate.set()
                _wait_for(lambda: _all_delivered(db_path, 1), "the webhook row recorded", service)
                lock = sqlite3.connect(db_path, isolation_level=None)
                lock.execute("BEGIN IMMEDIATE")  # the service can no longer record anything
            finally:
                os.kill(pid, signal.SIGCONT)
            try:
                _wait_for(lambda: watcher.seen()[RAISE_KEY] == 1, "the alert on MQTT", service)
                assert service.process is not None
                assert service.process.poll() is None  # waiting for the lock to record
                outbox = _outbox(db_path)
                assert outbox["mqtt"] == [None]  # published, acknowledged, not recorded
                assert outbox["webhook-0"][0] is not None
                service.kill()
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            service.start()
            _wait_for(lambda: _all_delivered(db_path, 2), "the MQTT row recorded", service)

            # 2. The clear: killed while the webhook holds its POST.
            hook.gate.clear()
            _publish(broker, device, 1)
            hook.wait_for_posts(2)
            service.kill()
            hook.gate.set()
            service.start()
            _wait_for(lambda: _all_delivered(db_path, 4), "every row delivered", service)
            hook.wait_for_posts(3)
            assert service.stop() == 0
        finally:
            watcher.close()
            hook.close()
    assert watcher.seen() == Counter({RAISE_KEY: 1, RESOLVE_KEY: 1})
    assert [[a["key"] for a in body["alerts"]] for body in hook.bodies] == [
        [RAISE_KEY],
        [RESOLVE_KEY],
        [RESOLVE_KEY],
    ]
    assert hook.idempotency_keys == [f'"{key}"' for key in (RAISE_KEY, RESOLVE_KEY, RESOLVE_KEY)]
    assert service.log().count("alerts_mqtt_already_published") == 1


def test_the_marker_comes_after_everything_queued_for_the_session(
    mosquitto: Mosquitto, unique_id: str
) -> None:
    """Mosquitto delivers a persistent session's queue in the order it accepted the messages,
    whatever their topic: a marker the session publishes after reconnecting arrives after
    all 200 alerts another client published on 25 topics while it was away, in their order."""
    client_id = f"alerts-order-{unique_id}"
    topics = [alert_topic(f"DX-{unique_id}-{d}") for d in range(25)]
    received: list[tuple[str, bytes]] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if message.topic in topics or message.topic == marker_topic(client_id):
            received.append((message.topic, bytes(message.payload)))
        if message.topic == marker_topic(client_id):
            done.set()

    def session() -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
            protocol=paho.MQTTv311,
        )  # fmt: skip
        client.on_message = on_message
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        return client

    away = session()
    away.subscribe([(alert_topic("+"), 1), (marker_topic(client_id), 1)])
    assert subscribed.wait(DEADLINE_S)
    away.disconnect()
    away.loop_stop()
    published = [(topics[i % len(topics)], f"alert {i}".encode()) for i in range(200)]
    publisher = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    for topic, body in published:
        publisher.publish(topic, body, qos=1).wait_for_publish(timeout=DEADLINE_S)
    publisher.disconnect()
    publisher.loop_stop()
    back = session()
    back.publish(marker_topic(client_id), b"marker", qos=1)
    assert done.wait(DEADLINE_S)
    back.disconnect()
    back.loop_stop()
    assert received == [*published, (marker_topic(client_id), b"marker")]


def test_webhook_and_email_carry_the_notification_key() -> None:
    """The webhook's Idempotency-Key header is the quoted notification key; the e-mail's
    Message-ID is derived from it; both are the same for every copy of a notification."""
    payload = {"event": "firing", "alerts": [{"key": RAISE_KEY}, {"key": RESOLVE_KEY}]}
    assert notification_key(payload) == f"{RAISE_KEY} {RESOLVE_KEY}"
    left = f"{RAISE_KEY}+{RESOLVE_KEY}".replace(":", ".")
    assert message_id(payload) == f"<{left}@osteotel.alerts>"


def test_a_row_sent_again_publishes_only_what_the_broker_did_not_accept(
    mosquitto: Mosquitto, unique_id: str, tmp_path: Path
) -> None:
    """Sending an undelivered row again (as after a crash before its record) publishes none of
    its alerts a second time; the record of what the broker accepted holds that row's
    notifications only until the row is delivered."""
    devices = [f"DX-{unique_id}-{d}" for d in range(3)]
    watcher = MqttWatcher(mosquitto, devices)
    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    try:
        with AlertStore(tmp_path / "alerts.db") as store:
            engine = AlertEngine(
                store, channels=["mqtt"], grafana_url="http://grafana.test", repeat_s=3600,
                escalate_after_s=600, history=False,
            )  # fmt: skip
            raises = [_raise(device) for device in devices]
            engine.observe(raises, now_ns=T0)
            rows = store.due(now_ns=T0)
            keys = [a["key"] for row in rows for a in row.payload["alerts"]]
            notifier = MqttNotifier(
                settings, client_id=f"alerts-{unique_id}-notify", published=store, timeout_s=10
            )
            for row in rows:
                asyncio.run(notifier.send(row.payload))  # the first time
            for row in rows:
                asyncio.run(notifier.send(row.payload))  # again: nothing is published
            _wait_for_keys(watcher, set(keys))
            accepted = {(a["device"], a["key"]) for row in rows for a in row.payload["alerts"]}
            assert store.published("mqtt") == accepted
            for row in rows:
                store.delivered(row.id, now_ns=T0)
            assert store.published("mqtt") == set()
            # A barrier: one more alert on the same topics arrives after any copy would have.
            barrier = {"event": "firing", "alerts": [{"device": devices[0], "key": "barrier"}]}
            asyncio.run(notifier.send(barrier))
            _wait_for_keys(watcher, {*keys, "barrier"})
    finally:
        watcher.close()
    assert len(keys) == len(devices)
    assert watcher.seen() == Counter({*keys, "barrier"})


def _raise(device: str) -> Observation:
    return Observation(
        device=device, hub="HUB-A", patient="P-7F3A", rule="distraction_force", t_ns=T0,
        trigger=True, clear=False, severity=Severity.WARNING, value=800.0, summary="800 N",
    )  # fmt: skip


def _wait_for_keys(watcher: MqttWatcher, keys: set[str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not keys <= set(watcher.seen()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"MQTT saw {sorted(watcher.seen())}, not all of {sorted(keys)}")
        time.sleep(0.05)
