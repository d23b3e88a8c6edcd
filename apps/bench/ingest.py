"""Ingest throughput and latency: emulated hubs -> Mosquitto -> ingest (with the DSP) -> InfluxDB.

Every phase runs on this machine, on loopback, against servers the benchmark starts itself (one
InfluxDB, a fresh Mosquitto per phase), with a bounded message count and a bounded wait:

1. `mosquitto_sub` (the C client, QoS 1) receives the frames from the broker: the ceiling.
2. `osteotel ingest --processes 1`, then `--processes 2`, store the same frames; the clock runs
   from the first publish until ingest's `/metrics` count every sample as stored, and InfluxDB's
   `count(force_n)` is read afterwards to show they are all there.
3. Latency: one ingest process, frames paced at half the one-process sustained rate for
   `--latency-s` seconds, each frame's last sample stamped with its publish time, so ingest's
   `osteotel_ingest_sample_to_stored_seconds` histogram is publish-to-stored.
4. A naive baseline: a paho callback that json-decodes each frame and writes one influxdb-client
   `Point` per sample, synchronously, one write per frame, into its own database.
5. Alerts (apps/bench/alerts_load.py): publish-to-webhook latency of a critical alert through
   ingest's DSP and `osteotel alerts run`; and alerts per device-month in emulated normal healing.

Figures (`--json` keys; documented in docs/ingest.md, "Throughput and latency"):
    devices, frames, frame_samples, samples     the sustained workload
    mosquitto_sub_seconds, mosquitto_sub_messages_per_s
    ingest_{1,2}p_seconds, ingest_{1,2}p_frames_per_s, ingest_{1,2}p_samples_per_s
    ingest_{1,2}p_samples_in_influx             count(force_n) after the run
    ingest_{1,2}p_cpu_us_per_frame_{ingest,influxd,mosquitto,publisher}
                                                CPU (user + system) per frame in that run
    cpu_cores, ceiling_without_ingest_frames_per_s
                                                cores, and the 1-process run's frame rate at
                                                which influxd, Mosquitto and the publisher
                                                alone would fill them all
    ingest_1p_vs_mosquitto_sub                  frames/s over mosquitto_sub messages/s
    ingest_1p_vs_naive                          samples/s over the naive baseline's samples/s
    scaling_2p_vs_1p                            2-process samples/s over 1-process samples/s
    naive_frames, naive_seconds, naive_samples_per_s
    latency_offered_frames_per_s, latency_published_frames_per_s, latency_frames,
    latency_sample_rate_hz, latency_p50_s, latency_p99_s, latency_under_1s_fraction
    alert_trials, alert_notifications, alert_latency_p50_s, alert_latency_p99_s
    normal_device_months, normal_alerts_per_device_month_{critical,warning,info}
"""

import argparse
import os
import re
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.bench.processes import IngestProcess, device_ids, wait, write_registry

if TYPE_CHECKING:
    from apps.services import InfluxDB

__all__ = ["configure", "run"]

