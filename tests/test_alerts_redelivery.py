"""A repeated input changes nothing: the engine's own check on a real SQLite file, the keys that
identify an input, and the service's handling of a redelivered estimate, before and after a
restart (no broker needed: `AlertService.handle` is what the MQTT loop calls)."""

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from alerts.engine import AlertEngine
from alerts.inputs import estimates_topic, input_key, parse_estimate
from alerts.model import AlertState, Input, Observation, Severity
from alerts.service import AlertService
from alerts.settings import AlertSettings
from alerts.store import AlertStore
from devices.contract import Battery, HubStatus
from osteotel.settings import InfluxSettings, MqttSettings

REGISTRY = Path(__file__).parent.parent / "deploy" / "registry.example.toml"
S = 1_000_000_000
T0 = 1_700_000_000 * S


def _engine(path: Path) -> AlertEngine:
    return AlertEngine(
        AlertStore(path),
        channels=["webhook"],
        grafana_url="http://grafana.test",
        repeat_s=3600.0,
        escalate_after_s=600.0,
    )


def _force(t_s: int, *, trigger: bool) -> Observation:
    return Observation(
        device="DX-0001", hub="HUB-A", patient="P-7F3A", rule="distraction_force",
        t_ns=T0 + t_s * S, trigger=trigger, clear=not trigger, severity=Severity.WARNING,
        value=800.0 if trigger else 100.0, summary="test",
    )  # fmt: skip


