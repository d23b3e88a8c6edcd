"""`osteotel ingest` as a real process, for the end-to-end and fault tests, and an emulated
treatment published to it by an independent publisher and compared with `osteotel analyze`
(tests/test_crash_recovery.py, tests/test_move.py)."""

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from apps.analyze import analyze_capture
from apps.services import InfluxDB, Mosquitto, free_ports
from devices.codec import decode_frame
from devices.emulator.capture import CapturedMessage, capture_fleet, read_capture
from devices.emulator.fleet import FleetPlan
from devices.registry import Registry
from dsp.estimator import EstimateRecord
from ingest.estimates import dsp_protocol, estimate_line
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore, Series

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_REGISTRY = REPO / "deploy" / "registry.example.toml"
DEADLINE_S = 60.0
# Starting ingest compiles the numba kernels when their on-disk cache is cold (a new clone).
START_DEADLINE_S = 240.0
# The estimates an emulated treatment is compared on.
MEASUREMENTS = ("step", "load_share", "daily")
_RATE_HZ = 10.0  # the slowest rate that resolves the fast relaxation (docs/domain.md)
_PUBLISH_PER_S = 600.0
PAST_KILL = 150  # messages the publisher may run ahead of a kill point meanwhile
_DAY_NS = 86_400_000_000_000


@dataclass
class IngestProcess:
    """One `osteotel ingest` process and where it keeps its files."""

    env: dict[str, str]
    workdir: Path
    args: tuple[str, ...] = ()
    processes: int = 1
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def log_path(self) -> Path:
        return self.workdir / "ingest.log"

    @property
    def dead_letter_dir(self) -> Path:
        return self.workdir / "dead-letter"

    def http_url(self, partition: int = 0) -> str:
        """The HTTP endpoint of one process (`--processes N`: child k on `http_port + k`)."""
        return f"http://127.0.0.1:{int(self.env['OSTEOTEL_INGEST__HTTP_PORT']) + partition}"

    def get(self, path: str, partition: int = 0) -> tuple[int, str]:
        """GET one of ingest's HTTP endpoints; returns the status and the body."""
        request = urllib.request.Request(self.http_url(partition) + path)  # noqa: S310
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def start(self) -> None:
        """Start ingest and wait until it is subscribed."""
        self.starts += self.processes
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "apps.cli", "ingest", *self.args],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: self.log().count("ingest_started") >= self.starts,
            "ingest to start",
            self,
            deadline_s=START_DEADLINE_S,
        )

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        """Signal ingest and wait for it to exit; returns its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def running_ingest(env: dict[str, str], workdir: Path, **options: Any) -> Iterator[IngestProcess]:
    """Start `osteotel ingest`, and on leaving check that it stops cleanly (exit status 0)."""
    running = IngestProcess(env, workdir, **options)
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0


def ingest_env(
    mosquitto: Mosquitto, influxdb: InfluxDB, database: str, client_id: str, workdir: Path,
    **extra: str,
) -> dict[str, str]:  # fmt: skip
    """The environment that points `osteotel ingest` at these servers and this workdir."""
    return {
        **os.environ,
        "OSTEOTEL_MQTT__HOST": mosquitto.host,
        "OSTEOTEL_MQTT__PORT": str(mosquitto.port),
        "OSTEOTEL_MQTT__CLIENT_ID": client_id,
        "OSTEOTEL_INFLUX__URL": influxdb.url,
        "OSTEOTEL_INFLUX__DATABASE": database,
        "OSTEOTEL_INGEST__REGISTRY": str(EXAMPLE_REGISTRY),
        "OSTEOTEL_INGEST__DEAD_LETTER_DIR": str(workdir / "dead-letter"),
        "OSTEOTEL_INGEST__SPOOL_DIR": str(workdir / "spool"),
        "OSTEOTEL_INGEST__STATE_DIR": str(workdir / "state"),
        "OSTEOTEL_INGEST__BATCH_MAX_DELAY_S": "0.05",
        # With --processes N, child k listens on this port + k.
        "OSTEOTEL_INGEST__HTTP_PORT": str(free_ports(4)),
        **{f"OSTEOTEL_INGEST__{key.upper()}": value for key, value in extra.items()},
    }


def alerts_env(
    mosquitto: Mosquitto, webhook_url: str, workdir: Path, client_id: str
) -> dict[str, str]:
    """`osteotel alerts run` on the example registry, notifying one webhook only, quick timers."""
    return {
        **os.environ,
        "OSTEOTEL_MQTT__HOST": mosquitto.host,
        "OSTEOTEL_MQTT__PORT": str(mosquitto.port),
        "OSTEOTEL_ALERTS__DATA_DIR": str(workdir / "data"),
        "OSTEOTEL_ALERTS__REGISTRY": str(EXAMPLE_REGISTRY),
        "OSTEOTEL_ALERTS__CLIENT_ID": client_id,
        "OSTEOTEL_ALERTS__WEBHOOK_URLS": json.dumps([webhook_url]),
        "OSTEOTEL_ALERTS__MQTT_ALERTS": "false",
        "OSTEOTEL_ALERTS__WRITE_HISTORY": "false",
        "OSTEOTEL_ALERTS__WATCH_TELEMETRY": "false",
        "OSTEOTEL_ALERTS__HTTP_PORT": "0",
        "OSTEOTEL_ALERTS__TICK_S": "0.2",
        "OSTEOTEL_ALERTS__RETRY_MIN_S": "0.2",
    }


def wait_for(
    condition: Callable[[], bool],
    what: str,
    ingest: IngestProcess | None = None,
    *,
    deadline_s: float = DEADLINE_S,
) -> None:
    """Poll `condition` until it holds; fail the test after `deadline_s` or if ingest died."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return
        if ingest is not None and ingest.process is not None and ingest.process.poll() is not None:
            pytest.fail(f"ingest exited with {ingest.process.returncode}:\n{ingest.log()[-3000:]}")
        time.sleep(0.1)
    tail = ingest.log()[-3000:] if ingest is not None else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def query_series(influxdb: InfluxDB, database: str, influxql: str) -> list[Series]:
    """Every series an InfluxQL query returns."""
    with InfluxStore(InfluxSettings(url=influxdb.url, database=database, api="v1")) as store:
        return store.query(influxql)


