"""Every path a removal decision can take, on a real InfluxDB and the real alert service: an
emulated treatment of a correctly signed device becomes ready; one whose force sensor is
mounted the other way, uncorrected by its calibration, never shows ready -- not in its phase,
its load shares, its consolidation index, its projection, its alerts or its report -- and the
engineers get an info alert that its signs disagree."""

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from alerts.inputs import estimates_topic
from alerts.model import AlertState
from alerts.service import AlertService
from alerts.settings import AlertSettings
from alerts.store import AlertStore
from apps.grafana import build_dashboards, expand
from apps.report import DeviceInfo, render_report
from apps.services import InfluxDB, Mosquitto, free_port
from devices.emulator.generator import generate
from devices.emulator.timeline import DeviceConfig
from devices.registry import Registry
from dsp.estimator import FleetEstimator
from ingest.estimates import estimate_line, estimate_message, feed_event, register_device
from osteotel.settings import InfluxSettings, MqttSettings
from osteotel.store.influx import InfluxStore

DAY_NS = 86_400 * 10**9
START_NS = 1_788_220_800 * 10**9  # 2026-09-01, the osteotomy
END_NS = START_NS + 40 * DAY_NS
GOOD, WRONG = "DX-0101", "DX-0102"
DEVICES = {GOOD: ("P-51AE", "normal"), WRONG: ("P-93D0", "reversed_force_sensor")}
REGISTRY = """
[[hub]]
id = "HUB-A"

""" + "".join(
    f"""
[[device]]
id = "{device}"
hub = "HUB-A"
patient = "{patient}"
site = "tibia"
osteotomy = 2026-09-01
calibration = {{ id = "CAL-{device}" }}
range = {{ force_n = [-3000.0, 3000.0], disp_mm = [-5.0, 120.0], ref_load_n = [0.0, 2500.0] }}
protocol = {{ latency_days = 7, rate_mm_per_day = 1.0, steps_per_day = 4, target_mm = 8.0 }}
"""
    for device, (patient, _) in DEVICES.items()
)


@dataclass
class Treatment:
    """What the fixture ran: the database holding it, the alert service's state, the
    registry."""

    store: InfluxStore
    alerts_db: Path
    registry: Path
    influx_url: str
    database: str


def _emulate(registry: Path) -> tuple[list[bytes], list[tuple[str, bytes]]]:
    """Both devices through the estimator as ingest runs it: the line protocol ingest writes
    for the estimates, and the messages it publishes for the alert service."""
    reg = Registry.load(registry)
    estimator = FleetEstimator()
    lines: list[bytes] = []
    messages: list[tuple[str, bytes]] = []
    for device, (patient, scenario) in DEVICES.items():
        register_device(estimator, reg.devices[device])
        config = DeviceConfig(
            device=device, hub="HUB-A", scenario=scenario, seed=5, rate_hz=10.0,
            frame_samples=100, target_mm=8.0,
        )  # fmt: skip
        for item in generate(config, start_ns=START_NS, end_ns=END_NS):
            if item.frame is not None:
                f = item.frame
                records = estimator.frame(
                    device, f.force_n, f.disp_mm, f.ref_load_n, f.t0_ns, f.rate_hz
                )
            elif item.event is not None:
                records = feed_event(estimator, item.event)
            else:
                continue
            for record in records:
                lines.append(estimate_line("HUB-A", record))
                messages.append(
                    (estimates_topic(device), estimate_message("HUB-A", patient, record))
                )
    return lines, messages


async def _through_the_alert_service(
    service: AlertService, mosquitto: Mosquitto, messages: list[tuple[str, bytes]]
) -> None:
    stop = asyncio.Event()
    runner = asyncio.create_task(service.run(stop))
    try:
        async with asyncio.timeout(120):
            await service.connected.wait()
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
                for topic, payload in messages:
                    await publisher.publish(topic, payload, qos=1)
            # The service has judged everything once its queue is empty and a tick passed.
            await asyncio.sleep(3.0)
    finally:
        stop.set()
        await runner


