"""The storage ceiling: what influxd spends per raw sample under each way of writing the same data.

One run on this machine against servers the benchmark starts itself on loopback (an influxd
that writes its cache to disk in 1 MiB snapshots and one second after the last write, and
fully compacts a shard two seconds after, so that the cost a write defers to compaction is
inside the measurement; a VictoriaMetrics as a reference), with a bounded data set and a
bounded wait:

1. The bench's frames (apps/bench/publishing.py: the same devices and signals as `bench ingest`)
   are decoded as ingest decodes them and turned into line protocol by ingest's own
   `frame_lines`: the bytes are exactly those ingest writes (`raw` samples plus one `frame`
   point per frame).
2. Each variant writes them into a database of its own, then the server is watched until it is
   idle again (no more than `_IDLE_CPU_FRACTION` of a core for `--quiet-s`): its CPU (user +
   system, /proc/PID/stat) from the first request until then, divided by the samples, is the
   variant's cost. The bench's own CPU over the writes (HTTP, and gzip where it compresses) is
   the client's.
3. Every variant runs `--repeats` times, the variants taking turns within each round, so a slow
   spell of this shared machine falls on all of them; each figure is the median of its rounds,
   and each ratio the median of the per-round ratios to the baseline of the same round.
4. Afterwards every database is counted: the samples and frames stored must equal those written.

Variants (the baseline is what ingest does today: 20,000-line requests, one at a time, plain):
    baseline            ingest's bodies, ~20,000 lines a request (whole frames, as ingest cuts)
    lines_1k, lines_5k, lines_100k
                        the same bodies cut at ~1,000, ~5,000, ~100,000 lines a request
    concurrent_2, concurrent_4
                        20,000-line requests, 2 or 4 in flight at once (one connection each)
    gzip                20,000-line requests sent `Content-Encoding: gzip` (level 1)
    full_digits         the values as a calibrated device gives them (gain and offset applied:
                        15-17 significant digits), ingest's formatter: what digits cost
    float32_digits      the same values rounded to float32 and written in shortest float32 form
                        (OFFLINE only: ingest stores float64 exactly; this prices the bytes)
    two_measurements    force_n in `raw_force`, disp_mm in `raw_disp`: two lines per sample
    unsorted_tags       `raw,hub=..,device=..`: tags out of order, which influxd must sort
    raw_1s              the storage tier outside its full-rate windows (every bench frame is):
                        what ingest writes with raw_tier = "windows", made by ingest's own tier
                        (ingest/tier.py): per frame and UTC second one `raw_1s` point, beside
                        its `frame` point; per sample it represents, like the others
    victoria_metrics    the baseline's bodies to VictoriaMetrics' /api/v2/write (a REFERENCE: a
                        different store, milliseconds, no InfluxQL; its CPU, not influxd's)
    store_write         the baseline's bodies through `InfluxStore.write`, the very call ingest
                        makes: shows that the bench's own requests stand for ingest's

Figures (`--json` keys; documented in docs/ingest.md, "The storage ceiling"):
    devices, frames, frame_samples, samples, repeats, cpu_cores
    server_idle_cpu_fraction        influxd's own CPU while nothing is written (a core = 1)
    VARIANT_server_cpu_us_per_sample
                                    the server's CPU per sample, writes and compactions
    VARIANT_deferred_fraction       the part of it spent after the last request was answered
    VARIANT_client_cpu_us_per_sample
                                    the bench's CPU per sample while writing (gzip included)
    VARIANT_samples_per_s           samples over the seconds from first request to last answer
    VARIANT_body_bytes_per_sample   bytes sent per sample (after gzip where it compresses)
    VARIANT_cpu_window_s            seconds from the first request until the server was idle
    VARIANT_samples_stored, VARIANT_frames_stored
                                    counted in the store; the round furthest from `samples`
                                    and `frames` is the one reported
    VARIANT_vs_baseline             baseline server CPU per sample over this variant's, same
                                    round, median (above 1: the variant costs the server less)
    emulator_days, emulator_recorded_samples_per_day,
    emulator_full_rate_window_samples_per_day
                                    one emulated normal treatment (devices/emulator, defaults):
                                    its length, the samples it records per device-day, and those
                                    inside step and probe windows and load tests
    tier_stored_fraction_at_emulator_duty, tier_stored_fraction_continuous_100hz
                                    samples a tier would store (full rate inside those windows,
                                    `_DOWNSAMPLED_HZ` outside) over the samples stored today, at
                                    the emulator's recording windows and for a device streaming
                                    100 Hz around the clock
"""

