"""What ingest did, for Prometheus (`/metrics`) and for the data-quality board (InfluxDB).

Counters live in `Accounting` (plain integers on the hot path); a collector turns them into
Prometheus metric families only when `/metrics` is scraped. Latency histograms are observed
once per stored message:

- `osteotel_ingest_receive_to_stored_seconds{device}`: from receipt to durable (stored or
  spooled) — what ingest itself adds;
- `osteotel_ingest_sample_to_stored_seconds{device}`: from the frame's last sample to durable —
  what the clinician waits, hub buffering and broker queueing included.

An InfluxDB outage counts once in `osteotel_ingest_store_outages_total` when a write first
fails, and once in the histogram `osteotel_ingest_store_recovery_seconds` when it is over: from
InfluxDB answering again to the spool drained, after which batches are written directly.

The same counters go to InfluxDB every `stats_interval_s` as `ingest_stats` points (one per
device) and an `ingest_status` point (spool depth), so the board needs no Prometheus.
"""

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from osteotel.logs import kv
from osteotel.store.lineproto import point_line

from .accounting import Accounting
from .spool import Spool

__all__ = ["HealthServer", "IngestMetrics", "stats_lines"]

log = logging.getLogger("osteotel.ingest.metrics")

_LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# A recovery drains what the outage spooled: seconds for a short one, minutes for hours away.
_RECOVERY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
_DEVICE_COUNTERS = (
    ("received", "frames_received", "Valid frames received"),
    ("stored", "frames_stored", "Frames stored in InfluxDB or the spool"),
    ("samples_stored", "samples_stored", "Samples stored in InfluxDB or the spool"),
    ("duplicates", "frames_duplicate", "Frames received again (same seq and t0_ns), not stored"),
    ("seq_gaps", "seq_gaps", "Frame sequence numbers found missing"),
    ("out_of_order", "frames_out_of_order", "Frames that filled a sequence gap late"),
    ("seq_resets", "seq_resets", "Times a device restarted its frame counter"),
)