@pytest.fixture(scope="module")
def treatment(
    influxdb: InfluxDB, mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Treatment]:
    """40 days of both devices (latency, 8 mm of distraction, consolidation to readiness),
    written to a real InfluxDB and judged by the running alert service."""
    workdir = tmp_path_factory.mktemp("clinical")
    registry = workdir / "registry.toml"
    registry.write_text(REGISTRY)
    lines, messages = _emulate(registry)
    database = f"osteotel_test_clinical_{free_port()}"
    settings = InfluxSettings(url=influxdb.url, database=database, api="v1")
    alert_settings = AlertSettings(
        data_dir=workdir, registry=registry, mqtt_alerts=False, write_history=False,
        client_id=f"alerts-clinical-{free_port()}", http_port=0, tick_s=0.2,
        grafana_url="http://grafana.test",
    )  # fmt: skip
    service = AlertService(
        settings=alert_settings,
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        influx=InfluxSettings(),
    )
    asyncio.run(_through_the_alert_service(service, mosquitto, messages))
    with InfluxStore(settings) as store:
        store.ensure_database()
        for k in range(0, len(lines), 2000):
            store.write(b"".join(lines[k : k + 2000]))
        yield Treatment(store, alert_settings.db_path, registry, influxdb.url, database)
        store.query(f'DROP DATABASE "{database}"')


def _column(store: InfluxStore, query: str) -> list[Any]:
    """The last column of a query's rows (the first is the time)."""
    return [row[-1] for s in store.query(query) for row in s.values]


def test_the_correct_device_becomes_ready_and_the_wrong_one_never(treatment: Treatment) -> None:
    """Stored daily phases: the correctly signed device reaches ready; the reversed one stays
    in consolidation with the sign_inconsistent flag on its days."""
    store = treatment.store
    good = _column(store, f"SELECT gained_mm, phase FROM daily WHERE device = '{GOOD}'")
    wrong = _column(store, f"SELECT gained_mm, phase FROM daily WHERE device = '{WRONG}'")
    assert "ready" in good
    assert "consolidation" in wrong
    assert "ready" not in wrong
    flags = _column(store, f"SELECT flags FROM daily WHERE device = '{WRONG}'")
    assert any("sign_inconsistent" in (f or "") for f in flags)


def test_no_share_index_or_projection_of_the_wrong_device_is_usable(
    treatment: Treatment,
) -> None:
    """Every stored share of the reversed device is unusable and flagged; it stores no daily
    load share, consolidation index or projected date, while the correct device does."""
    store = treatment.store
    usable = _column(store, f"SELECT usable FROM load_share WHERE device = '{WRONG}'")
    assert usable
    assert not any(usable)
    shares = _column(store, f"SELECT share FROM load_share WHERE device = '{WRONG}'")
    assert all(s < 0 for s in shares)
    consolidating = "phase = 'consolidation' OR phase = 'ready'"
    for field in ("load_share", "consolidation_index"):
        query = f"SELECT {field} FROM daily WHERE device = '{{}}' AND ({consolidating})"
        assert _column(store, query.format(WRONG)) == []
        assert _column(store, query.format(GOOD))
    projected = _column(store, f"SELECT projected_ready_ns FROM daily WHERE device = '{WRONG}'")
    assert all(p == -1 for p in projected)
    met = _column(store, f"SELECT removal_criterion_met FROM load_share WHERE device = '{WRONG}'")
    assert not any(met)
    assert any(
        _column(store, f"SELECT removal_criterion_met FROM load_share WHERE device = '{GOOD}'")
    )


def test_the_alert_service_follows_the_dsp(treatment: Treatment) -> None:
    """The running alert service raised readiness for the correct device only, and the
    engineers' sign_inconsistent alert for the reversed one only."""
    with AlertStore(treatment.alerts_db) as store:
        alerts = store.alerts()
    by_rule: dict[str, set[str]] = {}
    for alert in alerts:
        if alert.state in (AlertState.FIRING, AlertState.RESOLVED):
            by_rule.setdefault(alert.rule, set()).add(alert.device)
    assert by_rule.get("readiness") == {GOOD}
    assert by_rule.get("sign_inconsistent") == {WRONG}


