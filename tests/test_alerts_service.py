"""End to end: a real Mosquitto, messages published as ingest and hubs publish them, the running
alert service notifies a webhook; and the alert history lands in a real InfluxDB."""

import asyncio
import contextlib
import json
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from alerts.engine import HISTORY_CHANNEL, AlertEngine
from alerts.inputs import estimates_topic
from alerts.model import AlertState, Observation, Severity
from alerts.notify import HistoryWriter
from alerts.outbox import Dispatcher
from alerts.service import AlertService
from alerts.settings import AlertSettings
from alerts.store import AlertStore
from apps.services import InfluxDB, Mosquitto, free_port
from devices.codec import encode_event
from devices.contract import Battery, events_topic
from osteotel.settings import InfluxSettings, MqttSettings

REGISTRY = Path(__file__).parent.parent / "deploy" / "registry.example.toml"
S = 1_000_000_000
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_HELD_MAX_S = 60.0  # the longest a held POST waits (bounded, like every test here)


class Hook:
    """A stdlib HTTP receiver that keeps the JSON bodies POSTed to it and each POST's
    `Idempotency-Key` header; while its `gate` is cleared it answers no POST until it is set
    again (the sender waits, as for a slow receiver)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.idempotency_keys: list[str | None] = []  # each POST's header, as bodies
        self.arrived = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        bodies, arrived, idempotency_keys, gate = (
            self.bodies, self.arrived, self.idempotency_keys, self.gate
        )  # fmt: skip

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with arrived:
                    bodies.append(body)
                    idempotency_keys.append(self.headers.get("Idempotency-Key"))
                    arrived.notify_all()
                gate.wait(timeout=_HELD_MAX_S)
                with contextlib.suppress(OSError):  # the sender may be dead by now
                    self.send_response(200)
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for_posts(self, count: int, timeout_s: float = _HELD_MAX_S) -> None:
        """Wait until `count` POSTs have arrived; raises TimeoutError after `timeout_s`."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.bodies) >= count, timeout_s):
                raise TimeoutError(f"the webhook saw {len(self.bodies)} of {count} POSTs")

    def rules_seen(self) -> set[str]:
        return {a["rule"] for body in self.bodies for a in body["alerts"]}

    def keys_seen(self) -> Counter[str]:
        """Every notification's idempotency key, counted."""
        with self.arrived:
            return Counter(a["key"] for body in self.bodies for a in body["alerts"])

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def wait_for_bodies(self, count: int) -> None:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.bodies) >= count, timeout=30):
                raise TimeoutError(f"webhook saw {len(self.bodies)} of {count} bodies")

    def wait_for(self, rules: set[str]) -> None:
        # A worker thread ignores asyncio.timeout: the condition's own timeout bounds it.
        with self.arrived:
            if not self.arrived.wait_for(lambda: rules <= self.rules_seen(), timeout=30):
                raise TimeoutError(f"webhook saw only {sorted(self.rules_seen())}")


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A webhook receiver on a free loopback port."""
    receiver = Hook()
    yield receiver
    receiver.close()


def test_service_notifies_webhook(
    mosquitto: Mosquitto, hook: Hook, tmp_path: Path, unique_id: str
) -> None:
    """A critical step estimate and a low-battery event on MQTT reach the webhook as alerts."""
    settings = AlertSettings(
        data_dir=tmp_path,
        registry=REGISTRY,
        webhook_urls=[hook.url],
        mqtt_alerts=False,
        write_history=False,
        client_id=f"alerts-{unique_id}",
        http_port=0,
        tick_s=0.2,
        grafana_url="http://grafana.test",
    )
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    service = AlertService(settings=settings, mqtt=mqtt, influx=InfluxSettings())
    now_ns = 1_700_000_000 * S
    step = {
        "v": 1, "device": "DX-0001", "hub": "HUB-A", "patient": "P-7F3A", "t_ns": now_ns,
        "kind": "step", "k_inst_n_per_mm": 80.0, "f_residual_n": 900.0, "f_peak_n": 1250.0,
        "some_future_field": 1,
    }  # fmt: skip
    battery = Battery(device="DX-0002", t_ns=now_ns, pct=12.0)

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        try:
            async with asyncio.timeout(30):
                await service.connected.wait()
                async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
                    await publisher.publish(
                        estimates_topic("DX-0001"), json.dumps(step).encode(), qos=1
                    )
                    await publisher.publish(
                        events_topic("HUB-A", "DX-0002"), encode_event(battery), qos=1
                    )
                await asyncio.to_thread(hook.wait_for, {"distraction_force", "battery_low"})
        finally:
            stop.set()
            await runner

    asyncio.run(scenario())
    alerts = {a["rule"]: a for body in hook.bodies for a in body["alerts"]}
    force = alerts["distraction_force"]
    assert (force["patient"], force["device"], force["severity"]) == (
        "P-7F3A",
        "DX-0001",
        "critical",
    )
    assert force["value"] == 1250.0
    assert force["link"] == "http://grafana.test/d/osteotel-patient?var-device=DX-0001"
    assert alerts["battery_low"]["patient"] == "P-2C91"
    # The state outlives the service: reopen the database as the CLI would.
    with AlertStore(settings.db_path) as store:
        assert {a.rule for a in store.alerts(states=[AlertState.FIRING])} >= {
            "distraction_force",
            "battery_low",
        }


def test_history_reaches_influxdb(influxdb: InfluxDB, influx_db_name: str, tmp_path: Path) -> None:
    """Firing and acknowledging an alert write `alert` and `alert_ack` points to InfluxDB."""
    store = AlertStore(tmp_path / "alerts.db")
    engine = AlertEngine(
        store, channels=[], grafana_url="http://grafana.test", repeat_s=3600, escalate_after_s=600
    )
    t_ns = 1_700_000_000 * S
    [alert] = engine.observe(
        [
            Observation(
                device="DX-0001",
                hub="HUB-A",
                patient="P-7F3A",
                rule="battery_low",
                t_ns=t_ns,
                trigger=True,
                clear=False,
                severity=Severity.WARNING,
                value=15.0,
                summary="battery at 15 %",
            )
        ],
        now_ns=t_ns,
    )
    engine.acknowledge(alert.id, by="Dr Example", note="charger brought", now_ns=t_ns + S)
    influx = InfluxSettings(url=influxdb.url, api="v1", database=influx_db_name)
    dispatcher = Dispatcher(
        store, {HISTORY_CHANNEL: HistoryWriter(influx)}, retry_min_s=1, retry_max_s=10
    )
    assert asyncio.run(dispatcher.deliver_due(now_ns=t_ns + 2 * S)) == 2
    store.close()

    def query(q: str) -> list[list[Any]]:
        url = f"{influxdb.url}/query?" + urllib.parse.urlencode({"db": influx_db_name, "q": q})
        with _HTTP.open(url, timeout=10) as response:
            series = json.loads(response.read())["results"][0]["series"]
        values: list[list[Any]] = series[0]["values"]
        return values

    [[_, value, rule]] = query('SELECT "value", "rule" FROM "alert"')
    assert (value, rule) == (15, "battery_low")
    [[_, by, note]] = query('SELECT "by", "note" FROM "alert_ack"')
    assert (by, note) == ("Dr Example", "charger brought")


def test_service_resubscribes_after_a_broker_restart(hook: Hook, tmp_path: Path) -> None:
    """After its broker restarts, the service reconnects on its own and judges what comes
    next: a second device's step over the warning limit reaches the webhook like the first's."""
    settings = AlertSettings(
        data_dir=tmp_path / "alerts", registry=REGISTRY, webhook_urls=[hook.url],
        mqtt_alerts=False, write_history=False, client_id="alerts-restart", http_port=0,
        tick_s=0.2,
    )  # fmt: skip
    with Mosquitto(tmp_path / "mosquitto") as broker:
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        service = AlertService(settings=settings, mqtt=mqtt, influx=InfluxSettings())

        def step(device: str, patient: str) -> bytes:
            return json.dumps({
                "v": 1, "device": device, "hub": "HUB-A", "patient": patient,
                "t_ns": 1_700_000_000 * S, "kind": "step", "f_peak_n": 800.0,
            }).encode()  # fmt: skip

        async def publish(device: str, patient: str) -> None:
            async with aiomqtt.Client(broker.host, broker.port) as publisher:
                await publisher.publish(estimates_topic(device), step(device, patient), qos=1)

        async def scenario() -> None:
            stop = asyncio.Event()
            runner = asyncio.create_task(service.run(stop))
            try:
                async with asyncio.timeout(60):
                    await service.connected.wait()
                    await publish("DX-0001", "P-7F3A")
                    await asyncio.to_thread(hook.wait_for, {"distraction_force"})
                    await asyncio.to_thread(broker.restart)
                    await publish("DX-0002", "P-2C91")
                    await asyncio.to_thread(hook.wait_for_bodies, 2)
            finally:
                stop.set()
                await runner

        asyncio.run(scenario())
    notified = [(a["device"], a["event"]) for body in hook.bodies for a in body["alerts"]]
    assert notified == [("DX-0001", "firing"), ("DX-0002", "firing")]