class _AccountingCollector(Collector):
    def __init__(self, accounting: Accounting, spool: Spool) -> None:
        self._accounting = accounting
        self._spool = spool

    def collect(self) -> Iterable[Metric]:
        for attribute, name, documentation in _DEVICE_COUNTERS:
            family = CounterMetricFamily(
                f"osteotel_ingest_{name}", documentation, labels=["device"]
            )
            for device, counts in self._accounting.devices.items():
                family.add_metric([device], getattr(counts, attribute))
            yield family
        rejected = CounterMetricFamily(
            "osteotel_ingest_rejected",
            "Messages rejected, by hub and reason",
            labels=["hub", "reason"],
        )
        for (hub, reason), count in self._accounting.rejected.items():
            rejected.add_metric([hub, reason], count)
        yield rejected
        again = CounterMetricFamily(
            "osteotel_ingest_rejected_again",
            "Rejected messages the broker delivered again, not counted in rejected a second time",
            labels=["hub", "reason"],
        )
        for (hub, reason), count in self._accounting.rejected_again.items():
            again.add_metric([hub, reason], count)
        yield again
        stages = CounterMetricFamily(
            "osteotel_ingest_stage_seconds",
            "The event loop's CPU time by stage "
            "(handle contains validate, lines, dsp and checkpoint)",
            labels=["stage"],
        )
        for stage, spent_ns in sorted(self._accounting.stage_ns.items()):
            stages.add_metric([stage], spent_ns / 1e9)
        yield stages
        pipeline = CounterMetricFamily(
            "osteotel_ingest_pipeline",
            "Where the write pipeline waits, cumulative (docs/ingest.md, 'Writes in flight'); "
            "a figure ending in _ns is nanoseconds of wall time, the others are counts",
            labels=["figure"],
        )
        for figure, value in sorted(self._accounting.pipeline.items()):
            pipeline.add_metric([figure], value)
        yield pipeline
        threads = CounterMetricFamily(
            "osteotel_ingest_thread_cpu_seconds",
            "CPU time of the live threads: loop (the event loop), mqtt (paho's network thread), "
            "workers (the rest: InfluxDB writes, file syncs)",
            labels=["thread"],
        )
        for thread, seconds in thread_cpu_s().items():
            threads.add_metric([thread], seconds)
        yield threads
        yield CounterMetricFamily(
            "osteotel_ingest_messages_received",
            "Messages the broker delivered to this process, valid or not",
            self._accounting.messages_received,
        )
        yield CounterMetricFamily(
            "osteotel_ingest_messages_foreign",
            "Messages delivered for a hub another partition owns: acknowledged, not stored",
            self._accounting.messages_foreign,
        )
        yield GaugeMetricFamily(
            "osteotel_ingest_last_stored_timestamp_seconds",
            "When a frame was last stored in InfluxDB or the spool (Unix time; 0: never)",
            self._accounting.last_stored_ns / 1e9,
        )
        accounting = self._accounting
        points = CounterMetricFamily(
            "osteotel_ingest_points_written",
            "Points made durable, by measurement: raw (samples at full rate) and raw_1s "
            "(1 s summaries of frames kept out of raw, ingest.raw_tier = windows)",
            labels=["measurement"],
        )
        points.add_metric(["raw"], accounting.raw_points_written)
        points.add_metric(["raw_1s"], accounting.raw_1s_points_written)
        yield points
        yield CounterMetricFamily(
            "osteotel_ingest_raw_1s_samples",
            "Samples summarised in the raw_1s points made durable",
            accounting.raw_1s_samples_written,
        )
        yield CounterMetricFamily(
            "osteotel_ingest_tier_frames_released",
            "Held frames a later step or probe wrote to raw (its window's seconds before it)",
            accounting.tier_frames_released,
        )
        yield CounterMetricFamily(
            "osteotel_ingest_tier_hold_dropped",
            "Frames let go of by a full hold before their time: a step arriving later finds "
            "their samples in raw_1s and the capture files only",
            accounting.tier_hold_dropped,
        )
        yield CounterMetricFamily(
            "osteotel_ingest_capture_messages",
            "Messages appended to the capture files and made durable",
            accounting.capture_messages,
        )
        yield CounterMetricFamily(
            "osteotel_ingest_capture_bytes",
            "Bytes appended to the capture files and made durable",
            accounting.capture_bytes,
        )
        yield GaugeMetricFamily(
            "osteotel_ingest_spool_bytes", "Bytes waiting in the spool", self._spool.size_bytes
        )
        yield GaugeMetricFamily(
            "osteotel_ingest_spool_batches", "Batches waiting in the spool", self._spool.batches
        )
        yield GaugeMetricFamily(
            "osteotel_ingest_spool_max_bytes", "The spool's size limit", self._spool.max_bytes
        )


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's live threads by kind, from /proc/self/task (Linux; empty
    elsewhere). Python does not name the kernel's threads, so they are told apart by their
    Python names: MainThread runs the event loop, paho names its network thread `paho-...`."""
    if not Path("/proc/self/task").is_dir():
        return {}
    seconds = {"loop": 0.0, "mqtt": 0.0, "workers": 0.0}
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    for thread in threading.enumerate():
        name = thread.name
        kind = "loop" if name == "MainThread" else "mqtt" if name.startswith("paho") else "workers"
        try:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue  # not started, or ended since enumerate()
        fields = stat.rsplit(")", 1)[1].split()
        seconds[kind] += (int(fields[11]) + int(fields[12])) * tick_s  # utime, stime
    return seconds


class IngestMetrics:
    """The Prometheus registry of one ingest process."""

    def __init__(self, accounting: Accounting, spool: Spool) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_AccountingCollector(accounting, spool))
        self.receive_to_stored_s = Histogram(
            "osteotel_ingest_receive_to_stored_seconds",
            "From receipt to durable storage, per message",
            ["device"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.sample_to_stored_s = Histogram(
            "osteotel_ingest_sample_to_stored_seconds",
            "From a frame's last sample to durable storage",
            ["device"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._latencies: dict[str, tuple[Histogram, Histogram]] = {}
        self.store_outages = Counter(
            "osteotel_ingest_store_outages",
            "Times InfluxDB became unavailable to ingest's writes",
            registry=self.registry,
        )
        self.store_recovery_s = Histogram(
            "osteotel_ingest_store_recovery_seconds",
            "From InfluxDB answering after an outage to the spool drained",
            buckets=_RECOVERY_BUCKETS_S,
            registry=self.registry,
        )

    def latencies(self, device: str) -> tuple[Histogram, Histogram]:
        """A device's receive-to-stored and sample-to-stored histograms: its labels are looked
        up once, not once per frame."""
        latencies = self._latencies.get(device)
        if latencies is None:
            latencies = (
                self.receive_to_stored_s.labels(device),
                self.sample_to_stored_s.labels(device),
            )
            self._latencies[device] = latencies
        return latencies

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)


def stats_lines(accounting: Accounting, spool: Spool, *, instance: str, now_ns: int) -> bytes:
    """`ingest_stats` per device and one `ingest_status` point, as line protocol."""
    lines = [
        point_line(
            "ingest_stats",
            {"device": device, "instance": instance},
            {name: getattr(counts, attribute) for attribute, name, _ in _DEVICE_COUNTERS},
            now_ns,
        )
        for device, counts in accounting.devices.items()
    ]
    rejected, again = accounting.rejected, accounting.rejected_again
    lines.extend(
        point_line(
            "ingest_rejections",
            {"hub": hub, "reason": reason, "instance": instance},
            {"rejected": rejected[hub, reason], "rejected_again": again[hub, reason]},
            now_ns,
        )
        for hub, reason in sorted(rejected.keys() | again.keys())
    )
    lines.append(
        point_line(
            "ingest_status",
            {"instance": instance},
            {
                "spool_bytes": spool.size_bytes,
                "spool_batches": spool.batches,
                "spool_max_bytes": spool.max_bytes,
                "raw_points": accounting.raw_points_written,
                "raw_1s_points": accounting.raw_1s_points_written,
                "raw_1s_samples": accounting.raw_1s_samples_written,
            },
            now_ns,
        )
    )
    return b"".join(lines)


class HealthServer:
    """A minimal HTTP endpoint: `/metrics`, `/healthz` (alive) and `/readyz` (can do its job).

    Args:
        host: address to listen on.
        port: TCP port; 0 picks a free one (see `port` after start).
        metrics: what `/metrics` serves.
        ready: tells whether the service is ready (connected, not blocked on a full spool).
    """

    def __init__(
        self, *, host: str, port: int, metrics: IngestMetrics, ready: Callable[[], bool]
    ) -> None:
        self._host = host
        self.port = port
        self._metrics = metrics
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> "HealthServer":
        self._server = await asyncio.start_server(self._serve, self._host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(kv("http_listening", host=self._host, port=self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _answer(self, path: str) -> tuple[str, bytes, str]:
        if path == "/metrics":
            return "200 OK", self._metrics.exposition(), "text/plain; version=0.0.4"
        if path == "/healthz":
            return "200 OK", b"ok\n", "text/plain"
        if path == "/readyz":
            if self._ready():
                return "200 OK", b"ready\n", "text/plain"
            return "503 Service Unavailable", b"not ready\n", "text/plain"
        return "404 Not Found", b"not found\n", "text/plain"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing here needs them
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, body, content_type = self._answer(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