def _rows(path: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        count: int = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return count


def test_the_engine_applies_an_input_once(tmp_path: Path) -> None:
    """The same input observed twice raises one alert; the second adds no audit line, no
    outbox row."""
    path = tmp_path / "a.db"
    engine = _engine(path)
    source = Input("estimate/DX-0001/step/1")
    [alert] = engine.observe([_force(0, trigger=True)], now_ns=T0, source=source)
    # firing and notified_firing; the webhook's row and the history line
    assert (_rows(path, "audit"), _rows(path, "outbox"), _rows(path, "applied")) == (2, 2, 1)
    assert engine.observe([_force(0, trigger=True)], now_ns=T0 + S, source=source) == []
    assert [a.id for a in engine.store.alerts()] == [alert.id]
    assert (_rows(path, "audit"), _rows(path, "outbox"), _rows(path, "applied")) == (2, 2, 1)


def test_a_redelivered_raise_and_clear_raise_nothing_again(tmp_path: Path) -> None:
    """A raise and its clear delivered again after both were applied leave the one resolved
    alert as it was: no second alert, no notification (without keys, the raise would open a
    new alert)."""
    path = tmp_path / "a.db"
    engine = _engine(path)
    raise_, clear = Input("estimate/DX-0001/step/1"), Input("estimate/DX-0001/step/2")
    engine.observe([_force(0, trigger=True)], now_ns=T0, source=raise_)
    engine.observe([_force(1, trigger=False)], now_ns=T0 + S, source=clear)
    assert engine.observe([_force(0, trigger=True)], now_ns=T0 + 2 * S, source=raise_) == []
    assert engine.observe([_force(1, trigger=False)], now_ns=T0 + 3 * S, source=clear) == []
    [alert] = engine.store.alerts()
    assert alert.state is AlertState.RESOLVED
    webhook = [item for item in engine.store.due(now_ns=2**62) if item.channel == "webhook"]
    assert [item.payload["event"] for item in webhook] == ["firing", "resolved"]
    keys = [a["key"] for item in webhook for a in item.payload["alerts"]]
    assert keys == [f"{alert.id}:firing:{T0}", f"{alert.id}:resolved:{T0 + S}"]


def test_an_input_without_observations_is_recorded(tmp_path: Path) -> None:
    """An input the rules say nothing about is still recorded, with its estimate for replay."""
    engine = _engine(tmp_path / "a.db")
    estimate = {"v": 1, "device": "DX-0001", "hub": "HUB-A", "patient": "P-7F3A", "t_ns": T0,
                "kind": "step"}  # fmt: skip
    assert engine.observe([], now_ns=T0, source=Input("k", estimate=estimate)) == []
    assert engine.store.applied("k")
    assert engine.store.inputs() == [estimate]
    assert engine.observe([], now_ns=T0, source=Input("k", estimate=estimate)) == []
    assert engine.store.inputs() == [estimate]


def test_old_keys_are_forgotten(tmp_path: Path) -> None:
    """Keys applied before the cut are dropped, newer ones kept."""
    engine = _engine(tmp_path / "a.db")
    engine.observe([], now_ns=T0, source=Input("old"))
    engine.observe([], now_ns=T0 + 10 * S, source=Input("new"))
    assert engine.store.forget_applied(before_ns=T0 + 5 * S) == 1
    assert (engine.store.applied("old"), engine.store.applied("new")) == (False, True)


def _estimate(kind: str, **fields: Any) -> bytes:
    body = {"v": 1, "device": "DX-0001", "hub": "HUB-A", "patient": "P-7F3A", "t_ns": T0,
            "kind": kind, **fields}  # fmt: skip
    return json.dumps(body).encode()


def test_input_keys() -> None:
    """Keys name the device, kind (and a quality record's channel) and time of an estimate,
    the device, type and time of an event, the hub, state and time of a hub status."""
    keys = [
        input_key(parse_estimate(_estimate("step", f_peak_n=800.0))),
        input_key(parse_estimate(_estimate("probe"))),
        input_key(parse_estimate(_estimate("quality", channel="force"))),
        input_key(parse_estimate(_estimate("quality", channel="disp"))),
        input_key(parse_estimate(_estimate("daily", phase="distraction"))),
        input_key(Battery(device="DX-0001", t_ns=T0, pct=12.0)),
        input_key(HubStatus(hub="HUB-A", online=False, t_ns=T0)),
    ]
    assert keys == [
        f"estimate/DX-0001/step/{T0}",
        f"estimate/DX-0001/probe/{T0}",
        f"estimate/DX-0001/quality/force/{T0}",
        f"estimate/DX-0001/quality/disp/{T0}",
        f"estimate/DX-0001/daily/{T0}",
        f"event/DX-0001/battery/{T0}",
        f"status/HUB-A/offline/{T0}",
    ]
    # The same estimate with other values (a re-derivation) is the same input.
    assert input_key(parse_estimate(_estimate("step", f_peak_n=1.0))) == keys[0]


def _service(tmp_path: Path) -> AlertService:
    settings = AlertSettings(
        data_dir=tmp_path, registry=REGISTRY, webhook_urls=["http://127.0.0.1:9/unused"],
        mqtt_alerts=False, write_history=False, http_port=0,
    )  # fmt: skip
    return AlertService(settings=settings, mqtt=MqttSettings(), influx=InfluxSettings())


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "after-restart"])
def test_the_service_skips_a_redelivered_estimate(tmp_path: Path, restart: bool) -> None:
    """High, low, high peak forces raise two distraction_force alerts; all three delivered
    again (in the same process, or after a restart that replays the stored estimates) raise
    nothing, notify nothing, are counted as repeats and leave the stored estimates as they were."""
    topic = estimates_topic("DX-0001")
    stream = [
        _estimate("step", t_ns=T0 + i * 3600 * S, f_peak_n=peak)
        for i, peak in enumerate([800.0, 100.0, 800.0])
    ]
    service = _service(tmp_path)

    def handle_all(target: AlertService) -> list[list[Observation]]:
        async def run() -> list[list[Observation]]:
            return [await target.handle(topic, payload) for payload in stream]

        return asyncio.run(run())

    assert [len(o) for o in handle_all(service)] == [1, 1, 1]
    outbox_before = _rows(service.store.path, "outbox")
    if restart:
        service.store.close()
        service = _service(tmp_path)
    assert handle_all(service) == [[], [], []]
    repeated = service.metrics.registry.get_sample_value(
        "osteotel_alerts_repeated_total", {"kind": "step"}
    )
    assert repeated == 3
    alerts = service.store.alerts()
    assert [(a.rule, a.state) for a in alerts] == [
        ("distraction_force", AlertState.FIRING),
        ("distraction_force", AlertState.RESOLVED),
    ]
    assert _rows(service.store.path, "outbox") == outbox_before == 3
    assert len(service.store.inputs()) == 3
    service.store.close()
