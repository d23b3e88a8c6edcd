"""Draw the report pictures of docs/: two emulated treatments, weeks long, through the
estimator as ingest runs it and the alert rules and engine as the alert service runs them,
into a throw-away InfluxDB, then `osteotel report` as PNG.

    PYTHONPATH=$PWD .venv/bin/python docs/pictures/make.py

A correctly signed normal healer (8 mm, to readiness) and the same patient with the force
sensor mounted the other way and not corrected by its calibration (`reversed_force_sensor`).
"""

import tempfile
from pathlib import Path

from alerts.engine import HISTORY_CHANNEL, AlertEngine
from alerts.inputs import parse_estimate
from alerts.rules import RuleBook
from alerts.store import AlertStore
from apps.report import DeviceInfo, render_report
from apps.services import InfluxDB
from devices.emulator.generator import generate
from devices.emulator.timeline import DeviceConfig
from devices.registry import Calibration, Device, Hub, Protocol, Registry, SensorRange
from dsp.estimator import FleetEstimator
from ingest.estimates import estimate_line, estimate_message, feed_event, register_device
from ingest.records import event_lines, frame_lines
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore

HERE = Path(__file__).resolve().parent
DAY_NS = 86_400 * 10**9
START_NS = 1_788_220_800 * 10**9  # 2026-09-01, the osteotomy
END_NS = START_NS + 45 * DAY_NS
PICTURES = {"report-normal.png": "normal", "report-reversed-sensor.png": "reversed_force_sensor"}


def _device(n: int) -> Device:
    device = f"DX-010{n}"
    return Device(
        id=device, hub="HUB-A", patient=f"P-00{n}A", site="tibia",
        calibration=Calibration(id=f"CAL-{device}"),
        range=SensorRange(force_n=(-3000.0, 3000.0), disp_mm=(-5.0, 120.0)),
        protocol=Protocol(target_mm=8.0),
    )  # fmt: skip


def main() -> None:
    """Emulate, judge, store and draw both pictures."""
    devices = {n: _device(n) for n in range(1, len(PICTURES) + 1)}
    registry = Registry(
        hubs={"HUB-A": Hub(id="HUB-A")}, devices={d.id: d for d in devices.values()}
    )
    with tempfile.TemporaryDirectory() as tmp, InfluxDB(Path(tmp) / "influxdb") as influx:
        settings = InfluxSettings(url=influx.url, database="pictures", api="v1")
        rules = RuleBook(registry, now_ns=START_NS)
        engine = AlertEngine(
            AlertStore(Path(tmp) / "alerts.db"), channels=[], grafana_url="http://grafana.test",
            repeat_s=3600.0, escalate_after_s=600.0,
        )  # fmt: skip
        with InfluxStore(settings) as store:
            store.ensure_database()
            for n, (name, scenario) in enumerate(PICTURES.items(), start=1):
                device = devices[n]
                config = DeviceConfig(
                    device=device.id, hub="HUB-A", scenario=scenario, seed=5, rate_hz=10.0,
                    frame_samples=100, target_mm=8.0,
                )  # fmt: skip
                estimator = FleetEstimator()
                register_device(estimator, device)
                lines = []
                observations = []
                for item in generate(config, start_ns=START_NS, end_ns=END_NS):
                    if item.frame is not None:
                        f = item.frame
                        lines.append(frame_lines("HUB-A", f, "json"))
                        records = estimator.frame(
                            device.id, f.force_n, f.disp_mm, f.ref_load_n, f.t0_ns, f.rate_hz
                        )
                    elif item.event is not None:
                        lines.append(event_lines("HUB-A", item.event))
                        records = feed_event(estimator, item.event)
                        observations += rules.event("HUB-A", item.event)
                    else:
                        continue
                    for record in records:
                        lines.append(estimate_line("HUB-A", record))
                        message = estimate_message("HUB-A", device.patient, record)
                        observations += rules.estimate(parse_estimate(message))
                # The engine stamps each history point with its observation's own time.
                engine.observe(observations, now_ns=END_NS)
                lines += [
                    item.payload["lines"].encode()
                    for item in engine.store.due(now_ns=2**62, limit=1_000_000)
                    if item.channel == HISTORY_CHANNEL
                ]
                for k in range(0, len(lines), 2000):
                    store.write(b"".join(lines[k : k + 2000]))
                info = DeviceInfo(device.id, device.patient, "tibia", 4)
                render_report(store, [info], start_ns=START_NS, end_ns=END_NS, out=HERE / name)
                print(HERE / name)
        engine.store.close()


if __name__ == "__main__":
    main()