def test_the_report_never_shows_the_wrong_device_ready(treatment: Treatment) -> None:
    """The report of the reversed device, drawn from the real InfluxDB and read back with
    pdftotext, marks its shares as not usable and gives no removal date."""
    reg = Registry.load(treatment.registry)
    device = reg.devices[WRONG]
    info = DeviceInfo(device.id, device.patient, device.site, device.protocol.steps_per_day)
    out = treatment.registry.parent / "wrong.pdf"
    render_report(treatment.store, [info], start_ns=START_NS, end_ns=END_NS, out=out)
    text = subprocess.run(
        ["pdftotext", str(out), "-"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert "sign_inconsistent" in text
    assert "no projection" in text.lower()
    assert "ready" not in text.lower().replace("not ready", "")


def test_messages_are_json(treatment: Treatment) -> None:
    """(Sanity of the fixture) the database holds both devices' daily records."""
    counts = {
        device: len(
            _column(treatment.store, f"SELECT gained_mm FROM daily WHERE device = '{device}'")
        )
        for device in DEVICES
    }
    assert all(n >= 30 for n in counts.values()), json.dumps(counts)


@pytest.mark.parametrize(
    "panel",
    ["Load share (removal below 10 %)", "Consolidation index", "Projected readiness"],
    ids=["load_share", "consolidation_index", "projected_readiness"],
)
def test_the_patient_board_shows_nothing_of_the_wrong_device(
    treatment: Treatment, panel: str
) -> None:
    """The patient board's load share, index and projection panels, expanded as Grafana does
    and run on the real InfluxDB, show the correct device's values and none of the reversed
    one's (its index only the 0 of distraction, no date)."""
    [board] = [b for b in build_dashboards() if b.uid == "osteotel-patient"]
    # The panel's first query (the load share's B draws the unusable tests apart, below).
    [query] = [q for q in board.queries if q.panel == panel and q.ref_id == "A"]
    values = {}
    for device in DEVICES:
        text = expand(
            query.influxql, start_ns=START_NS, end_ns=END_NS,
            variables={"hub": ["HUB-A"], "patient": ["$__all"], "device": [device]},
        )  # fmt: skip
        values[device] = [
            v
            for s in treatment.store.query(text, epoch="ms")
            for row in s.values
            for v in row[1:]
            if v is not None
        ]
    assert any(v > 0 for v in values[GOOD])
    assert all(v <= 0 for v in values[WRONG])


def test_the_load_share_panel_marks_the_wrong_devices_tests_apart(treatment: Treatment) -> None:
    """The load-share panel's second series holds every test of the reversed device with its
    reason (sign_inconsistent from the first that saw the sign on), and none of the correct
    device's usable ones."""
    [board] = [b for b in build_dashboards() if b.uid == "osteotel-patient"]
    [query] = [
        q for q in board.queries if q.panel == "Load share (removal below 10 %)" and q.ref_id == "B"
    ]
    rows = {}
    for device in DEVICES:
        text = expand(
            query.influxql, start_ns=START_NS, end_ns=END_NS,
            variables={"hub": ["HUB-A"], "patient": ["$__all"], "device": [device]},
        )  # fmt: skip
        rows[device] = [
            dict(zip(s.columns, row, strict=True))
            for s in treatment.store.query(text, epoch="ms")
            for row in s.values
        ]
    assert len(rows[WRONG]) >= 30
    # Each with its reason; sign_inconsistent once its steps have shown the sign, and held.
    assert all(r["flags"] or r["status"] != "ok" for r in rows[WRONG])
    signed = ["sign_inconsistent" in (r["flags"] or "") for r in rows[WRONG]]
    assert signed[-1]
    assert all(signed[signed.index(True) :])
    assert all(r["flags"] or r["status"] != "ok" for r in rows[GOOD])