import argparse
import contextlib
import gzip
import os
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from apps.bench.processes import cpu_s, device_ids, wait

if TYPE_CHECKING:
    from devices.codec import Encoding
    from devices.contract import Frame
    from osteotel.store.http import HttpClient

__all__ = ["VARIANTS", "Variant", "configure", "emulator_duty", "run"]

Body = Literal[
    "ingest", "full_digits", "float32_digits", "two_measurements", "unsorted_tags", "raw_1s"
]

_BASELINE_LINES = 20_000  # ingest's batch_max_lines before this benchmark
_POLL_S = 0.25
_IDLE_CPU_FRACTION = 0.02
_SNAPSHOT_BYTES = 1_048_576
_DOWNSAMPLED_HZ = 1.0  # the storage tier's series outside the full-rate windows
_GZIP_LEVEL = 1
# A calibrated device's gain and offset (values like ingest/calibration.py applies).
_GAIN, _OFFSET_N = 1.0137, -0.42


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of writing the data: body form, request size, requests in flight, compression."""

    name: str
    body: Body = "ingest"
    lines_per_request: int = _BASELINE_LINES
    concurrency: int = 1
    gzip: bool = False
    server: Literal["influxd", "victoria_metrics"] = "influxd"
    through_store: bool = False  # written by osteotel's InfluxStore.write, as ingest writes


VARIANTS = (
    Variant("baseline"),
    Variant("lines_1k", lines_per_request=1_000),
    Variant("lines_5k", lines_per_request=5_000),
    Variant("lines_100k", lines_per_request=100_000),
    Variant("concurrent_2", concurrency=2),
    Variant("concurrent_4", concurrency=4),
    Variant("gzip", gzip=True),
    Variant("full_digits", body="full_digits"),
    Variant("float32_digits", body="float32_digits"),
    Variant("two_measurements", body="two_measurements"),
    Variant("unsorted_tags", body="unsorted_tags"),
    Variant("raw_1s", body="raw_1s"),
    Variant("victoria_metrics", server="victoria_metrics"),
    Variant("store_write", through_store=True),
)
"""Every variant, in the order each round runs them; `baseline` first."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of `osteotel bench storage`."""
    parser.add_argument("--devices", type=int, default=50, help="devices (default 50)")
    parser.add_argument("--frames", type=int, default=5_000, help="frames (default 5000)")
    parser.add_argument(
        "--frame-samples", type=int, default=100, help="samples per frame (default 100)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of every variant; medians (default 3)"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=300.0, help="bound on each wait, s (default 300)"
    )
    parser.add_argument(
        "--quiet-s",
        type=float,
        default=4.0,
        help="idle stretch that ends a variant, s (default 4: longer than influxd's cold "
        "durations, so a pending compaction has started and is counted)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default temp)")


# --- the bodies -------------------------------------------------------------------------------


_Decoded = list[tuple[str, "Frame", "Encoding"]]


def _frames(ids: list[tuple[str, str]], frames: int, frame_samples: int) -> _Decoded:
    """(hub, frame, encoding) for each message, decoded as ingest decodes it."""
    from apps.bench.publishing import sustained_messages  # noqa: PLC0415
    from devices.codec import decode_frame  # noqa: PLC0415

    decoded: _Decoded = []
    for message in sustained_messages(ids, frames, frame_samples):
        _, _, hub, device, _ = message.topic.split("/")
        frame, encoding = decode_frame(message.payload, topic_device=device)
        decoded.append((hub, frame, encoding))
    return decoded


def _float32_text(values: object) -> list[str]:
    import numpy as np  # noqa: PLC0415

    # str() of a numpy float32 is its shortest round-trip form ("150.23", not 150.22999572...).
    return [str(value) for value in np.asarray(values, dtype=np.float32)]