def query(influxdb: InfluxDB, database: str, influxql: str) -> list[list[object]]:
    """The rows of every series an InfluxQL query returns."""
    return [row for series in query_series(influxdb, database, influxql) for row in series.values]


def publish_all(mosquitto: Mosquitto, client_id: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish (topic, payload) messages in order with QoS 1, each acknowledged before the next."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


class Publisher(threading.Thread):
    """Publishes the capture in order at a bounded rate, never beyond `limit` messages."""

    def __init__(self, broker: Mosquitto, messages: list[CapturedMessage], client_id: str):
        super().__init__(name="publisher", daemon=True)
        self.messages = messages
        self.published = 0
        self.limit = 0
        self.failed: str | None = None
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_inflight_messages_set(100)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def run(self) -> None:
        info = None
        started = time.monotonic()
        try:
            for number, message in enumerate(self.messages):
                while number >= self.limit:
                    time.sleep(0.01)
                    started = time.monotonic() - number / _PUBLISH_PER_S
                ahead_s = started + number / _PUBLISH_PER_S - time.monotonic()
                if ahead_s > 0:
                    time.sleep(ahead_s)
                info = self._client.publish(message.topic, message.payload, qos=1)
                self.published = number + 1
            if info is not None:
                info.wait_for_publish(30)
        except Exception as exc:  # reported by the test, not lost in the thread
            self.failed = repr(exc)

    def finish(self) -> None:
        """Publish the rest and wait until every message is acknowledged by the broker."""
        self.limit = len(self.messages)
        self.join(60)
        assert self.failed is None
        assert self.published == len(self.messages)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def clear_hub_status(mosquitto: Mosquitto, hubs: Iterable[str], client_id: str) -> None:
    """Remove the hubs' retained status from the broker (shared by the session's tests: a
    subscriber would receive an earlier test's status)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    for hub in hubs:
        client.publish(f"osteotel/v1/{hub}/status", b"", qos=1, retain=True).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def kill_points(steps: list[int], tests: list[int], kills: int) -> list[int]:
    """`kills` message numbers, apart by more than `PAST_KILL`: 60 messages after a step (20
    frames a device, 200 s: its 600 s relaxation window is open, and the last checkpoint,
    0.1 s behind, holds it open) or 3 after a load test's start, some of each."""
    candidates = sorted([(n + 60, "step") for n in steps] + [(n + 3, "test") for n in tests])
    spaced: list[tuple[int, str]] = []
    for number, kind in candidates:
        if not spaced or number - spaced[-1][0] > PAST_KILL:
            spaced.append((number, kind))
    # Evenly over what is eligible, so both kinds stay in.
    chosen = [spaced[len(spaced) * k // kills] for k in range(kills)]
    assert len({kind for _, kind in chosen}) == 2, chosen
    return [number for number, _ in chosen]


def killed_at(ingest: IngestProcess, publisher: Publisher, kills: list[int]) -> Iterator[int]:
    """At each kill point, once the publisher has passed it and ingest has written a
    checkpoint since its start, SIGKILL ingest; yield the point while it is down (the
    publisher goes on, at most `PAST_KILL` messages further), then start it again."""
    for kill in kills:
        written = ingest.log().count("checkpoint_written")
        publisher.limit = kill + PAST_KILL
        wait_for(lambda k=kill: publisher.published >= k, "the kill point", ingest)  # type: ignore[misc]
        wait_for(lambda w=written: ingest.log().count("checkpoint_written") > w,  # type: ignore[misc]
                 "a checkpoint since the start", ingest)  # fmt: skip
        assert ingest.stop(signal.SIGKILL) == -signal.SIGKILL
        yield kill
        ingest.start()


def offline_records(capture: Path, registry: Registry) -> list[EstimateRecord]:
    """analyze's records per device with its registry protocol and calibration id, without
    those only `flush()` closes (ingest never flushes): the last day and open windows."""
    records: list[EstimateRecord] = []
    for device in registry.devices.values():
        protocol = dsp_protocol(device)
        mine = [
            replace(record, calibration_id=device.calibration.id)
            for record in analyze_capture(capture, protocol=protocol)
            if record.device == device.id and record.kind in {"step", "load_share", "daily"}
        ]
        last_day = max(record.t_ns for record in mine if record.kind == "daily")
        records += [
            record
            for record in mine
            if not (record.kind == "daily" and record.t_ns == last_day)
            and getattr(record, "closed_by", None) != "flush"
        ]
    return records


def estimate_rows(influxdb: InfluxDB, database: str, measurement: str) -> list[dict[str, Any]]:
    with InfluxStore(InfluxSettings(url=influxdb.url, database=database, api="v1")) as store:
        series = store.query(f'SELECT * FROM "{measurement}"')
    rows = [dict(zip(s.columns, row, strict=True)) for s in series for row in s.values]
    return sorted(rows, key=lambda row: (row["device"], row["time"], row.get("kind", "")))


def same_point(stored: dict[str, Any], expected: dict[str, Any]) -> bool:
    if stored.keys() != expected.keys():
        return False
    for key, value in expected.items():
        other = stored[key]
        if isinstance(value, float) or isinstance(other, float):
            if not math.isclose(float(other), float(value), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif other != value:
            return False
    return True


def assert_estimates(influxdb: InfluxDB, database: str, expected_db: str) -> None:
    for measurement in MEASUREMENTS:
        expected = estimate_rows(influxdb, expected_db, measurement)
        stored = estimate_rows(influxdb, database, measurement)
        assert len(stored) == len(expected), measurement
        for got, want in zip(stored, expected, strict=True):
            assert same_point(got, want), (measurement, got, want)


def count(influxdb: InfluxDB, database: str, measurement: str, device: str = "") -> int:
    """Points of an estimate measurement, or samples of a device in `raw`."""
    field, where = ("force_n", f" WHERE \"device\" = '{device}'") if device else ("version", "")
    rows = query(influxdb, database, f'SELECT count("{field}") FROM "{measurement}"{where}')
    return int(str(rows[0][1])) if rows else 0


@dataclass
class Treatment:
    """An emulated treatment as published (hub statuses left out), and what it holds."""

    capture: Path
    messages: list[CapturedMessage]
    samples: dict[str, set[int]] = field(default_factory=dict)  # sample times per device
    steps: list[int] = field(default_factory=list)  # message numbers of distraction steps
    tests: list[int] = field(default_factory=list)  # ... and of load tests' starts


def emulated_treatment(
    registry: Registry, directory: Path, days: float, scenario: str = "normal",
    *, at_midnight: bool = False,
) -> Treatment:  # fmt: skip
    """The registry's devices emulated for `days` at 10 Hz, ending an hour ago (nothing in
    ingest's future) or, `at_midnight`, at the UTC midnight before that (the same treatment
    then falls on the same UTC days, and so makes the same daily records, whenever the test
    runs); written as a capture in `directory` and read back."""
    end_ns = time.time_ns() - 3_600_000_000_000
    if at_midnight:
        end_ns -= end_ns % _DAY_NS
    plan = FleetPlan.from_registry(
        registry, days=days, speed=None, end_ns=end_ns, seed=11, rate_hz=_RATE_HZ,
        scenario=scenario,
    )  # fmt: skip
    capture = directory / "treatment.jsonl.gz"
    asyncio.run(capture_fleet(plan, capture))
    # Retained on the shared broker, hub statuses would outlive the test: left out.
    treatment = Treatment(
        capture, [m for m in read_capture(capture) if not m.topic.endswith("/status")]
    )
    for number, message in enumerate(treatment.messages):
        if message.topic.endswith("/telemetry"):
            frame, _ = decode_frame(message.payload, topic_device=message.topic.split("/")[3])
            treatment.samples.setdefault(frame.device, set()).update(frame.timestamps_ns().tolist())
        elif (kind := json.loads(message.payload)["type"]) == "distraction_step":
            treatment.steps.append(number)
        elif kind == "load_test_start":
            treatment.tests.append(number)
    return treatment


def expect(
    influxdb: InfluxDB, database: str, treatment: Treatment, registry: Registry
) -> dict[str, int]:
    """Write analyze's records into `database` as ingest would; returns their counts."""
    expected = offline_records(treatment.capture, registry)
    assert {record.kind for record in expected} == set(MEASUREMENTS)
    with InfluxStore(InfluxSettings(url=influxdb.url, database=database, api="v1")) as store:
        store.ensure_database()
        store.write(b"".join(
            estimate_line(registry.devices[record.device].hub, record) for record in expected
        ))  # fmt: skip
    return {m: count(influxdb, database, m) for m in MEASUREMENTS}


def wait_stored(
    influxdb: InfluxDB, database: str, treatment: Treatment, counts: dict[str, int],
    ingest: IngestProcess,
) -> None:  # fmt: skip
    """Wait until every sample and at least every expected estimate is stored."""

    def stored_everything() -> bool:
        return all(
            count(influxdb, database, "raw", device) == len(times)
            for device, times in treatment.samples.items()
        ) and all(count(influxdb, database, m) >= counts[m] for m in MEASUREMENTS)

    wait_for(stored_everything, "every sample and estimate stored", ingest, deadline_s=90)


def drop_database(influxdb: InfluxDB, database: str) -> None:
    with InfluxStore(InfluxSettings(url=influxdb.url, database=database, api="v1")) as store:
        store.query(f'DROP DATABASE "{database}"')


def ingest_metric(ingest: IngestProcess, name: str, partition: int | None = None) -> float:
    """The sum of a metric's samples on the /metrics of one process of ingest, or of every
    process with `partition` None; -1 while one does not answer."""
    total = 0.0
    for k in range(ingest.processes) if partition is None else (partition,):
        try:
            _, body = ingest.get("/metrics", k)
        except OSError:
            return -1.0
        total += sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith(name) and line[len(name)] in " {"
        )
    return total


def frames_stored(ingest: IngestProcess) -> float:
    return ingest_metric(ingest, "osteotel_ingest_frames_stored_total")


def frames_of(messages: list[CapturedMessage]) -> int:
    """Frames among messages, a duplicate (the same payload again) counted once."""
    return len({m.payload for m in messages if m.topic.endswith("/telemetry")})