_RATE_HZ = 100.0
_WINDOW = 32  # publishes in flight; the same window `devices.emulator.capture.replay` uses
_PROBE_TOPIC = "osteotel-bench/probe"
_TELEMETRY_FILTER = "osteotel/v1/+/+/telemetry"
_LATENCY_GOAL_S = 1.0
# prometheus_client's text format: `name{label="value",...} number`.
_LE_LABEL = re.compile(r'le="([^"]+)"')


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of `osteotel bench ingest`."""
    parser.add_argument("--devices", type=int, default=50, help="devices (default 50)")
    parser.add_argument("--frames", type=int, default=20_000, help="frames (default 20000)")
    parser.add_argument(
        "--frame-samples", type=int, default=100, help="samples per frame (default 100)"
    )
    parser.add_argument(
        "--baseline-frames",
        type=int,
        default=500,
        help="frames the naive baseline stores (default 500)",
    )
    parser.add_argument(
        "--latency-s", type=float, default=20.0, help="length of the paced run, s (default 20)"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=600.0, help="bound on each phase, s (default 600)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default temp)")
    from apps.bench import alerts_load  # noqa: PLC0415 - loaded with the phase that needs it

    alerts_load.add_options(parser)


# --- workload -----------------------------------------------------------------------------------


class _Signals:
    """Per-device sample blocks: a 1 Hz gait-like load around 150 N and a steady elongation."""

    def __init__(self, devices: int, frame_samples: int) -> None:
        import numpy as np  # noqa: PLC0415 - benchmarks load heavy modules only when they run

        rng = np.random.default_rng(11)
        phase = np.arange(frame_samples) * 2 * np.pi / _RATE_HZ
        noise = rng.normal(0.0, 1.0, (devices, 2, frame_samples))
        # Sensor resolution: force to 0.01 N, elongation to 1 um. Forces stay within the
        # ~300 N adult tibia range (docs/domain.md, "Forces along a lengthening").
        self.force_n = np.round(150.0 + 40.0 * np.sin(phase) + noise[:, 0], 2)
        self.disp_mm = np.round(20.0 + 0.002 * noise[:, 1], 3)

    def payload(
        self, index: int, device: str, *, seq: int, t0_ns: int, rate_hz: float, binary: bool
    ) -> bytes:
        """Device `index`'s block as one frame, binary or JSON."""
        from devices.codec import encode_frame_binary, encode_frame_json  # noqa: PLC0415
        from devices.contract import Frame  # noqa: PLC0415

        frame = Frame(device, seq, t0_ns, rate_hz, self.force_n[index], self.disp_mm[index])
        return encode_frame_binary(frame) if binary else encode_frame_json(frame)


def _binary_hub(hub: str) -> bool:
    """Odd-numbered hubs send binary frames, the others JSON: a mixed fleet."""
    return int(hub.removeprefix("HUB-")) % 2 == 1