def _frame_bodies(decoded: _Decoded, body: Body) -> list[bytes]:
    """Each frame's line protocol in the variant's form."""
    import numpy as np  # noqa: PLC0415

    from devices.contract import Frame  # noqa: PLC0415
    from ingest.records import frame_lines  # noqa: PLC0415
    from osteotel.store.lineproto import array_lines  # noqa: PLC0415

    bodies = []
    for hub, decoded_frame, encoding in decoded:
        frame = decoded_frame
        if body in ("full_digits", "float32_digits"):
            frame = Frame(
                frame.device,
                frame.seq,
                frame.t0_ns,
                frame.rate_hz,
                frame.force_n * _GAIN + _OFFSET_N,
                frame.disp_mm * _GAIN,
            )
        lines = frame_lines(hub, frame, encoding)
        cut = lines.rindex(b"\n", 0, -1) + 1  # the last line is the `frame` point
        raw, meta = lines[:cut], lines[cut:]
        prefix = f"raw,device={frame.device},hub={hub} ".encode()
        if body == "float32_digits":
            times = frame.timestamps_ns()
            raw = "".join(
                f"raw,device={frame.device},hub={hub} force_n={f},disp_mm={d} {t}\n"
                for f, d, t in zip(
                    _float32_text(frame.force_n),
                    _float32_text(frame.disp_mm),
                    times.tolist(),
                    strict=True,
                )
            ).encode()
        elif body == "two_measurements":
            tags = {"hub": hub, "device": frame.device}
            times = np.asarray(frame.timestamps_ns(), dtype=np.int64)
            raw = array_lines("raw_force", tags, {"force_n": frame.force_n}, times)
            raw += array_lines("raw_disp", tags, {"disp_mm": frame.disp_mm}, times)
        elif body == "unsorted_tags":
            raw = raw.replace(prefix, f"raw,hub={hub},device={frame.device} ".encode())
        elif body == "raw_1s":
            raw, meta = _tier_lines(hub, frame, encoding), b""
        bodies.append(raw + meta)
    return bodies


def _tier_lines(hub: str, frame: "Frame", encoding: "Encoding") -> bytes:
    """What ingest's storage tier writes for a frame outside every window, by its own code."""
    from ingest.accounting import Accounting  # noqa: PLC0415
    from ingest.tier import Tier  # noqa: PLC0415
    from ingest.work import Work  # noqa: PLC0415
    from osteotel.mqtt import Received  # noqa: PLC0415

    work = Work(Received("bench", b"", 0, 1, 0), [], 1)
    tier = Tier(before_s=30.0, after_s=600.0, accounting=Accounting())  # no step: no window
    tier.write([(work, hub, frame, encoding)])
    assert work.raw_points == 0, "a bench frame was kept at full rate"
    return b"".join(work.lines)


def _requests(frame_bodies: list[bytes], lines_per_request: int) -> list[bytes]:
    """Whole frames joined into requests, each cut once it holds `lines_per_request` lines."""
    requests, current, lines = [], [], 0
    for body in frame_bodies:
        current.append(body)
        lines += body.count(b"\n")
        if lines >= lines_per_request:
            requests.append(b"".join(current))
            current, lines = [], 0
    if current:
        requests.append(b"".join(current))
    return requests


# --- measuring --------------------------------------------------------------------------------


def _until_idle(pid: int, timeout_s: float, quiet_s: float) -> tuple[float, float]:
    """Wait until the process used under `_IDLE_CPU_FRACTION` of a core for `quiet_s`.

    Returns:
        (its CPU seconds, the wall time) at the end of the quiet stretch: what the process
        did in it (a cache snapshot, a compaction under the threshold) counts too.
    """
    history = [(time.monotonic(), cpu_s([pid]))]
    deadline = history[0][0] + timeout_s
    window = max(1, round(quiet_s / _POLL_S))
    while True:
        time.sleep(_POLL_S)
        history.append((time.monotonic(), cpu_s([pid])))
        if len(history) > window:
            (start_t, start_cpu), (end_t, end_cpu) = history[-window - 1], history[-1]
            if end_cpu - start_cpu <= _IDLE_CPU_FRACTION * (end_t - start_t):
                return end_cpu, end_t
        if history[-1][0] > deadline:
            raise TimeoutError(f"the server (pid {pid}) was not idle within {timeout_s:g} s")


