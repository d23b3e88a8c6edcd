"""Batches written at once (`write_concurrency` > 1) against real servers: acknowledged in the
order received, exact counts, an outage with writes in flight spools and loses nothing.

A real HTTP proxy between ingest and InfluxDB holds chosen write requests, so that a later
batch's write deterministically finishes before an earlier one's.
"""

import http.client
import http.server
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import IngestProcess, ingest_env, query, wait_for
from test_faults import Hub, Stack, assert_exactly_stored, frames, metric

from apps.services import InfluxDB, Mosquitto

DATABASE = "concurrent"
HOLD_LIMIT_S = 30.0


class HoldingProxy(http.server.ThreadingHTTPServer):
    """Forwards HTTP requests to InfluxDB; holds the first `hold` writes holding `marker` until
    released, and answers 502 when InfluxDB cannot be reached (as a gateway does)."""

    daemon_threads = True

    def __init__(self, upstream: InfluxDB, *, hold: int, marker: bytes = b"raw,") -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.hold = hold
        self.marker = marker
        self.held = 0
        self.answered_raw_writes = 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HoldingProxy

    def do_GET(self) -> None:
        self._forward(b"")

    def do_POST(self) -> None:
        self._forward(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def _forward(self, body: bytes) -> None:
        proxy = self.server
        raw_write = self.path.startswith("/write") and b"raw," in body
        if raw_write and proxy.marker in body:
            with proxy.lock:
                hold = proxy.held < proxy.hold
                proxy.held += hold
            if hold:
                proxy.release.wait(HOLD_LIMIT_S)
        upstream = http.client.HTTPConnection(proxy.upstream.host, proxy.upstream.port, timeout=10)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            status, reply = answer.status, answer.read()
            content_type = answer.getheader("Content-Type", "text/plain")
        except OSError:
            status, reply, content_type = 502, b"influxdb unreachable\n", "text/plain"
        finally:
            upstream.close()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
        if raw_write and status < 300:
            with proxy.lock:
                proxy.answered_raw_writes += 1

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Mosquitto, InfluxDB]]:
    with Mosquitto(tmp_path / "mosquitto") as broker, InfluxDB(tmp_path / "influxdb") as influx:
        yield broker, influx


def proxied_ingest(
    broker: Mosquitto, influx: InfluxDB, proxy: HoldingProxy, tmp_path: Path, **extra: str
) -> IngestProcess:
    env = ingest_env(broker, influx, DATABASE, "ingest-concurrent", tmp_path, **extra)
    env["OSTEOTEL_INFLUX__URL"] = proxy.url
    env["OSTEOTEL_INFLUX__API"] = "v1"
    return IngestProcess(env, tmp_path)


