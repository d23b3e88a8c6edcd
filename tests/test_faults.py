"""Faults mid-stream against the real servers: InfluxDB away, ingest killed, Mosquitto restarted.

Each test ends with InfluxDB holding exactly the published samples: none lost, none doubled.
"""

import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from harness import IngestProcess, ingest_env, query, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from apps.services import InfluxDB, Mosquitto
from devices.codec import encode_frame_json
from devices.contract import Frame, telemetry_topic

HUB, DEVICE = "HUB-A", "DX-0001"
INFLUX_OUTAGE_S = 30.0
PUBLISH_TIMEOUT_S = 5.0


@dataclass
class Stack:
    mosquitto: Mosquitto
    influxdb: InfluxDB
    ingest: IngestProcess
    database: str = "faults"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A private broker, database and ingest that a test may stop, kill and restart."""
    with Mosquitto(tmp_path / "mosquitto") as broker, InfluxDB(tmp_path / "influxdb") as influx:
        env = ingest_env(broker, influx, "faults", "ingest-faults", tmp_path)
        ingest = IngestProcess(env, tmp_path)
        ingest.start()
        try:
            yield Stack(broker, influx, ingest)
        finally:
            ingest.stop()


class Hub:
    """A hub publishing with QoS 1 that re-sends until the broker acknowledges."""

    def __init__(self, broker: Mosquitto) -> None:
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="hub-faults", clean_session=False
        )
        # paho waits float seconds; its annotation says int.
        self._client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        self.published: list[Frame] = []
        self.invalid: list[Frame] = []

    def publish(self, frame: Frame) -> None:
        self._send(frame)
        self.published.append(frame)

    def publish_invalid(self, frame: Frame) -> None:
        """Publish a frame that ingest must reject (e.g. a NaN sample)."""
        self._send(frame)
        self.invalid.append(frame)

    def publish_invalid_burst(self, frames: list[Frame]) -> None:
        """Publish frames ingest must reject back to back, then wait for the broker's PUBACKs."""
        topic = telemetry_topic(HUB, DEVICE)
        sent = [self._client.publish(topic, encode_frame_json(frame), 1) for frame in frames]
        for info in sent:
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
            assert info.is_published()
        self.invalid.extend(frames)

    def _send(self, frame: Frame) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = self._client.publish(telemetry_topic(HUB, DEVICE), encode_frame_json(frame), 1)
            try:
                info.wait_for_publish(PUBLISH_TIMEOUT_S)
            except (RuntimeError, ValueError):
                time.sleep(0.2)  # not connected: the broker is restarting
                continue
            if info.is_published():
                return
        pytest.fail(f"frame {frame.seq} was never acknowledged by the broker")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def frames(count: int, *, first_seq: int = 0) -> Iterator[Frame]:
    """Frames of 50 samples at 100 Hz, one second apart, a day in the past."""
    rng = np.random.default_rng(first_seq)
    t0_ns = time.time_ns() - 86_400_000_000_000
    for seq in range(first_seq, first_seq + count):
        yield Frame(
            device=DEVICE, seq=seq, t0_ns=t0_ns + seq * 1_000_000_000, rate_hz=100.0,
            force_n=rng.normal(150.0, 30.0, 50), disp_mm=rng.uniform(10.0, 11.0, 50),
        )  # fmt: skip


def with_nan(frame: Frame) -> Frame:
    """The same frame with one force sample NaN: rejected as `non_finite`."""
    force_n = frame.force_n.copy()
    force_n[7] = math.nan
    return Frame(
        device=frame.device, seq=frame.seq, t0_ns=frame.t0_ns, rate_hz=frame.rate_hz,
        force_n=force_n, disp_mm=frame.disp_mm,
    )  # fmt: skip