def _send_all(
    client: "HttpClient", url: str, requests: list[bytes], *, concurrency: int, compress: bool
) -> int:
    """POST every request, `concurrency` at a time; returns the bytes sent."""
    from osteotel.store.http import check_status  # noqa: PLC0415

    lock = threading.Lock()
    sent = [0]

    def post(body: bytes) -> None:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if compress:
            body = gzip.compress(body, compresslevel=_GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        response = client.request(
            "POST", url, body=body, headers=headers, timeout_s=60.0, action="bench write"
        )
        check_status(response, action="bench write")
        with lock:
            sent[0] += len(body)

    if concurrency == 1:
        for body in requests:
            post(body)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(post, requests))
    return sent[0]


def _store_all(url: str, database: str, requests: list[bytes]) -> int:
    """Write every request through osteotel's store, one after another; returns the bytes."""
    from osteotel.settings import InfluxSettings  # noqa: PLC0415
    from osteotel.store.influx import InfluxStore  # noqa: PLC0415

    with InfluxStore(InfluxSettings(url=url, database=database, api="v1")) as store:
        for body in requests:
            store.write(body)
    return sum(map(len, requests))


@dataclass(frozen=True, slots=True)
class _Server:
    pid: int
    url: str
    write_url: Callable[[str], str]  # database name -> write URL
    count: Callable[[str, Body], tuple[int, int]]  # database -> (samples, frames) stored


def _measure(
    server: _Server,
    variant: Variant,
    requests: list[bytes],
    database: str,
    args: argparse.Namespace,
) -> dict[str, float]:
    """One variant once: server CPU to idle, client CPU, rate, bytes (per sample later)."""
    from osteotel.store.http import HttpClient  # noqa: PLC0415

    client = HttpClient()
    url = server.write_url(database)
    try:
        _until_idle(server.pid, args.timeout_s, args.quiet_s)
        server_before, client_before = cpu_s([server.pid]), time.process_time()
        started = time.monotonic()
        if variant.through_store:
            sent = _store_all(server.url, database, requests)
        else:
            sent = _send_all(
                client, url, requests, concurrency=variant.concurrency, compress=variant.gzip
            )
        written_s = time.monotonic() - started
        client_used = time.process_time() - client_before
        server_written = cpu_s([server.pid])
        server_idle, idle_t = _until_idle(server.pid, args.timeout_s, args.quiet_s)
    finally:
        client.close()
    server_used = server_idle - server_before
    return {
        "server_cpu_s": server_used,
        "deferred_fraction": (server_idle - server_written) / server_used if server_used else 0.0,
        "client_cpu_s": client_used,
        "written_s": written_s,
        "body_bytes": float(sent),
        "cpu_window_s": idle_t - started,
    }


def _influx_server(pid: int, url: str) -> _Server:
    from osteotel.settings import InfluxSettings  # noqa: PLC0415
    from osteotel.store.influx import InfluxStore  # noqa: PLC0415

    def write_url(database: str) -> str:
        with InfluxStore(InfluxSettings(url=url, database=database, api="v1")) as store:
            store.ensure_database()
        return f"{url}/write?" + urllib.parse.urlencode({"db": database, "precision": "ns"})

    def count(database: str, body: Body) -> tuple[int, int]:
        samples = {  # fixed statements: samples as each body keeps them
            "two_measurements": (
                "SELECT count(force_n) FROM raw_force",
                "SELECT count(disp_mm) FROM raw_disp",
            ),
            "raw_1s": ("SELECT sum(n) FROM raw_1s", "SELECT sum(n) FROM raw_1s"),
        }.get(body, ("SELECT count(force_n) FROM raw", "SELECT count(disp_mm) FROM raw"))
        with InfluxStore(InfluxSettings(url=url, database=database, api="v1")) as store:
            rows = [store.query(statement) for statement in samples]
            rows.append(store.query("SELECT count(seq) FROM frame"))
        force_n, disp_mm, frames = (int(r[0].values[0][1]) if r else 0 for r in rows)
        return min(force_n, disp_mm), frames

    return _Server(pid=pid, url=url, write_url=write_url, count=count)