@pytest.fixture
def proxy(servers: tuple[Mosquitto, InfluxDB]) -> Iterator[HoldingProxy]:
    # The first batch's write: the one holding the first frame (ingest/records.py, `frame`).
    proxy = HoldingProxy(servers[1], hold=1, marker=b" seq=0i,")
    thread = threading.Thread(target=proxy.serve_forever, name="proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.release.set()
        proxy.shutdown()
        proxy.server_close()


def frames_stored(ingest: IngestProcess) -> float:
    return metric(ingest, 'osteotel_ingest_frames_stored_total{device="DX-0001"}') or 0.0


def test_a_later_batch_stored_first_waits_for_the_earlier_ones_acknowledgement(
    servers: tuple[Mosquitto, InfluxDB], proxy: HoldingProxy, tmp_path: Path
) -> None:
    """With the first batch's write held and the second's stored, nothing is acknowledged: after
    a SIGKILL the broker delivers every message of both batches again, and all land once."""
    broker, influx = servers
    ingest = proxied_ingest(
        broker, influx, proxy, tmp_path, write_concurrency="2", batch_max_messages="5"
    )
    ingest.start()
    stack = Stack(broker, influx, ingest, DATABASE)
    hub = Hub(broker)
    try:
        for frame in frames(10):
            hub.publish(frame)
        wait_for(lambda: proxy.answered_raw_writes >= 1, "a later batch to be stored", ingest)
        stored = query(influx, DATABASE, "SELECT count(seq) FROM frame")
        assert stored
        assert stored[0][1] in range(1, 10)  # the later batch is in InfluxDB ...
        assert frames_stored(ingest) == 0.0  # ... and not acknowledged, nor counted stored
        received = metric(ingest, "osteotel_ingest_messages_received_total")
        assert received == 10.0
        ingest.stop(signal.SIGKILL)
        proxy.release.set()
        ingest.start()
        wait_for(lambda: frames_stored(ingest) == 10.0, "every frame stored again", ingest)
        # Every message of both batches came back: none had been acknowledged.
        assert metric(ingest, "osteotel_ingest_messages_received_total") == 10.0
        for frame in frames(5, first_seq=10):
            hub.publish(frame)
    finally:
        hub.close()
    assert_exactly_stored(stack, hub.published)
    assert ingest.stop() == 0


def test_concurrent_writes_store_every_sample_once(
    servers: tuple[Mosquitto, InfluxDB], tmp_path: Path
) -> None:
    """Three batches of five messages written at once: every sample stored once, each frame
    counted stored once, every message in a written batch once."""
    broker, influx = servers
    env = ingest_env(
        broker, influx, DATABASE, "ingest-counts", tmp_path,
        write_concurrency="3", batch_max_messages="5",
    )  # fmt: skip
    ingest = IngestProcess(env, tmp_path)
    ingest.start()
    hub = Hub(broker)
    try:
        for frame in frames(120):
            hub.publish(frame)
    finally:
        hub.close()
    assert_exactly_stored(Stack(broker, influx, ingest, DATABASE), hub.published)
    wait_for(lambda: frames_stored(ingest) == 120.0, "120 frames counted stored", ingest)
    assert metric(ingest, "osteotel_ingest_messages_received_total") == 120.0
    assert metric(ingest, 'osteotel_ingest_pipeline_total{figure="write_messages"}') == 120.0
    assert ingest.stop() == 0


def test_outage_with_writes_in_flight_spools_and_loses_nothing(
    servers: tuple[Mosquitto, InfluxDB], tmp_path: Path
) -> None:
    """Two writes held in flight when InfluxDB stops both fail over to the spool, later batches
    spool behind them, and all is stored once when InfluxDB returns; one outage counted."""
    broker, influx = servers
    proxy = HoldingProxy(influx, hold=2)
    thread = threading.Thread(target=proxy.serve_forever, name="proxy", daemon=True)
    thread.start()
    try:
        ingest = proxied_ingest(
            broker, influx, proxy, tmp_path, write_concurrency="2", batch_max_messages="4"
        )
        ingest.start()
        stack = Stack(broker, influx, ingest, DATABASE)
        hub = Hub(broker)
        try:
            stream = frames(40)
            for frame in [next(stream) for _ in range(10)]:
                hub.publish(frame)
            wait_for(lambda: proxy.held == 2, "two writes in flight", ingest)
            influx.stop()
            proxy.release.set()
            wait_for(lambda: "action=spooling" in ingest.log(), "ingest to spool", ingest)
            for frame in [next(stream) for _ in range(15)]:
                hub.publish(frame)
            wait_for(lambda: frames_stored(ingest) == 25.0, "25 frames spooled", ingest)
            influx.start()
            for frame in stream:
                hub.publish(frame)
        finally:
            hub.close()
        assert_exactly_stored(stack, hub.published)
        wait_for(lambda: "spool_drained" in ingest.log(), "the spool to drain", ingest)
        assert list((tmp_path / "spool").glob("*.lp")) == []
        assert metric(ingest, "osteotel_ingest_store_outages_total") == 1.0
        assert metric(ingest, "osteotel_ingest_store_recovery_seconds_count") == 1.0
        assert frames_stored(ingest) == 40.0
        assert ingest.stop() == 0
    finally:
        proxy.release.set()
        proxy.shutdown()
        proxy.server_close()
