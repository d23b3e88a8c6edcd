"""`osteotel alerts run` as a real process, SIGKILLed twice mid-stream and restarted, against a
real Mosquitto, a webhook receiver, a real Alertmanager and the MQTT notifier: every alert the
stream should raise is raised once and every notification arrives, as in a run without kills
(on MQTT exactly once; tests/test_alerts_exactly_once.py kills between publish and record).

The stream: three tibia devices, 21 distraction steps each, whose peak force alternates
800 N (a `distraction_force` warning) and 100 N (below the 540 N that clears it), so each
device raises 11 alerts and resolves 10. Before the last third, the first 4 steps of every
device come again, as ingest republishes what it re-derives after its own restart. A raise
applied twice after its clear would open a second alert, so an input that is not recognised
as a repeat shows here as an alert too many.
"""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_alerts_service import Hook

from alerts.inputs import estimates_topic
from alerts.notify import alert_topic
from apps.services import Alertmanager, Mosquitto

REPO = Path(__file__).resolve().parents[1]
S = 1_000_000_000
T0 = 1_793_491_200 * S  # 2026-11-01 00:00 UTC
STEP_NS = 6 * 3600 * S
STEPS = 21
DEVICES = 3
REPUBLISHED = range(4)
DEADLINE_S = 60.0
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wait_for(condition: Callable[[], bool], what: str, service: "AlertsProcess") -> None:
    """Poll `condition` until it holds; fail after `DEADLINE_S` or when the service died."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if condition():
            return
        if service.process is not None and service.process.poll() is not None:
            pytest.fail(f"the alert service exited with {service.process.returncode}:\n"
                        f"{service.log()[-3000:]}")  # fmt: skip
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}\n{service.log()[-3000:]}")


class MqttWatcher:
    """Subscribes to the devices' alert topics and counts the notifications by key."""

    def __init__(self, mosquitto: Mosquitto, devices: list[str]) -> None:
        self.keys: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect(mosquitto.host, mosquitto.port)
        self.client.subscribe([(alert_topic(device), 1) for device in devices])
        self.client.loop_start()
        if not self.subscribed.wait(timeout=DEADLINE_S):
            raise TimeoutError("no SUBACK for the alert topics")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.keys[json.loads(message.payload)["key"]] += 1

    def seen(self) -> Counter[str]:
        with self.lock:
            return Counter(self.keys)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class AlertsProcess:
    """One `osteotel alerts run` process at a time, restarted on the same files."""

    env: dict[str, str] = field(repr=False)
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def log(self) -> str:
        path = self.workdir / "alerts.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def start(self) -> None:
        """Start the service and wait until its subscriptions are acknowledged."""
        self.starts += 1
        with (self.workdir / "alerts.log").open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "apps.cli", "alerts", "run"],
                env=self.env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_for(
            lambda: self.log().count("alerts_mqtt_connected") >= self.starts,
            "the alert service to subscribe",
            self,
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=DEADLINE_S)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class Run:
    """One run's devices, service and receivers."""

    devices: list[str]
    service: AlertsProcess
    webhook: Hook
    mqtt: MqttWatcher
    alertmanager: Alertmanager
    mosquitto: Mosquitto

    def publish(self, steps: range) -> None:
        """Publish these steps of every device, QoS 1, each acknowledged by the broker."""
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        client.connect(self.mosquitto.host, self.mosquitto.port)
        client.loop_start()
        try:
            for i in steps:
                for device in self.devices:
                    info = client.publish(estimates_topic(device), _estimate(device, i), qos=1)
                    info.wait_for_publish(timeout=DEADLINE_S)
        finally:
            client.disconnect()
            client.loop_stop()

    def delivered(self) -> bool:
        """Whether the webhook and MQTT saw as many keys as expected and Alertmanager lists as
        many open alerts as devices (the test then compares them with what is expected)."""
        expected = len(expected_keys())
        return (
            len(self.webhook.keys_seen()) >= expected
            and len(self.mqtt.seen()) >= expected
            and len(self.alertmanager_ids()) >= DEVICES
        )

    def alertmanager_ids(self) -> Counter[str]:
        """The `osteotel_id` of this run's alerts that Alertmanager lists as active, counted."""
        query = urllib.parse.urlencode({"filter": f'device=~"{"|".join(self.devices)}"'})
        with _HTTP.open(f"{self.alertmanager.url}/api/v2/alerts?{query}", timeout=10) as answer:
            listed = json.loads(answer.read())
        return Counter(a["labels"]["osteotel_id"] for a in listed)

    def applied(self) -> int:
        """How many inputs the service has committed so far."""
        path = self.service.workdir / "data" / "alerts.db"
        with contextlib.closing(sqlite3.connect(path)) as db:
            count: int = db.execute("SELECT COUNT(*) FROM applied").fetchone()[0]
        return count

    def alerts(self) -> list[tuple[int, str, str, int]]:
        """Every stored alert: id, device index, state, start time."""
        path = self.service.workdir / "data" / "alerts.db"
        with contextlib.closing(sqlite3.connect(path)) as db:
            rows = db.execute("SELECT id, device, state, started_ns FROM alerts ORDER BY id")
            return [(i, str(self.devices.index(d)), s, t) for i, d, s, t in rows]