def _victoria_server(pid: int, url: str) -> _Server:
    import json  # noqa: PLC0415

    from osteotel.store.http import HttpClient, check_status  # noqa: PLC0415

    def write_url(database: str) -> str:
        # `db` becomes a label: each round's copy of the data is a series set of its own.
        return f"{url}/api/v2/write?" + urllib.parse.urlencode({"db": database})

    def count(database: str, _body: Body) -> tuple[int, int]:
        client = HttpClient()
        try:
            check_status(
                client.request(
                    "GET", f"{url}/internal/force_flush", timeout_s=30.0, action="flush"
                ),
                action="flush",
            )
            counts = []
            for metric in ("raw_force_n", "raw_disp_mm", "frame_seq"):
                query = urllib.parse.urlencode(
                    {"query": f'sum(count_over_time({metric}{{db="{database}"}}[30d]))'}
                )
                answer = check_status(
                    client.request(
                        "GET", f"{url}/api/v1/query?{query}", timeout_s=60.0, action="count"
                    ),
                    action="count",
                )
                result = json.loads(answer.body)["data"]["result"]
                counts.append(int(float(result[0]["value"][1])) if result else 0)
        finally:
            client.close()
        force_n, disp_mm, frames = counts
        return min(force_n, disp_mm), frames

    return _Server(pid=pid, url=url, write_url=write_url, count=count)


def emulator_duty() -> dict[str, float]:
    """Recorded seconds per device-day of one emulated normal treatment, inside the windows a
    storage tier would keep at full rate (steps and probes with their windows, load tests)
    and outside them (gait bouts, periodic windows), and what such a tier would store."""
    import numpy as np  # noqa: PLC0415

    from devices.emulator.timeline import DeviceConfig, build_timeline  # noqa: PLC0415

    config = DeviceConfig(device="DX-0001", hub="HUB-001")
    start_ns = 1_700_000_000 * 10**9
    timeline = build_timeline(config, start_ns=start_ns, end_ns=start_ns + 400 * 86_400 * 10**9)
    days = timeline.end_s / 86_400
    recorded_s = sum(segment.end_s - segment.start_s for segment in timeline.segments)
    around_s = np.concatenate([timeline.steps.t_s, timeline.probes.t_s])
    kept = [(t - config.window_before_s, t + config.window_after_s) for t in around_s.tolist()]
    kept += [(seg.start_s, seg.end_s) for seg in timeline.segments if seg.load_test]
    kept_s, reach_s = 0.0, -np.inf
    for start_s, end_s in sorted(kept):  # the length of the union of the windows
        kept_s += max(0.0, end_s - max(start_s, reach_s))
        reach_s = max(reach_s, end_s)
    rate_hz = config.rate_hz
    tiered = kept_s * rate_hz + (recorded_s - kept_s) * _DOWNSAMPLED_HZ
    continuous = 86_400 * days * rate_hz
    continuous_tiered = kept_s * rate_hz + (86_400 * days - kept_s) * _DOWNSAMPLED_HZ
    return {
        "emulator_days": days,
        "emulator_recorded_samples_per_day": recorded_s * rate_hz / days,
        "emulator_full_rate_window_samples_per_day": kept_s * rate_hz / days,
        "tier_stored_fraction_at_emulator_duty": tiered / (recorded_s * rate_hz),
        "tier_stored_fraction_continuous_100hz": continuous_tiered / continuous,
    }


def _furthest(values: list[int], expected: int) -> int:
    return max(values, key=lambda value: abs(value - expected))


