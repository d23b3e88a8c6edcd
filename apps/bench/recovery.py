"""InfluxDB outage under a live stream: how long ingest takes to store directly again.

One device publishes a 50-sample frame every `1 / --rate-hz` s (QoS 1) into a fresh Mosquitto;
one `osteotel ingest` stores into a fresh InfluxDB. After `--warm-s` the InfluxDB process is
stopped (SIGTERM) for `--outage-s`, then started again; `InfluxDB.start` returns once `/ping`
answers (probed every 50 ms), and that is the clock's zero. From there:

- `recovery_spool_empty_s`: until ingest's `/metrics` shows `osteotel_ingest_spool_batches 0`
  (read every 50 ms);
- `recovery_live_stored_s`: until the first frame published after that is in InfluxDB
  (`SELECT max(seq) FROM frame`, read every 50 ms): storing has resumed for new data;
- `ingest_store_recovery_s`: ingest's own figure, `osteotel_ingest_store_recovery_seconds`
  (sum over count of the histogram; NaN when the build does not expose it).

The stream goes on for `--tail-s` after the outage; the run then checks that every published
frame is in InfluxDB (`frames_published`, `frames_in_influx`). No baseline runs beside it: the
figure to compare with is the one measured before the change (docs/ingest.md, "Outages").
"""

import argparse
import math
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from apps.bench.processes import IngestProcess, device_ids, wait, write_registry

__all__ = ["configure", "run"]

_POLL_S = 0.05
_FRAME_SAMPLES = 50


def configure(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--outage-s", type=float, default=15.0, help="InfluxDB away, s (15)")
    parser.add_argument("--rate-hz", type=float, default=10.0, help="frames per second (10)")
    parser.add_argument("--warm-s", type=float, default=3.0, help="stream before the outage (3)")
    parser.add_argument("--tail-s", type=float, default=3.0, help="stream after recovery (3)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="bound on each wait (120)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default temp)")


class _Stream:
    """Publishes one device's frames at a fixed rate from a thread until stopped."""

    def __init__(self, host: str, port: int, hub: str, device: str, rate_hz: float) -> None:
        import paho.mqtt.client as paho  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-recovery-hub")
        self._client.connect(host, port)
        self._client.loop_start()
        self._hub, self._device, self._rate_hz = hub, device, rate_hz
        self.published = 0  # frames the broker acknowledged; seq runs 0..published-1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-recovery-stream")

    def _run(self) -> None:
        from devices.codec import encode_frame_json  # noqa: PLC0415
        from devices.contract import Frame, telemetry_topic  # noqa: PLC0415

        rng = np.random.default_rng(3)
        period_s = 1.0 / self._rate_hz
        # Samples in the recent past, frames back to back: within the contract's skew rules.
        t0_ns = time.time_ns() - 3_600_000_000_000
        frame_ns = round(_FRAME_SAMPLES / 100.0 * 1e9)
        topic = telemetry_topic(self._hub, self._device)
        next_s = time.monotonic()
        seq = 0
        while not self._stop.is_set():
            frame = Frame(
                device=self._device, seq=seq, t0_ns=t0_ns + seq * frame_ns, rate_hz=100.0,
                force_n=rng.normal(150.0, 30.0, _FRAME_SAMPLES),
                disp_mm=rng.uniform(10.0, 11.0, _FRAME_SAMPLES),
            )  # fmt: skip
            self._client.publish(topic, encode_frame_json(frame), 1).wait_for_publish(10)
            seq += 1
            self.published = seq
            next_s += period_s
            self._stop.wait(max(0.0, next_s - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._client.loop_stop()
        self._client.disconnect()


def _max_seq(url: str, database: str) -> int:
    from osteotel.errors import StoreError  # noqa: PLC0415
    from osteotel.settings import InfluxSettings  # noqa: PLC0415
    from osteotel.store.influx import InfluxStore  # noqa: PLC0415

    settings = InfluxSettings(url=url, database=database, api="v1", timeout_s=2.0)
    try:
        with InfluxStore(settings) as store:
            series = store.query("SELECT max(seq), count(seq) FROM frame")
    except StoreError:
        return -1
    # max() is null while the first frame's point is not yet readable: not stored yet.
    value = series[0].values[0][1] if series and series[0].values else None
    return -1 if value is None else int(value)


def _frames_in_influx(url: str, database: str) -> int:
    from osteotel.settings import InfluxSettings  # noqa: PLC0415
    from osteotel.store.influx import InfluxStore  # noqa: PLC0415

    with InfluxStore(InfluxSettings(url=url, database=database, api="v1")) as store:
        series = store.query("SELECT count(seq) FROM frame")
    return int(series[0].values[0][1]) if series and series[0].values else 0


def _metric(ingest: IngestProcess, name: str) -> float:
    values = [value for sample, _, value in ingest.metrics() if sample == name]
    return values[0] if values else math.nan


def run(args: argparse.Namespace) -> dict[str, object]:
    """Stop InfluxDB under a stream, start it again, and time ingest's way back."""
    with tempfile.TemporaryDirectory(prefix="osteotel-bench-recovery-") as temporary:
        workdir = args.workdir or Path(temporary)
        return _run(args, workdir)


def _run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    from apps.services import InfluxDB, Mosquitto  # noqa: PLC0415

    database = "bench_recovery"
    ids = device_ids(1)
    registry = workdir / "registry.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    write_registry(registry, ids)
    timeout_s = args.timeout_s
    with Mosquitto(workdir / "broker") as broker, InfluxDB(workdir / "influxdb") as influx:
        ingest = IngestProcess(
            workdir / "ingest",
            processes=1,
            mqtt=(broker.host, broker.port),
            influx_url=influx.url,
            database=database,
            registry=registry,
        )
        ingest.start()
        stream = _Stream(broker.host, broker.port, *ids[0], args.rate_hz)
        try:
            stream.start()
            wait(lambda: _max_seq(influx.url, database) >= 0, "the first frame", timeout_s)
            time.sleep(args.warm_s)
            influx.stop()
            time.sleep(args.outage_s)
            influx.start()  # returns once /ping answers
            answered_s = time.monotonic()

            def spool_empty() -> bool:
                return _metric(ingest, "osteotel_ingest_spool_batches") == 0

            wait(spool_empty, "the spool to empty", timeout_s, poll_s=_POLL_S)
            empty_s = time.monotonic()
            live_seq = stream.published  # the next frame is published after the spool emptied

            def live_stored() -> bool:
                return _max_seq(influx.url, database) >= live_seq

            wait(live_stored, "a frame published after recovery", timeout_s, poll_s=_POLL_S)
            live_s = time.monotonic()
            time.sleep(args.tail_s)
        finally:
            stream.stop()
        published = stream.published
        wait(
            lambda: _frames_in_influx(influx.url, database) >= published,
            "every frame",
            timeout_s,
        )
        count = _metric(ingest, "osteotel_ingest_store_recovery_seconds_count")
        total_s = _metric(ingest, "osteotel_ingest_store_recovery_seconds_sum")
        ingest.stop()
        return {
            "outage_s": args.outage_s,
            "rate_hz": args.rate_hz,
            "recovery_spool_empty_s": empty_s - answered_s,
            "recovery_live_stored_s": live_s - answered_s,
            "ingest_store_recovery_s": total_s / count if count else math.nan,
            "ingest_store_recoveries": count,
            "frames_published": published,
            "frames_in_influx": _frames_in_influx(influx.url, database),
        }