def _peak_n(step: int) -> float:
    return 800.0 if step % 2 == 0 else 100.0


def _estimate(device: str, step: int) -> bytes:
    return json.dumps({
        "v": 1, "device": device, "hub": "HUB-A", "patient": f"P-{device[-6:].upper()}",
        "t_ns": T0 + step * STEP_NS, "kind": "step", "f_peak_n": _peak_n(step),
        "k_inst_n_per_mm": 50.0,  # measured: the growth rule judges it, and it is steady
    }).encode()  # fmt: skip


def expected_keys() -> list[str]:
    """Every notification the stream makes, as `alert id:event:t_ns`: alerts are numbered in
    the order their raises arrive (step by step, the devices in turn)."""
    keys = []
    for raise_index, step in enumerate(range(0, STEPS, 2)):
        for d in range(DEVICES):
            alert_id = DEVICES * raise_index + d + 1
            keys.append(f"{alert_id}:firing:{T0 + step * STEP_NS}")
            if step + 1 < STEPS:
                keys.append(f"{alert_id}:resolved:{T0 + (step + 1) * STEP_NS}")
    return keys


# The last raise of each device is still open.
OPEN_IDS = {str(DEVICES * (STEPS // 2) + d + 1) for d in range(DEVICES)}
# id, device index, state, start time: 11 alerts per device, the last one still firing.
EXPECTED_ALERTS = [
    (
        DEVICES * r + d + 1,
        str(d),
        "firing" if step == STEPS - 1 else "resolved",
        T0 + step * STEP_NS,
    )
    for r, step in enumerate(range(0, STEPS, 2))
    for d in range(DEVICES)
]


def _registry(devices: list[str]) -> str:
    lines = ["[alerts]", "silent_after_s = 86400.0", "", "[[hub]]", 'id = "HUB-A"', ""]
    for device in devices:
        lines += [
            "[[device]]", f'id = "{device}"', 'hub = "HUB-A"',
            f'patient = "P-{device[-6:].upper()}"', 'site = "tibia"',
            f'calibration = {{ id = "CAL-{device}", force_gain = 1.0, force_offset_n = 0.0, '
            'disp_gain = 1.0, disp_offset_mm = 0.0 }',
            'range = { force_n = [-2000.0, 2000.0], disp_mm = [-5.0, 120.0] }',
            "protocol = { latency_days = 7, rate_mm_per_day = 1.0, steps_per_day = 4, "
            "target_mm = 50.0 }",
            "",
        ]  # fmt: skip
    return "\n".join(lines)


@contextlib.contextmanager
def _run(
    name: str, mosquitto: Mosquitto, alertmanager: Alertmanager, tmp_path: Path
) -> Iterator[Run]:
    """A fresh service (its own devices, database and client id) and its receivers."""
    tag = os.urandom(3).hex()
    devices = [f"DX-{name}{d}-{tag}" for d in range(DEVICES)]
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "registry.toml").write_text(_registry(devices))
    webhook = Hook()
    mqtt = MqttWatcher(mosquitto, devices)
    env = {
        **os.environ,
        "OSTEOTEL_MQTT__HOST": mosquitto.host,
        "OSTEOTEL_MQTT__PORT": str(mosquitto.port),
        "OSTEOTEL_ALERTS__DATA_DIR": str(workdir / "data"),
        "OSTEOTEL_ALERTS__REGISTRY": str(workdir / "registry.toml"),
        "OSTEOTEL_ALERTS__CLIENT_ID": f"alerts-{name}-{tag}",
        "OSTEOTEL_ALERTS__WEBHOOK_URLS": json.dumps([webhook.url]),
        "OSTEOTEL_ALERTS__ALERTMANAGER_URL": alertmanager.url,
        "OSTEOTEL_ALERTS__MQTT_ALERTS": "true",
        "OSTEOTEL_ALERTS__WRITE_HISTORY": "false",
        "OSTEOTEL_ALERTS__WATCH_TELEMETRY": "false",
        "OSTEOTEL_ALERTS__HTTP_PORT": "0",
        "OSTEOTEL_ALERTS__TICK_S": "0.2",
        "OSTEOTEL_ALERTS__RETRY_MIN_S": "0.2",
    }
    service = AlertsProcess(env, workdir)
    try:
        yield Run(devices, service, webhook, mqtt, alertmanager, mosquitto)
    finally:
        if service.process is not None and service.process.poll() is None:
            service.process.kill()
            service.process.wait()
        mqtt.close()
        webhook.close()


def test_alerts_killed_twice_mid_stream_raise_and_notify_as_without_kills(
    mosquitto: Mosquitto, alertmanager: Alertmanager, tmp_path: Path
) -> None:
    """With two SIGKILLs mid-stream (once a first part's inputs start to be committed, and
    once the backlog queued during the outage is being notified), every alert is raised once
    and every notification key reaches the webhook and MQTT, with at most one extra copy per
    kill on the webhook (with the same Idempotency-Key header) and none on MQTT, and
    Alertmanager lists each open alert once: the same as a run without kills, where each key
    arrives exactly once. Republished steps change nothing in either run."""
    third = STEPS // 3
    with _run("ref", mosquitto, alertmanager, tmp_path) as ref:
        ref.service.start()
        ref.publish(range(2 * third))
        ref.publish(REPUBLISHED)
        ref.publish(range(2 * third, STEPS))
        _wait_for(ref.delivered, "every notification of the run without kills", ref.service)
        assert ref.service.stop() == 0
        assert ref.alerts() == EXPECTED_ALERTS
        assert ref.webhook.keys_seen() == Counter(expected_keys())
        assert ref.mqtt.seen() == Counter(expected_keys())
        assert ref.alertmanager_ids() == Counter(OPEN_IDS)
        assert ref.service.log().count("alerts_input_repeated") == DEVICES * len(REPUBLISHED)

    with _run("kill", mosquitto, alertmanager, tmp_path) as run:
        run.service.start()
        run.publish(range(third))
        _wait_for(lambda: run.applied() >= DEVICES, "the first inputs", run.service)
        run.service.kill()
        before = len(run.webhook.keys_seen())
        assert before < len(expected_keys())
        run.publish(range(third, 2 * third))  # queued by the broker while the service is down
        run.service.start()
        _wait_for(
            lambda: len(run.webhook.keys_seen()) >= before + 4, "the backlog to flow", run.service
        )
        run.service.kill()
        run.publish(REPUBLISHED)
        run.publish(range(2 * third, STEPS))
        run.service.start()
        _wait_for(run.delivered, "every notification of the run with kills", run.service)
        assert run.service.stop() == 0
        assert run.alerts() == ref.alerts() == EXPECTED_ALERTS
        webhook = run.webhook.keys_seen()
        # MQTT exactly once: the notifier reads back what the broker accepted before a kill.
        assert run.mqtt.seen() == Counter(expected_keys())
        assert set(webhook) == set(expected_keys())
        # A kill between a POST and the outbox recording it POSTs that one message again,
        # with the same Idempotency-Key header as the first copy.
        assert webhook.total() - len(webhook) <= 2
        with run.webhook.arrived:
            sent = zip(run.webhook.bodies, run.webhook.idempotency_keys, strict=True)
            headers = [(" ".join(a["key"] for a in b["alerts"]), h) for b, h in sent]
        assert all(header == f'"{keys}"' for keys, header in headers)
        # Alertmanager merges a repeated post by labels: one active alert per open id.
        assert run.alertmanager_ids() == Counter(OPEN_IDS)
        # The republished steps, and whatever was committed but not yet acknowledged at a kill.
        assert run.service.log().count("alerts_input_repeated") >= DEVICES * len(REPUBLISHED)
