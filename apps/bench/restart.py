"""Restart to ready, with a checkpoint and without (a rebuild of every device from InfluxDB).

`--devices` emulated devices (`normal` scenario, 10 Hz, 100-sample frames) with `--days` of
treatment each (osteotomy included: the first 7 days are latency) are written straight into a
fresh InfluxDB as ingest writes them (`raw`, `frame`, `event`; no MQTT). Then, against a fresh
Mosquitto, `osteotel ingest` starts twice on that store:

1. **rebuild**: no checkpoint, so every device is rebuilt from its stored data before ingest
   is ready; a graceful stop then writes a checkpoint;
2. **restart**: with that checkpoint, nothing to catch up: process start, numba's cached
   kernels, the MQTT connection and a query per device. This is the baseline of the run.

Each clock runs from the process's start to its first `/readyz` 200. The rebuild's throughput
is the device-days read per second over what the rebuild takes beyond the restart, and the
samples per second that ingest's own `osteotel_ingest_catchup_seconds` gives.
"""

import argparse
import tempfile
import time
from pathlib import Path

from apps.bench.processes import IngestProcess, device_ids, write_registry
from apps.services import InfluxDB, Mosquitto
from devices.emulator.generator import generate
from devices.emulator.timeline import DeviceConfig
from ingest.records import event_lines, frame_lines
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore

__all__ = ["configure", "run"]

_NS_PER_DAY = 86_400 * 1_000_000_000
_RATE_HZ = 10.0
_WRITE_LINES = 50_000  # lines per write while filling the store


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of `osteotel bench restart`."""
    parser.add_argument("--devices", type=int, default=10, help="devices (default 10)")
    parser.add_argument("--days", type=float, default=14.0, help="days each (default 14)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per phase (default 600)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default temp)")


def _fill(store: InfluxStore, ids: list[tuple[str, str]], days: float) -> tuple[int, int]:
    """Write every device's emulated data; returns the (frames, samples) stored."""
    end_ns = time.time_ns() - 3_600_000_000_000  # an hour ago: nothing in ingest's future
    start_ns = end_ns - round(days * _NS_PER_DAY)
    frames = samples = 0
    for number, (hub, device) in enumerate(ids):
        config = DeviceConfig(device=device, hub=hub, seed=number + 1, rate_hz=_RATE_HZ)
        lines: list[bytes] = []
        seen: set[tuple[int, int]] = set()  # the emulator's transport sends a few twice
        for item in generate(config, start_ns=start_ns, end_ns=end_ns):
            if item.frame is not None:
                lines.append(frame_lines(hub, item.frame, "json"))
                if (item.frame.seq, item.frame.t0_ns) not in seen:
                    seen.add((item.frame.seq, item.frame.t0_ns))
                    frames, samples = frames + 1, samples + item.frame.n
            elif item.event is not None:
                lines.append(event_lines(hub, item.event))
            if len(lines) * 100 >= _WRITE_LINES:
                store.write(b"".join(lines))
                lines.clear()
        if lines:
            store.write(b"".join(lines))
    return frames, samples


def _ready_s(ingest: IngestProcess) -> float:
    started = time.monotonic()
    ingest.start()  # returns at the first /readyz 200
    return time.monotonic() - started


def run(args: argparse.Namespace) -> dict[str, object]:
    """Fill a store, then time a rebuild and a restart; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="osteotel-bench-restart-") as temporary:
        workdir = args.workdir or Path(temporary)
        ids = device_ids(args.devices)
        registry = workdir / "registry.toml"
        write_registry(registry, ids)
        with Mosquitto(workdir / "mosquitto") as broker, InfluxDB(workdir / "influxdb") as influx:
            settings = InfluxSettings(url=influx.url, database="bench", api="v1")
            with InfluxStore(settings) as store:
                store.ensure_database()
                frames, samples = _fill(store, ids, args.days)
            ingest = IngestProcess(
                workdir / "ingest",
                processes=1,
                mqtt=(broker.host, broker.port),
                influx_url=influx.url,
                database="bench",
                registry=registry,
            )
            try:
                rebuild_s = _ready_s(ingest)
                metrics = {name: value for name, _, value in ingest.metrics()}
                ingest.stop()
                restart_s = _ready_s(ingest)
                restarted = {name: value for name, _, value in ingest.metrics()}
            finally:
                ingest.stop()
    caught_up_s = metrics["osteotel_ingest_catchup_seconds"]
    rebuilt_samples = metrics["osteotel_ingest_catchup_samples_total"]
    device_days = args.devices * args.days
    return {
        "devices": args.devices,
        "days": args.days,
        "frames": frames,
        "samples": samples,
        "rebuild_ready_s": rebuild_s,
        "rebuild_samples": round(rebuilt_samples),
        "rebuild_catchup_s": caught_up_s,
        "rebuild_samples_per_s": rebuilt_samples / caught_up_s if caught_up_s else 0.0,
        "rebuild_device_days_per_s": device_days / max(rebuild_s - restart_s, 1e-9),
        "restart_ready_s": restart_s,
        "restart_samples": round(restarted["osteotel_ingest_catchup_samples_total"]),
    }
