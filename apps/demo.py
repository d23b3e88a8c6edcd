"""`osteotel demo`: the whole path on this machine, for a minute, then what landed.

Starts a local Mosquitto and InfluxDB (the same launchers the tests use) and `osteotel ingest`
as its own process, as in production; emulated hubs publish the example registry's devices
with time compressed, plus one payload breaking each of a few contract rules so that the
rejections show; then it prints what InfluxDB holds and writes each device's consolidation
report (PDF) into the work folder's `reports/` (a folder of its own when the work folder is
temporary), printing where.
"""

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from apps.services import InfluxDB, Mosquitto
from devices.emulator.fleet import FleetPlan, run_fleet
from devices.registry import Registry
from osteotel.settings import InfluxSettings, MqttSettings
from osteotel.store.influx import InfluxStore

__all__ = ["EXAMPLE_REGISTRY", "run_demo"]

EXAMPLE_REGISTRY = Path(__file__).resolve().parents[1] / "deploy" / "registry.example.toml"
# Twenty days cover latency and the first two weeks of distraction.
_DEMO_DAYS = 20.0
# 20 Hz still shows each step's relaxation (tau_fast ~1 s needs >= 10 Hz, docs/domain.md) and keeps
# the demo's volume (~3 M samples) within what one ingest process takes in a minute.
_DEMO_RATE_HZ = 20.0
_DEMO_FRAME_SAMPLES = 200
_SETTLE_S = 3.0
_SETTLE_TIMEOUT_S = 120.0


def run_demo(*, duration_s: float, workdir: str | None) -> int:
    """Run the demo for about `duration_s` seconds of publishing; returns the exit status."""
    keep = workdir is not None
    with ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="osteotel-demo-"))
        root = Path(workdir)
        print(f"osteotel demo: servers and data in {root}")
        broker = stack.enter_context(Mosquitto(root / "mosquitto"))
        influx = stack.enter_context(InfluxDB(root / "influxdb"))
        print(f"  mosquitto on {broker.host}:{broker.port}, influxdb at {influx.url}")
        mqtt = MqttSettings(host=broker.host, port=broker.port)
        influx_settings = InfluxSettings(url=influx.url, database="osteotel")
        ingest = stack.enter_context(_ingest_process(root, broker, influx))
        try:
            published = asyncio.run(_publish(mqtt, duration_s))
            print(f"  published {published} messages; waiting for ingest to store them")
            _wait_until_settled(influx_settings, ingest)
        finally:
            ingest.terminate()
            ingest.wait(timeout=30)
        _print_summary(influx_settings)
        print(f"  ingest log: {root / 'ingest.log'}\n  dead letters: {root / 'dead-letter'}")
        # The reports outlive a temporary work folder: a folder of their own unless one is given.
        reports = root / "reports" if keep else Path(tempfile.mkdtemp(prefix="osteotel-demo-"))
        for path in _write_reports(influx_settings, reports):
            print(f"  report: {path}")
    return 0


def _write_reports(settings: InfluxSettings, folder: Path) -> list[Path]:
    """Each example device's consolidation report over the emulated days, one PDF each."""
    from apps.report import DeviceInfo, render_report  # noqa: PLC0415 - matplotlib

    folder.mkdir(parents=True, exist_ok=True)
    end_ns = time.time_ns() + 86_400 * 10**9
    start_ns = end_ns - round((_DEMO_DAYS + 2) * 86_400 * 10**9)
    paths = []
    with InfluxStore(settings) as store:
        for device in Registry.load(EXAMPLE_REGISTRY).devices.values():
            info = DeviceInfo(device.id, device.patient, device.site, device.protocol.steps_per_day)
            path = folder / f"report-{device.id}.pdf"
            render_report(store, [info], start_ns=start_ns, end_ns=end_ns, out=path)
            paths.append(path)
    return paths