def dead_letters(ingest: IngestProcess) -> list[dict[str, Any]]:
    """Every dead-letter record ingest wrote, in file order."""
    return [
        json.loads(line)
        for path in sorted(ingest.dead_letter_dir.glob("dead-letter-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def metric(ingest: IngestProcess, sample: str) -> float | None:
    """One sample's value on ingest's `/metrics` (name with labels), None when absent."""
    status, body = ingest.get("/metrics")
    assert status == 200
    for line in body.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


def assert_frames_stored(stack: Stack, count: int) -> None:
    """Wait until InfluxDB holds `count` frames."""

    def stored() -> bool:
        rows = query(stack.influxdb, stack.database, "SELECT count(seq) FROM frame")
        return bool(rows) and rows[0][1] == count

    wait_for(stored, f"{count} frames in InfluxDB", stack.ingest)


def assert_exactly_stored(stack: Stack, published: list[Frame]) -> None:
    expected_samples = sum(frame.n for frame in published)

    def landed() -> bool:
        rows = query(stack.influxdb, stack.database, "SELECT count(force_n) FROM raw")
        return bool(rows) and rows[0][1] == expected_samples

    wait_for(landed, f"{expected_samples} samples in InfluxDB", stack.ingest)
    rows = query(stack.influxdb, stack.database, "SELECT force_n, disp_mm FROM raw")
    np.testing.assert_array_equal(
        [row[0] for row in rows], np.concatenate([f.timestamps_ns() for f in published])
    )
    np.testing.assert_array_equal(
        [row[1] for row in rows], np.concatenate([f.force_n for f in published])
    )
    np.testing.assert_array_equal(
        [row[2] for row in rows], np.concatenate([f.disp_mm for f in published])
    )
    frame_rows = query(stack.influxdb, stack.database, "SELECT seq FROM frame")
    assert [row[1] for row in frame_rows] == [frame.seq for frame in published]


def test_influxdb_away_for_30_s_costs_nothing(stack: Stack) -> None:
    """Batches spool while InfluxDB is stopped and are all stored, once, when it returns; the
    outage and its recovery are counted once each on /metrics."""
    hub = Hub(stack.mosquitto)
    try:
        stream = frames(51)
        for frame in [next(stream) for _ in range(15)]:
            hub.publish(frame)
        wait_for(
            lambda: bool(query(stack.influxdb, stack.database, "SELECT count(seq) FROM frame")),
            "the first frames to be stored",
        )
        stack.influxdb.stop()
        outage_ends = time.monotonic() + INFLUX_OUTAGE_S
        for frame in [next(stream) for _ in range(20)]:
            hub.publish(frame)
            time.sleep(INFLUX_OUTAGE_S / 25)
        hub.publish_invalid(with_nan(next(stream)))
        wait_for(lambda: "action=spooling" in stack.ingest.log(), "ingest to spool")
        time.sleep(max(0.0, outage_ends - time.monotonic()))
        stack.influxdb.start()
        for frame in stream:
            hub.publish(frame)
    finally:
        hub.close()
    assert_exactly_stored(stack, hub.published)
    wait_for(lambda: "spool_drained" in stack.ingest.log(), "the spool to drain")
    assert list((stack.ingest.workdir / "spool").glob("*.lp")) == []
    # The rejected frame: one dead letter and one `rejection` point, none of its samples.
    assert [letter["reason"] for letter in dead_letters(stack.ingest)] == ["non_finite"]
    rows = query(stack.influxdb, stack.database, "SELECT count(payload_bytes) FROM rejection")
    assert rows[0][1] == 1
    assert metric(stack.ingest, "osteotel_ingest_store_outages_total") == 1.0
    assert metric(stack.ingest, "osteotel_ingest_store_recovery_seconds_count") == 1.0
    assert metric(stack.ingest, "osteotel_ingest_spool_batches") == 0.0


def test_ingest_killed_mid_stream_loses_and_doubles_nothing(stack: Stack) -> None:
    """After SIGKILL, the broker redelivers what ingest had not acknowledged."""
    hub = Hub(stack.mosquitto)
    try:
        stream = frames(60)
        for frame in [next(stream) for _ in range(20)]:
            hub.publish(frame)
        stack.ingest.stop(signal.SIGKILL)
        for frame in [next(stream) for _ in range(20)]:
            hub.publish(frame)  # queued by the broker for ingest's persistent session
        stack.ingest.start()
        for frame in stream:
            hub.publish(frame)
    finally:
        hub.close()
    assert_exactly_stored(stack, hub.published)


def test_mosquitto_restarted_mid_stream_loses_nothing(stack: Stack) -> None:
    """A broker restart with persistence on: hub and ingest reconnect; every sample lands once."""
    hub = Hub(stack.mosquitto)
    try:
        stream = frames(40)
        for frame in [next(stream) for _ in range(20)]:
            hub.publish(frame)
        stack.mosquitto.restart()
        for frame in stream:
            hub.publish(frame)
    finally:
        hub.close()
    assert_exactly_stored(stack, hub.published)
    assert "mqtt_disconnected" in stack.ingest.log()


def test_ingest_started_while_influxdb_is_down_spools_then_stores(tmp_path: Path) -> None:
    """Ingest starts without InfluxDB, spools, and creates the database when it appears.

    Ingest first waits for InfluxDB to catch its estimator up (ingest/catchup.py); with
    `catchup_store_wait_s=1` it gives up after a second, marks its devices, and goes live."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        influx = InfluxDB(tmp_path / "influxdb")  # described, not started yet
        env = ingest_env(broker, influx, "late", "ingest-late", tmp_path, catchup_store_wait_s="1")
        ingest = IngestProcess(env, tmp_path)
        ingest.start()
        stack = Stack(broker, influx, ingest, database="late")
        hub = Hub(broker)
        try:
            for frame in frames(10):
                hub.publish(frame)
            wait_for(lambda: "action=spooling" in ingest.log(), "ingest to spool", ingest)
            influx.start()

            def database_created() -> bool:
                rows = query(influx, "_internal", "SHOW DATABASES")
                return ["late"] in rows

            wait_for(database_created, "ingest to create its database", ingest)
            assert_exactly_stored(stack, hub.published)
            assert ingest.log().count("status=store_unreachable") == 3
        finally:
            hub.close()
            ingest.stop()
            influx.stop()


def test_rejections_redelivered_after_sigkill_are_dead_lettered_and_counted_once(
    tmp_path: Path,
) -> None:
    """Rejected messages whose dead letters were written but which were never acknowledged
    (InfluxDB frozen mid-write, then ingest SIGKILLed) come back from the broker after the
    restart: still one dead letter and one `rejection` point each, at the first receipt time;
    the same bad payload sent again later, after its acknowledgement or after a clean restart,
    is a new rejection."""
    with Mosquitto(tmp_path / "mosquitto") as broker, InfluxDB(tmp_path / "influxdb") as influx:
        # Batches of exactly 3 messages (or what 3 s brought): the 3 rejected messages are one
        # batch, whose dead letters are fsync'd before its write, which waits on the frozen
        # InfluxDB instead of timing out into the spool.
        env = ingest_env(
            broker, influx, "redelivery", "ingest-redelivery", tmp_path,
            batch_max_messages="3", batch_max_delay_s="3", stats_interval_s="0.5",
        )  # fmt: skip
        env["OSTEOTEL_INFLUX__TIMEOUT_S"] = "600"
        ingest = IngestProcess(env, tmp_path)
        stack = Stack(broker, influx, ingest, database="redelivery")
        hub = Hub(broker)
        influx_pid = influx.pid
        assert influx_pid is not None
        frozen = False
        try:
            ingest.start()
            stream = frames(18)
            for frame in [next(stream) for _ in range(6)]:
                hub.publish(frame)
            assert_frames_stored(stack, 6)
            os.kill(influx_pid, signal.SIGSTOP)
            frozen = True
            bad = [with_nan(next(stream)) for _ in range(3)]
            hub.publish_invalid_burst(bad)
            wait_for(lambda: len(dead_letters(ingest)) == 3, "3 dead letters", ingest)
            for frame in [next(stream) for _ in range(3)]:
                hub.publish(frame)  # received by ingest behind the frozen write, not acknowledged
            ingest.stop(signal.SIGKILL)
            os.kill(influx_pid, signal.SIGCONT)
            frozen = False
            ingest.start()
            assert_frames_stored(stack, 9)  # the redelivered frames came after the rejections
            hub.publish_invalid_burst([bad[0]])  # the first bad payload, sent again
            for frame in stream:
                hub.publish(frame)
            hub.close()

            assert_exactly_stored(stack, hub.published)
            letters = dead_letters(ingest)
            first = [hashlib.sha256(encode_frame_json(frame)).hexdigest() for frame in hub.invalid]
            assert [letter["payload_sha256"] for letter in letters] == first
            assert [letter["reason"] for letter in letters] == ["non_finite"] * 4
            received_ns = [letter["received_ns"] for letter in letters]
            assert len(set(received_ns)) == 4

            def points() -> list[object]:
                rows = query(influx, stack.database, "SELECT payload_bytes FROM rejection")
                return [row[0] for row in rows]

            wait_for(lambda: len(points()) == 4, "4 rejection points", ingest)
            assert points() == sorted(received_ns)
            # In the restarted process: three recognised redeliveries, one new rejection.
            labels = f'{{hub="{HUB}",reason="non_finite"}}'
            assert metric(ingest, f"osteotel_ingest_rejected_total{labels}") == 1.0
            assert metric(ingest, f"osteotel_ingest_rejected_again_total{labels}") == 3.0
            # The data-quality board's point says the same.
            again = (
                "SELECT last(rejected), last(rejected_again) FROM ingest_rejections "
                f"WHERE hub = '{HUB}' AND reason = 'non_finite'"
            )
            wait_for(
                lambda: [row[1:] for row in query(influx, stack.database, again)] == [[1, 3]],
                "ingest_rejections to count 1 rejected and 3 recognised again",
                ingest,
            )

            # A clean stop leaves nothing to come back: the next start recalls no dead letter.
            assert ingest.stop() == 0
            assert (tmp_path / "state" / "all-acknowledged").exists()
            ingest.start()
            hub = Hub(broker)
            hub.publish_invalid_burst([bad[0]])
            wait_for(lambda: len(dead_letters(ingest)) == 5, "a fifth dead letter", ingest)
            assert dead_letters(ingest)[-1]["payload_sha256"] == letters[0]["payload_sha256"]
            assert ingest.log().count("dead_letters_recalled") == 2
            assert metric(ingest, f"osteotel_ingest_rejected_total{labels}") == 1.0
            assert metric(ingest, f"osteotel_ingest_rejected_again_total{labels}") is None
        finally:
            if frozen:
                os.kill(influx_pid, signal.SIGCONT)
            hub.close()
            if ingest.process is not None:
                ingest.stop()
