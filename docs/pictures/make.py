"""Draw the report pictures of docs/: two emulated treatments, weeks long, through the
estimator as ingest runs it, into a throw-away InfluxDB, then `osteotel report` as PNG.

    .venv/bin/python docs/pictures/make.py

A correctly signed normal healer (8 mm, to readiness) and the same patient with the force
sensor mounted the other way and not corrected by its calibration (`reversed_force_sensor`).
"""

import tempfile
from pathlib import Path

from apps.report import DeviceInfo, render_report
from apps.services import InfluxDB
from devices.emulator.generator import generate
from devices.emulator.timeline import DeviceConfig
from devices.registry import Calibration, Device, Protocol, SensorRange
from dsp.estimator import FleetEstimator
from ingest.estimates import estimate_line, feed_event, register_device
from ingest.records import event_lines, frame_lines
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore

HERE = Path(__file__).resolve().parent
DAY_NS = 86_400 * 10**9
START_NS = 1_788_220_800 * 10**9  # 2026-09-01, the osteotomy
END_NS = START_NS + 45 * DAY_NS
PICTURES = {"report-normal.png": "normal", "report-reversed-sensor.png": "reversed_force_sensor"}


def main() -> None:
    """Emulate, store and draw both pictures."""
    with tempfile.TemporaryDirectory() as tmp, InfluxDB(Path(tmp) / "influxdb") as influx:
        settings = InfluxSettings(url=influx.url, database="pictures", api="v1")
        with InfluxStore(settings) as store:
            store.ensure_database()
            for n, (name, scenario) in enumerate(PICTURES.items(), start=1):
                device = f"DX-010{n}"
                config = DeviceConfig(
                    device=device, hub="HUB-A", scenario=scenario, seed=5, rate_hz=10.0,
                    frame_samples=100, target_mm=8.0,
                )  # fmt: skip
                estimator = FleetEstimator()
                register_device(
                    estimator,
                    Device(
                        id=device, hub="HUB-A", patient=f"P-00{n}A", site="tibia",
                        calibration=Calibration(id=f"CAL-{device}"),
                        range=SensorRange(force_n=(-3000.0, 3000.0), disp_mm=(-5.0, 120.0)),
                        protocol=Protocol(target_mm=8.0),
                    ),
                )  # fmt: skip
                lines = []
                for item in generate(config, start_ns=START_NS, end_ns=END_NS):
                    if item.frame is not None:
                        f = item.frame
                        lines.append(frame_lines("HUB-A", f, "json"))
                        records = estimator.frame(
                            device, f.force_n, f.disp_mm, f.ref_load_n, f.t0_ns, f.rate_hz
                        )
                    elif item.event is not None:
                        lines.append(event_lines("HUB-A", item.event))
                        records = feed_event(estimator, item.event)
                    else:
                        continue
                    lines += [estimate_line("HUB-A", r) for r in records]
                for k in range(0, len(lines), 2000):
                    store.write(b"".join(lines[k : k + 2000]))
                info = DeviceInfo(device, f"P-00{n}A", "tibia", 4)
                render_report(store, [info], start_ns=START_NS, end_ns=END_NS, out=HERE / name)
                print(HERE / name)


if __name__ == "__main__":
    main()