def _ingest_process(root: Path, broker: Mosquitto, influx: InfluxDB) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OSTEOTEL_MQTT__HOST": broker.host,
        "OSTEOTEL_MQTT__PORT": str(broker.port),
        "OSTEOTEL_INFLUX__URL": influx.url,
        "OSTEOTEL_INFLUX__DATABASE": "osteotel",
        "OSTEOTEL_INGEST__REGISTRY": str(EXAMPLE_REGISTRY),
        "OSTEOTEL_INGEST__DEAD_LETTER_DIR": str(root / "dead-letter"),
        # The demo's own spool and estimator state: nothing carries over from an earlier run.
        "OSTEOTEL_INGEST__SPOOL_DIR": str(root / "spool"),
        "OSTEOTEL_INGEST__STATE_DIR": str(root / "state"),
    }
    log = (root / "ingest.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "ingest"], env=env, stdout=log, stderr=log
    )


async def _publish(mqtt: MqttSettings, duration_s: float) -> int:
    plan = FleetPlan.from_registry(
        Registry.load(EXAMPLE_REGISTRY),
        days=_DEMO_DAYS,
        speed=_DEMO_DAYS * 86_400 / duration_s,
        end_ns=time.time_ns(),
        seed=1,
        rate_hz=_DEMO_RATE_HZ,
        frame_samples=_DEMO_FRAME_SAMPLES,
        inject_bad_payloads=True,
    )
    return await run_fleet(plan, mqtt=mqtt, progress=True)


def _wait_until_settled(settings: InfluxSettings, ingest: subprocess.Popen[bytes]) -> None:
    """Wait until the stored frame and rejection counts stop changing (bounded)."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    last: tuple[object, ...] | None = None
    stable_since = time.monotonic()
    with InfluxStore(settings) as store:
        while time.monotonic() < deadline and ingest.poll() is None:
            counts = tuple(
                series.values[0][1]
                for series in store.query(
                    "SELECT count(n) FROM frame; SELECT count(detail) FROM rejection"
                )
            )
            if counts != last:
                last, stable_since = counts, time.monotonic()
            elif time.monotonic() - stable_since > _SETTLE_S:
                return
            time.sleep(0.5)


def _print_summary(settings: InfluxSettings) -> None:
    with InfluxStore(settings) as store:
        print("\n  device    samples   frames  force_n min..max      disp_mm min..max")
        frames = {
            series.tags.get("device"): series.values[0][1]
            for series in store.query("SELECT count(n) FROM frame GROUP BY device")
        }
        for series in store.query(
            "SELECT count(force_n), min(force_n), max(force_n), min(disp_mm), max(disp_mm) "
            "FROM raw GROUP BY device"
        ):
            device = series.tags.get("device")
            _, count, f_min, f_max, d_min, d_max = series.values[0]
            print(
                f"  {device:<9} {count:>8} {frames.get(device, 0):>8}  "
                f"{f_min:>8.1f} .. {f_max:<8.1f} {d_min:>7.2f} .. {d_max:<7.2f}"
            )
        print("\n  device    steps fitted  last k_inst N/mm  last tau_slow s  days estimated")
        days = {
            series.tags.get("device"): series.values[0][1]
            for series in store.query("SELECT count(steps_done) FROM daily GROUP BY device")
        }
        for series in store.query(
            "SELECT count(k_inst_n_per_mm), last(k_inst_n_per_mm), last(tau_slow_s) FROM step "
            "WHERE kind = 'step' GROUP BY device"
        ):
            device = series.tags.get("device")
            _, count, k_inst, tau_slow = series.values[0]
            print(
                f"  {device:<9} {count:>12} {k_inst:>17.1f} {tau_slow:>16.1f} "
                f"{days.get(device, 0):>15}"
            )
        for series in store.query("SELECT count(v) FROM event GROUP BY type"):
            print(f"  events {series.tags.get('type')}: {series.values[0][1]}")
        for series in store.query("SELECT count(detail) FROM rejection GROUP BY reason"):
            print(f"  rejected {series.tags.get('reason')}: {series.values[0][1]}")