def _sustained_messages(
    ids: list[tuple[str, str]], frames: int, frame_samples: int, *, json_only: bool = False
) -> list[_Message]:
    """`frames` frames round-robin over the devices, contiguous per device, ending a minute ago."""
    from devices.contract import telemetry_topic  # noqa: PLC0415

    signals = _Signals(len(ids), frame_samples)
    frame_ns = round(frame_samples * 1e9 / _RATE_HZ)
    per_device = -(-frames // len(ids))
    start_ns = time.time_ns() - (per_device * frame_ns) - 60_000_000_000
    messages = []
    for number in range(frames):
        index = number % len(ids)
        seq = number // len(ids)
        hub, device = ids[index]
        payload = signals.payload(
            index,
            device,
            seq=seq,
            t0_ns=start_ns + seq * frame_ns,
            rate_hz=_RATE_HZ,
            binary=_binary_hub(hub) and not json_only,
        )
        messages.append(_Message(telemetry_topic(hub, device), payload))
    return messages


# --- publishing ---------------------------------------------------------------------------------


class _Publisher:
    """A paho client driven from the calling thread, QoS 1, a bounded window of publishes."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        import paho.mqtt.client as paho  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        self._paho = paho
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        self._client.max_inflight_messages_set(_WINDOW)
        self._pending: deque[Any] = deque()
        connected: list[object] = []
        self._client.on_connect = lambda _c, _u, _f, reason, _p: connected.append(reason)
        self._client.connect(host, port, keepalive=30)
        self._loop_until(lambda: bool(connected), 10.0)

    def _loop_until(self, done: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from the broker within {timeout_s:g} s")
            code = self._client.loop(timeout=0.5)
            if code != self._paho.MQTT_ERR_SUCCESS:
                raise ConnectionError(self._paho.error_string(code))

    def _room(self) -> bool:
        while self._pending and self._pending[0].is_published():
            self._pending.popleft()
        return len(self._pending) < _WINDOW

    def publish(self, message: _Message) -> None:
        """Publish once the window has room; waits for PUBACKs otherwise."""
        if not self._room():
            self._loop_until(self._room, 30.0)
        self._pending.append(self._client.publish(message.topic, message.payload, qos=1))

    def service(self) -> None:
        """Read what the broker sent (PUBACKs, keep-alive) without waiting."""
        self._client.loop(timeout=0.0)

    def finish(self) -> None:
        """Wait until every publish is acknowledged, then disconnect."""
        self._loop_until(lambda: self._room() and not self._pending, 30.0)
        self._client.disconnect()


def _publish_all(host: str, port: int, messages: list[_Message], client_id: str) -> None:
    publisher = _Publisher(host, port, client_id)
    for message in messages:
        publisher.publish(message)
    publisher.finish()


# --- servers and ingest -------------------------------------------------------------------------


def _process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (ingest's supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while being read
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree = [pid]
    for member in tree:  # grows while iterated: a breadth-first walk
        tree.extend(children.get(member, []))
    return tree


def _running(pid: int | None, what: str) -> int:
    if pid is None:
        raise RuntimeError(f"{what} is not running")
    return pid


def _cpu_s(pids: list[int]) -> float:
    """User plus system CPU seconds the processes have used so far (/proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _count_in_influx(url: str, database: str) -> int:
    from osteotel.settings import InfluxSettings  # noqa: PLC0415
    from osteotel.store.influx import InfluxStore  # noqa: PLC0415

    with InfluxStore(InfluxSettings(url=url, database=database, api="v1")) as store:
        series = store.query("SELECT count(force_n) FROM raw")
    return int(series[0].values[0][1]) if series and series[0].values else 0


# --- phases -------------------------------------------------------------------------------------


def _mosquitto_sub(workdir: Path, messages: list[_Message], timeout_s: float) -> float:
    """Seconds from the first publish until `mosquitto_sub` has received every frame."""
    from apps.services import Mosquitto  # noqa: PLC0415

    workdir.mkdir(parents=True, exist_ok=True)
    out_path = workdir / "mosquitto_sub.out"
    with Mosquitto(workdir / "broker", persistence=False) as broker:
        address = ["-h", broker.host, "-p", str(broker.port)]
        # A retained probe reaches the subscriber as soon as its subscription is in place.
        subprocess.run(
            ["mosquitto_pub", *address, "-q", "1", "-r", "-t", _PROBE_TOPIC, "-m", "probe"],
            check=True,
            timeout=10,
        )
        with out_path.open("wb") as out:
            sub = subprocess.Popen(
                [
                    "mosquitto_sub",
                    *address,
                    "-q",
                    "1",
                    "-t",
                    _TELEMETRY_FILTER,
                    "-t",
                    _PROBE_TOPIC,
                    "-F",
                    "%t",
                    "-C",
                    str(len(messages) + 1),
                    "-W",
                    str(max(1, round(timeout_s))),
                ],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        try:
            wait(lambda: out_path.stat().st_size > 0, "mosquitto_sub to subscribe", 10.0)
            started = time.perf_counter()
            _publish_all(broker.host, broker.port, messages, "osteotel-bench-sub-pub")
            sub.wait(timeout=timeout_s)
            seconds = time.perf_counter() - started
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
    with out_path.open("rb") as lines:
        arrived = sum(1 for line in lines if not line.startswith(_PROBE_TOPIC.encode()))
    if arrived != len(messages):
        raise RuntimeError(f"mosquitto_sub received {arrived} of {len(messages)} frames")
    return seconds


def _sustained(
    workdir: Path,
    influx: "InfluxDB",
    registry: Path,
    messages: list[_Message],
    *,
    processes: int,
    samples: int,
    timeout_s: float,
) -> dict[str, float]:
    """Seconds until ingest has stored every sample, CPU per frame of each process, and
    count(force_n) in InfluxDB after; keys as in the module docstring without `ingest_Np_`."""
    from apps.services import Mosquitto  # noqa: PLC0415

    database = f"bench_ingest_{processes}p"
    with Mosquitto(workdir / "broker", persistence=False) as broker:
        ingest = IngestProcess(
            workdir,
            processes=processes,
            mqtt=(broker.host, broker.port),
            influx_url=influx.url,
            database=database,
            registry=registry,
        )
        try:
            ingest.start()
            servers = {
                "ingest": _process_tree(_running(ingest.pid, "ingest")),
                "influxd": [_running(influx.pid, "influxd")],
                "mosquitto": [_running(broker.pid, "mosquitto")],
            }
            cpu_before = {name: _cpu_s(pids) for name, pids in servers.items()}
            publisher_before = time.process_time()
            started_s = time.time()  # wall clock, as the child's last-stored time
            _publish_all(broker.host, broker.port, messages, f"osteotel-bench-{processes}p")
            seconds = ingest.wait_stored(samples, "every sample stored", timeout_s) - started_s
            cpu_s = {name: _cpu_s(pids) - cpu_before[name] for name, pids in servers.items()}
            cpu_s["publisher"] = time.process_time() - publisher_before
        finally:
            ingest.stop()
    figures = {"seconds": seconds, "samples_in_influx": _count_in_influx(influx.url, database)}
    for name, used_s in cpu_s.items():
        figures[f"cpu_us_per_frame_{name}"] = used_s / len(messages) * 1e6
    return figures


def _paced(
    publisher: _Publisher,
    ids: list[tuple[str, str]],
    frame_samples: int,
    *,
    rate_frames_per_s: float,
    duration_s: float,
) -> tuple[int, float, float]:
    """Publish at a steady rate, each frame's last sample stamped now; (frames, s, rate_hz)."""
    from devices.contract import telemetry_topic  # noqa: PLC0415

    signals = _Signals(len(ids), frame_samples)
    # Each device sends rate/devices frames a second; sampling at n times that keeps its
    # frames back to back while every frame ends at its publish time (never below 100 Hz).
    rate_hz = min(10_000.0, max(_RATE_HZ, frame_samples * rate_frames_per_s / len(ids)))
    span_ns = round((frame_samples - 1) * 1e9 / rate_hz)
    topics = [telemetry_topic(hub, device) for hub, device in ids]
    count = max(1, round(rate_frames_per_s * duration_s))
    started = time.perf_counter()
    for number in range(count):
        due = started + number / rate_frames_per_s
        while (ahead_s := due - time.perf_counter()) > 0:
            publisher.service()
            time.sleep(min(ahead_s, 0.002))
        index = number % len(ids)
        hub, device = ids[index]
        payload = signals.payload(
            index,
            device,
            seq=number // len(ids),
            t0_ns=time.time_ns() - span_ns,
            rate_hz=rate_hz,
            binary=_binary_hub(hub),
        )
        publisher.publish(_Message(topics[index], payload))
    published_s = time.perf_counter() - started
    publisher.finish()
    return count, published_s, rate_hz


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a cumulative histogram, linear within a bucket (as histogram_quantile)."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _latency(
    workdir: Path,
    influx_url: str,
    registry: Path,
    ids: list[tuple[str, str]],
    *,
    frame_samples: int,
    rate_frames_per_s: float,
    duration_s: float,
    timeout_s: float,
) -> dict[str, float]:
    """Publish-to-stored percentiles from one ingest's histogram at a paced rate."""
    from apps.services import Mosquitto  # noqa: PLC0415

    with Mosquitto(workdir / "broker", persistence=False) as broker:
        ingest = IngestProcess(
            workdir,
            processes=1,
            mqtt=(broker.host, broker.port),
            influx_url=influx_url,
            database="bench_ingest_latency",
            registry=registry,
        )
        try:
            ingest.start()
            publisher = _Publisher(broker.host, broker.port, "osteotel-bench-paced")
            frames, published_s, rate_hz = _paced(
                publisher,
                ids,
                frame_samples,
                rate_frames_per_s=rate_frames_per_s,
                duration_s=duration_s,
            )
            ingest.wait_stored(frames * frame_samples, "every paced sample stored", timeout_s)
            metrics = ingest.metrics()
        finally:
            ingest.stop()
    cumulative: dict[float, float] = {}
    for name, labels, value in metrics:
        if name == "osteotel_ingest_sample_to_stored_seconds_bucket":
            le = _LE_LABEL.search(labels)
            assert le is not None
            bound = float(le[1])  # "+Inf" parses as inf
            cumulative[bound] = cumulative.get(bound, 0.0) + value
    buckets = sorted(cumulative.items())
    return {
        "latency_offered_frames_per_s": rate_frames_per_s,
        "latency_published_frames_per_s": frames / published_s,
        "latency_frames": frames,
        "latency_sample_rate_hz": rate_hz,
        "latency_p50_s": _quantile(buckets, 0.50),
        "latency_p99_s": _quantile(buckets, 0.99),
        "latency_under_1s_fraction": cumulative[_LATENCY_GOAL_S] / buckets[-1][1],
    }


def _naive(workdir: Path, influx_url: str, messages: list[_Message], timeout_s: float) -> float:
    """Seconds for a paho callback writing one Point per sample to store every frame."""
    import json  # noqa: PLC0415

    import paho.mqtt.client as paho  # noqa: PLC0415
    from influxdb_client.client.write.point import Point  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    from apps.services import Mosquitto  # noqa: PLC0415
    from devices.contract import parse_topic  # noqa: PLC0415
    from osteotel.settings import InfluxSettings  # noqa: PLC0415
    from osteotel.store.influx import InfluxStore  # noqa: PLC0415

    settings = InfluxSettings(url=influx_url, database="bench_ingest_naive", api="v1")
    new_point: Any = Point  # influxdb-client's Point carries no type annotations
    done = threading.Event()
    stored = [0]
    failures: list[BaseException] = []

    with InfluxStore(settings) as store, Mosquitto(workdir / "broker", persistence=False) as broker:
        store.ensure_database()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            try:
                topic = parse_topic(message.topic)
                frame = json.loads(message.payload)
                step_ns = 1e9 / frame["rate_hz"]
                points = [
                    new_point("raw")
                    .tag("hub", topic.hub)
                    .tag("device", frame["device"])
                    .field("force_n", float(force_n))
                    .field("disp_mm", float(disp_mm))
                    .time(frame["t0_ns"] + round(i * step_ns))
                    for i, (force_n, disp_mm) in enumerate(
                        zip(frame["force_n"], frame["disp_mm"], strict=True)
                    )
                ]
                # InfluxDB 1.6 has no /api/v2/write, so influxdb-client's SYNCHRONOUS WriteApi
                # cannot reach it; the same serialisation goes through the v1 store instead.
                store.write("\n".join(p.to_line_protocol() for p in points).encode())
            except Exception as exc:  # any failure ends the run: handed to the main thread
                failures.append(exc)
                done.set()
                return
            stored[0] += 1
            if stored[0] == len(messages):
                done.set()

        subscriber = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="osteotel-bench-naive", protocol=paho.MQTTv311
        )
        subscribed = threading.Event()
        subscriber.on_subscribe = lambda *_: subscribed.set()
        subscriber.on_connect = lambda c, *_: c.subscribe(_TELEMETRY_FILTER, qos=1)
        subscriber.on_message = on_message
        subscriber.connect(broker.host, broker.port, keepalive=30)
        subscriber.loop_start()
        try:
            if not subscribed.wait(10.0):
                raise TimeoutError("the naive subscriber did not subscribe within 10 s")
            started = time.perf_counter()
            _publish_all(broker.host, broker.port, messages, "osteotel-bench-naive-pub")
            if not done.wait(timeout_s):
                raise TimeoutError(f"the naive baseline stored {stored[0]} of {len(messages)}")
            seconds = time.perf_counter() - started
        finally:
            subscriber.disconnect()
            subscriber.loop_stop()
    if failures:
        raise RuntimeError("the naive baseline failed") from failures[0]
    return seconds


def run(args: argparse.Namespace) -> dict[str, object]:
    """Measure every phase and return the figures (keys in the module docstring)."""
    from apps.bench import alerts_load  # noqa: PLC0415 - loaded with the phase that needs it
    from apps.services import InfluxDB  # noqa: PLC0415

    ids = device_ids(args.devices)
    samples = args.frames * args.frame_samples
    figures: dict[str, object] = {
        "devices": args.devices,
        "frames": args.frames,
        "frame_samples": args.frame_samples,
        "samples": samples,
    }
    with tempfile.TemporaryDirectory(prefix="osteotel-bench-ingest-") as temp:
        workdir = Path(args.workdir) if args.workdir is not None else Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        registry = workdir / "registry.toml"
        write_registry(registry, ids)
        messages = _sustained_messages(ids, args.frames, args.frame_samples)

        seconds = _mosquitto_sub(workdir / "mosquitto_sub", messages, args.timeout_s)
        sub_per_s = len(messages) / seconds
        figures["mosquitto_sub_seconds"] = seconds
        figures["mosquitto_sub_messages_per_s"] = sub_per_s

        with InfluxDB(workdir / "influxdb") as influx:
            samples_per_s: dict[int, float] = {}
            for processes in (1, 2):
                run = _sustained(
                    workdir / f"ingest-{processes}p",
                    influx,
                    registry,
                    messages,
                    processes=processes,
                    samples=samples,
                    timeout_s=args.timeout_s,
                )
                samples_per_s[processes] = samples / run["seconds"]
                figures[f"ingest_{processes}p_frames_per_s"] = args.frames / run["seconds"]
                figures[f"ingest_{processes}p_samples_per_s"] = samples_per_s[processes]
                figures.update({f"ingest_{processes}p_{key}": value for key, value in run.items()})
                if processes == 1:
                    # The rate at which everything but ingest would fill every core.
                    others_us = sum(
                        run[f"cpu_us_per_frame_{name}"]
                        for name in ("influxd", "mosquitto", "publisher")
                    )
                    cores = os.cpu_count() or 1
                    figures["cpu_cores"] = cores
                    figures["ceiling_without_ingest_frames_per_s"] = cores * 1e6 / others_us

            baseline = _sustained_messages(
                ids, args.baseline_frames, args.frame_samples, json_only=True
            )
            naive_s = _naive(workdir / "naive", influx.url, baseline, args.timeout_s)
            naive_samples_per_s = args.baseline_frames * args.frame_samples / naive_s
            figures["naive_frames"] = args.baseline_frames
            figures["naive_seconds"] = naive_s
            figures["naive_samples_per_s"] = naive_samples_per_s

            frames_per_s = samples_per_s[1] / args.frame_samples
            figures.update(
                _latency(
                    workdir / "latency",
                    influx.url,
                    registry,
                    ids,
                    frame_samples=args.frame_samples,
                    rate_frames_per_s=frames_per_s / 2,
                    duration_s=args.latency_s,
                    timeout_s=args.timeout_s,
                )
            )
            figures.update(
                alerts_load.alert_latency(
                    workdir / "alerts",
                    influx.url,
                    trials=args.alert_trials,
                    timeout_s=args.timeout_s,
                )
            )
        figures.update(
            alerts_load.normal_alert_counts(
                workdir / "normal",
                devices=args.normal_devices,
                target_mm=args.normal_target_mm,
            )
        )
    figures["ingest_1p_vs_mosquitto_sub"] = samples_per_s[1] / args.frame_samples / sub_per_s
    figures["ingest_1p_vs_naive"] = samples_per_s[1] / naive_samples_per_s
    figures["scaling_2p_vs_1p"] = samples_per_s[2] / samples_per_s[1]
    return figures