def run(args: argparse.Namespace) -> dict[str, object]:
    """Measure every variant `--repeats` times and return the figures (keys in the docstring)."""
    from apps.services import InfluxDB, VictoriaMetrics  # noqa: PLC0415
    from osteotel.floatfmt import warm_up  # noqa: PLC0415

    class ColdInfluxDB(InfluxDB):
        """influxd that writes its cache to disk and compacts soon after writes stop."""

        def _prepare(self) -> None:
            super()._prepare()
            config = self.config_path.read_text(encoding="utf-8")
            config = config.replace(
                "  query-log-enabled = false\n",
                "  query-log-enabled = false\n"
                '  cache-snapshot-write-cold-duration = "1s"\n'
                '  compact-full-write-cold-duration = "2s"\n'
                f'  cache-snapshot-memory-size = "{_SNAPSHOT_BYTES}"\n',
            )
            self.config_path.write_text(config, encoding="utf-8")

    warm_up()
    duty = emulator_duty()
    ids = device_ids(args.devices)
    samples = args.frames * args.frame_samples
    decoded = _frames(ids, args.frames, args.frame_samples)
    by_body = {v.body: _frame_bodies(decoded, v.body) for v in VARIANTS}
    requests = {v.name: _requests(by_body[v.body], v.lines_per_request) for v in VARIANTS}
    cores = os.cpu_count() or 1
    figures: dict[str, object] = {
        "devices": args.devices,
        "frames": args.frames,
        "frame_samples": args.frame_samples,
        "samples": samples,
        "repeats": args.repeats,
        "cpu_cores": cores,
    }
    rounds: dict[str, list[dict[str, float]]] = {v.name: [] for v in VARIANTS}
    stored: dict[str, list[tuple[int, int]]] = {v.name: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="osteotel-bench-storage-") as temp:
        workdir = Path(args.workdir) if args.workdir is not None else Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        with (
            ColdInfluxDB(workdir / "influxdb") as influx,
            VictoriaMetrics(workdir / "victoria-metrics") as victoria,
        ):
            assert influx.pid is not None
            assert victoria.pid is not None
            servers = {
                "influxd": _influx_server(influx.pid, influx.url),
                "victoria_metrics": _victoria_server(victoria.pid, victoria.url),
            }
            idle_cpu, idle_t = cpu_s([influx.pid]), time.monotonic()
            time.sleep(2.0)
            figures["server_idle_cpu_fraction"] = (cpu_s([influx.pid]) - idle_cpu) / (
                time.monotonic() - idle_t
            )
            for repeat in range(args.repeats):
                for variant in VARIANTS:
                    database = f"storage_{variant.name}_{repeat}"
                    server = servers[variant.server]
                    rounds[variant.name].append(
                        _measure(server, variant, requests[variant.name], database, args)
                    )
            for variant in VARIANTS:
                server = servers[variant.server]
                for repeat in range(args.repeats):
                    database = f"storage_{variant.name}_{repeat}"
                    stored[variant.name].append(
                        _wait_count(server, database, variant.body, samples, args.frames)
                    )
    figures.update(duty)
    baseline = rounds["baseline"]
    for variant in VARIANTS:
        name, results, n = variant.name, rounds[variant.name], samples

        def median(key: str, results: list[dict[str, float]] = results) -> float:
            return statistics.median(r[key] for r in results)

        figures[f"{name}_server_cpu_us_per_sample"] = median("server_cpu_s") * 1e6 / n
        figures[f"{name}_deferred_fraction"] = median("deferred_fraction")
        figures[f"{name}_client_cpu_us_per_sample"] = median("client_cpu_s") * 1e6 / n
        figures[f"{name}_samples_per_s"] = n / median("written_s")
        figures[f"{name}_body_bytes_per_sample"] = median("body_bytes") / n
        figures[f"{name}_cpu_window_s"] = median("cpu_window_s")
        figures[f"{name}_samples_stored"] = _furthest([s for s, _ in stored[name]], samples)
        figures[f"{name}_frames_stored"] = _furthest([f for _, f in stored[name]], args.frames)
        # A tiny run can see no clock tick of server CPU in a round: no ratio for that round.
        ratios = [
            b["server_cpu_s"] / r["server_cpu_s"]
            for b, r in zip(baseline, results, strict=True)
            if b["server_cpu_s"] > 0 and r["server_cpu_s"] > 0
        ]
        figures[f"{name}_vs_baseline"] = statistics.median(ratios) if ratios else None
    return figures


def _wait_count(
    server: _Server, database: str, body: Body, samples: int, frames: int
) -> tuple[int, int]:
    """The counts once they reach what was written, or as they stand after a bounded wait."""
    counts = [server.count(database, body)]

    def complete() -> bool:
        counts.append(server.count(database, body))
        return counts[-1] == (samples, frames)

    # On a timeout the counts are reported as they stand: the test compares them with `samples`.
    with contextlib.suppress(TimeoutError):
        wait(complete, f"{database} to count every sample", 10.0, poll_s=0.5)
    return counts[-1]
