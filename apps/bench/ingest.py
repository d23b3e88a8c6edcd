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

The frames and the publisher are apps/bench/publishing.py; the child processes and their CPU
time apps/bench/processes.py.

Figures (`--json` keys; documented in docs/ingest.md, "Throughput and latency"):
    devices, frames, frame_samples, samples     the sustained workload
    sustained_repeats                           runs of each process count (`--repeats`):
                                                every ingest_{1,2}p_* figure is their median
    mosquitto_sub_seconds, mosquitto_sub_messages_per_s
    ingest_{1,2}p_seconds, ingest_{1,2}p_frames_per_s, ingest_{1,2}p_samples_per_s
    ingest_raw_tier                             ingest's `raw_tier` in every run (`--raw-tier`)
    ingest_{1,2}p_samples_in_influx             samples stored after the run: count(force_n)
                                                in raw plus sum(n) in raw_1s (the bench sends
                                                no step, so no sample is in both)
    ingest_{1,2}p_cpu_us_per_frame_{ingest,influxd,mosquitto,publisher}
                                                CPU (user + system) per frame in that run
    ingest_{1,2}p_cpu_window_s                  wall time the CPU was read over: from before
                                                the first publish until the last store was seen
    ingest_{1,2}p_thread_cpu_us_per_frame_{loop,mqtt,workers}
                                                ingest's CPU per frame by thread: the event
                                                loop, paho's network thread, the worker threads
                                                (InfluxDB writes); at most ..._ingest
    ingest_{1,2}p_stage_us_per_frame_{handle,validate,lines,dsp,checkpoint,join,acknowledge,capture}
                                                event-loop CPU per frame by stage since start
                                                (handle contains validate, lines: the frames'
                                                line protocol, dsp and checkpoint)
    ingest_{1,2}p_write_ms_per_batch            wall time from a batch's write starting to its
                                                being durable (InfluxDB's answer), mean
    ingest_{1,2}p_frames_per_batch              messages per batch written, mean
    ingest_{1,2}p_writer_slot_wait_fraction     share of the run the writer waited for a free
                                                write slot (all `write_concurrency` batches in
                                                flight), per process
    ingest_{1,2}p_queue_full_wait_fraction      ... the receive side waited for queue room
    ingest_{1,2}p_unacked_at_receipt_mean       messages received and not yet acknowledged
                                                when a burst arrived: the broker's window
                                                (`max_inflight_messages`) in use
    ingest_write_concurrency                    ingest's `write_concurrency` in this run
    ingest_{1,2}p_messages_received             messages the processes received, summed (each
                                                message reaches one process: = frames)
    ingest_{1,2}p_messages_received_busiest_process
                                                the most one process received (its hubs' share)
    cpu_cores, ceiling_without_ingest_frames_per_s
                                                cores, and the 1-process run's frame rate at
                                                which influxd, Mosquitto and the publisher
                                                alone would fill them all
    mosquitto_sub_cpu_us_per_message            mosquitto_sub's own CPU per message
    influxd_cpu_us_per_sample                   influxd's CPU per stored sample (1 process)
    fleet_devices_continuous_100hz, fleet_devices_at_emulator_duty,
    emulator_recorded_samples_per_device_day    devices this machine carries at half the
                                                better of the 1- and 2-process rates:
                                                streaming 100 Hz all day, or recording as
                                                the emulator does over a whole treatment
    ingest_{1,2}p_ceiling_reached               frames/s over that ceiling (issue 15: >= 0.8)
    ingest_1p_vs_mosquitto_sub                  frames/s over mosquitto_sub messages/s
    ingest_1p_vs_naive                          samples/s over the naive baseline's samples/s
    scaling_2p_vs_1p                            2-process samples/s over 1-process samples/s
    naive_frames, naive_seconds, naive_samples_per_s, naive_samples_in_influx
    latency_offered_frames_per_s, latency_published_frames_per_s, latency_frames,
    latency_sample_rate_hz, latency_p50_s, latency_p99_s, latency_under_1s_fraction,
    latency_samples_in_influx
    alert_trials, alert_notifications, alert_latency_p50_s, alert_latency_p99_s
    normal_device_months, normal_alerts_per_device_month_{critical,warning,info}
"""

import argparse
import os
import re
import resource
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.bench.processes import (
    IngestProcess,
    cpu_s,
    device_ids,
    process_tree,
    wait,
    write_registry,
)
from apps.bench.publishing import Message, publish_all, publish_paced, sustained_messages
from osteotel.settings import Settings

if TYPE_CHECKING:
    from apps.services import InfluxDB

__all__ = ["configure", "run"]

_PROBE_TOPIC = "osteotel-bench/probe"
_TELEMETRY_FILTER = "osteotel/v1/+/+/telemetry"
_LATENCY_GOAL_S = 1.0
_CONTINUOUS_HZ = 100.0  # a device streaming all day, as issue 15 sizes the fleet
_NAIVE_DATABASE = "bench_ingest_naive"
# prometheus_client's text format: `name{label="value",...} number`.
_LE_LABEL = re.compile(r'le="([^"]+)"')


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
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="sustained runs per process count, alternating; medians quoted (default 3)",
    )
    parser.add_argument(
        "--raw-tier",
        choices=("full", "windows"),
        default="full",
        help="ingest's storage tier (ingest.raw_tier; windows: capture files in the workdir)",
    )
    from apps.bench import alerts_load  # noqa: PLC0415 - loaded with the phase that needs it

    alerts_load.add_options(parser)


def _running(pid: int | None, what: str) -> int:
    if pid is None:
        raise RuntimeError(f"{what} is not running")
    return pid


def _count_in_influx(url: str, database: str) -> int:
    from osteotel.settings import InfluxSettings  # noqa: PLC0415
    from osteotel.store.influx import InfluxStore  # noqa: PLC0415

    total = 0
    with InfluxStore(InfluxSettings(url=url, database=database, api="v1")) as store:
        # Full rate, and what the storage tier summarised (docs/schema.md, `raw_1s`).
        for statement in ("SELECT count(force_n) FROM raw", "SELECT sum(n) FROM raw_1s"):
            series = store.query(statement)
            total += int(series[0].values[0][1]) if series and series[0].values else 0
    return total


# --- phases -------------------------------------------------------------------------------------


def _mosquitto_sub(workdir: Path, messages: list[Message], timeout_s: float) -> tuple[float, float]:
    """Seconds from the first publish until `mosquitto_sub` has received every frame, and
    its own CPU seconds (user + system, from the kernel's account of the reaped child)."""
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
            # The only child reaped from here to its exit is mosquitto_sub (the publisher
            # runs in this process; the broker is reaped later).
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            publish_all(broker.host, broker.port, messages, "osteotel-bench-sub-pub")
            sub.wait(timeout=timeout_s)
            seconds = time.perf_counter() - started
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = (children_after.ru_utime - children_before.ru_utime) + (
                children_after.ru_stime - children_before.ru_stime
            )
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
    with out_path.open("rb") as lines:
        arrived = sum(1 for line in lines if not line.startswith(_PROBE_TOPIC.encode()))
    if arrived != len(messages):
        raise RuntimeError(f"mosquitto_sub received {arrived} of {len(messages)} frames")
    return seconds, cpu_s


def _sustained(
    workdir: Path,
    influx: "InfluxDB",
    registry: Path,
    messages: list[Message],
    *,
    processes: int,
    samples: int,
    timeout_s: float,
    repeat: int,
    raw_tier: str,
) -> dict[str, float]:
    """Seconds until ingest has stored every sample, CPU per frame of each process, and
    count(force_n) in InfluxDB after; keys as in the module docstring without `ingest_Np_`."""
    from apps.services import Mosquitto  # noqa: PLC0415

    database = f"bench_ingest_{processes}p_{repeat}"
    with Mosquitto(workdir / "broker", persistence=False) as broker:
        ingest = IngestProcess(
            workdir,
            processes=processes,
            mqtt=(broker.host, broker.port),
            influx_url=influx.url,
            database=database,
            registry=registry,
            raw_tier=raw_tier,
        )
        try:
            ingest.start()
            servers = {
                "ingest": process_tree(_running(ingest.pid, "ingest")),
                "influxd": [_running(influx.pid, "influxd")],
                "mosquitto": [_running(broker.pid, "mosquitto")],
            }
            cpu_started_s = time.time()
            cpu_before = {name: cpu_s(pids) for name, pids in servers.items()}
            before = ingest.metrics()
            threads_before = _labelled_seconds(before, _THREAD_METRIC, "thread")
            pipeline_before = _labelled_seconds(before, _PIPELINE_METRIC, "figure")
            publisher_before = time.process_time()
            started_s = time.time()  # wall clock, as the child's last-stored time
            publish_all(broker.host, broker.port, messages, f"osteotel-bench-{processes}p")
            seconds = ingest.wait_stored(samples, "every sample stored", timeout_s) - started_s
            used_s = {name: cpu_s(pids) - cpu_before[name] for name, pids in servers.items()}
            used_s["publisher"] = time.process_time() - publisher_before
            cpu_window_s = time.time() - cpu_started_s
            after = ingest.metrics()
            threads_s = _labelled_seconds(after, _THREAD_METRIC, "thread")
            stages_s = _labelled_seconds(after, _STAGE_METRIC, "stage")
            pipeline_after = _labelled_seconds(after, _PIPELINE_METRIC, "figure")
            received = ingest.counter_by_process("osteotel_ingest_messages_received_total")
        finally:
            ingest.stop()
    figures = {
        "seconds": seconds,
        "samples_in_influx": _count_in_influx(influx.url, database),
        "cpu_window_s": cpu_window_s,
        # Each message reaches one process (ingest/partition.py): the sum is what was sent.
        "messages_received": sum(received),
        "messages_received_busiest_process": max(received),
    }
    for name, seconds_used in used_s.items():
        figures[f"cpu_us_per_frame_{name}"] = seconds_used / len(messages) * 1e6
    for kind in _THREADS:
        used = threads_s.get(kind, 0.0) - threads_before.get(kind, 0.0)
        figures[f"thread_cpu_us_per_frame_{kind}"] = used / len(messages) * 1e6
    for stage in _STAGES:
        figures[f"stage_us_per_frame_{stage}"] = stages_s.get(stage, 0.0) / len(messages) * 1e6
    figures.update(_pipeline(pipeline_before, pipeline_after, seconds * processes))
    return figures


def _pipeline(
    before: dict[str, float], after: dict[str, float], process_s: float
) -> dict[str, float]:
    """Where the write pipeline waited during the run (keys in the module docstring)."""
    run = {figure: after.get(figure, 0.0) - before.get(figure, 0.0) for figure in after}
    writes = max(1.0, run.get("writes", 0.0))
    return {
        "write_ms_per_batch": run.get("write_ns", 0.0) / writes / 1e6,
        "frames_per_batch": run.get("write_messages", 0.0) / writes,
        "writer_slot_wait_fraction": run.get("writer_slot_wait_ns", 0.0) / 1e9 / process_s,
        "queue_full_wait_fraction": run.get("queue_full_wait_ns", 0.0) / 1e9 / process_s,
        "unacked_at_receipt_mean": run.get("unacked_at_receipt", 0.0)
        / max(1.0, run.get("receipts", 0.0)),
    }


# ingest's own CPU counters (docs/ingest.md, "Where ingest's time goes"): the event loop's by
# stage since start (`handle` holds validate, lines, dsp and checkpoint; the bench's run is nearly
# all of the process's life; `capture`, the capture files' lines and fsync, runs in a worker
# thread, 0 without capture files), and by thread, read before and after the run.
_STAGE_METRIC, _STAGES = (
    "osteotel_ingest_stage_seconds_total",
    ("handle", "validate", "lines", "dsp", "checkpoint", "join", "acknowledge", "capture"),
)
_THREAD_METRIC, _THREADS = "osteotel_ingest_thread_cpu_seconds_total", ("loop", "mqtt", "workers")
_PIPELINE_METRIC = "osteotel_ingest_pipeline_total"


def _labelled_seconds(
    metrics: list[tuple[str, str, float]], metric: str, label: str
) -> dict[str, float]:
    """A counter's values by one label, summed over ingest's processes."""
    pattern = re.compile(label + r'="([a-z_]+)"')
    seconds: dict[str, float] = {}
    for name, labels, value in metrics:
        match = pattern.search(labels)
        if name == metric and match:
            seconds[match[1]] = seconds.get(match[1], 0.0) + value
    return seconds


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
    raw_tier: str,
) -> dict[str, float]:
    """Publish-to-stored percentiles from one ingest's histogram at a paced rate, and
    count(force_n) in InfluxDB after."""
    from apps.services import Mosquitto  # noqa: PLC0415

    database = "bench_ingest_latency"
    with Mosquitto(workdir / "broker", persistence=False) as broker:
        ingest = IngestProcess(
            workdir,
            processes=1,
            mqtt=(broker.host, broker.port),
            influx_url=influx_url,
            database=database,
            registry=registry,
            raw_tier=raw_tier,
        )
        try:
            ingest.start()
            frames, published_s, rate_hz = publish_paced(
                broker.host,
                broker.port,
                "osteotel-bench-paced",
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
        "latency_samples_in_influx": _count_in_influx(influx_url, database),
    }


def _naive(workdir: Path, influx_url: str, messages: list[Message], timeout_s: float) -> float:
    """Seconds for a paho callback writing one Point per sample to store every frame, into
    its own database (`_NAIVE_DATABASE`)."""
    import json  # noqa: PLC0415

    import paho.mqtt.client as paho  # noqa: PLC0415
    from influxdb_client.client.write.point import Point  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    from apps.services import Mosquitto  # noqa: PLC0415
    from devices.contract import parse_topic  # noqa: PLC0415
    from osteotel.settings import InfluxSettings  # noqa: PLC0415
    from osteotel.store.influx import InfluxStore  # noqa: PLC0415

    settings = InfluxSettings(url=influx_url, database=_NAIVE_DATABASE, api="v1")
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
            publish_all(broker.host, broker.port, messages, "osteotel-bench-naive-pub")
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
        # The children read the same environment (OSTEOTEL_INGEST__WRITE_CONCURRENCY).
        "ingest_write_concurrency": Settings().ingest.write_concurrency,
        "ingest_raw_tier": args.raw_tier,
    }
    with tempfile.TemporaryDirectory(prefix="osteotel-bench-ingest-") as temp:
        workdir = Path(args.workdir) if args.workdir is not None else Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        registry = workdir / "registry.toml"
        write_registry(registry, ids)
        messages = sustained_messages(ids, args.frames, args.frame_samples)

        seconds, sub_cpu_s = _mosquitto_sub(workdir / "mosquitto_sub", messages, args.timeout_s)
        sub_per_s = len(messages) / seconds
        figures["mosquitto_sub_seconds"] = seconds
        figures["mosquitto_sub_messages_per_s"] = sub_per_s
        figures["mosquitto_sub_cpu_us_per_message"] = sub_cpu_s / len(messages) * 1e6

        with InfluxDB(workdir / "influxdb") as influx:
            # One and two processes alternate, so that a slow spell of this noisy machine
            # falls on both; each figure is the median of its runs.
            runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
            for repeat in range(args.repeats):
                for processes, results in runs.items():
                    results.append(
                        _sustained(
                            workdir / f"ingest-{processes}p-{repeat}",
                            influx,
                            registry,
                            messages,
                            processes=processes,
                            samples=samples,
                            timeout_s=args.timeout_s,
                            repeat=repeat,
                            raw_tier=args.raw_tier,
                        )
                    )
            figures["sustained_repeats"] = args.repeats
            samples_per_s: dict[int, float] = {}
            for processes, results in runs.items():
                run = {key: statistics.median(r[key] for r in results) for key in results[0]}
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
            for processes in runs:
                figures[f"ingest_{processes}p_ceiling_reached"] = (
                    samples_per_s[processes]
                    / args.frame_samples
                    / figures["ceiling_without_ingest_frames_per_s"]
                )

            baseline = sustained_messages(
                ids, args.baseline_frames, args.frame_samples, json_only=True
            )
            naive_s = _naive(workdir / "naive", influx.url, baseline, args.timeout_s)
            naive_samples_per_s = args.baseline_frames * args.frame_samples / naive_s
            figures["naive_frames"] = args.baseline_frames
            figures["naive_seconds"] = naive_s
            figures["naive_samples_in_influx"] = _count_in_influx(influx.url, _NAIVE_DATABASE)
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
                    raw_tier=args.raw_tier,
                )
            )
            figures.update(
                alerts_load.alert_latency(
                    workdir / "alerts",
                    influx.url,
                    trials=args.alert_trials,
                    timeout_s=args.timeout_s,
                    raw_tier=args.raw_tier,
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
    figures.update(_fleet(figures, samples_per_s, args.frame_samples))
    return figures


def _fleet(
    figures: dict[str, object], samples_per_s: dict[int, float], frame_samples: int
) -> dict[str, float]:
    """Storage CPU per sample, and the fleet this machine carries at half the better measured
    rate (where publish-to-stored stays well under 1 s): devices streaming 100 Hz all day,
    and devices recording as the emulator does over a treatment (apps/bench/storage.py)."""
    from apps.bench.storage import emulator_duty  # noqa: PLC0415

    influxd_us = figures["ingest_1p_cpu_us_per_frame_influxd"]
    assert isinstance(influxd_us, float)
    half_samples_per_s = max(samples_per_s.values()) / 2
    per_day = emulator_duty()["emulator_recorded_samples_per_day"]
    return {
        "influxd_cpu_us_per_sample": influxd_us / frame_samples,
        "fleet_devices_continuous_100hz": half_samples_per_s / _CONTINUOUS_HZ,
        "fleet_devices_at_emulator_duty": half_samples_per_s * 86_400 / per_day,
        "emulator_recorded_samples_per_device_day": per_day,
    }
