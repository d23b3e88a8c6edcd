"""One path end to end: hubs publish over a real Mosquitto, `osteotel ingest` stores in InfluxDB."""

import json
import math
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from harness import EXAMPLE_REGISTRY, IngestProcess, ingest_env, query, running_ingest, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from apps.services import InfluxDB, Mosquitto
from devices.codec import encode_event, encode_frame_binary, encode_frame_json, encode_status
from devices.contract import (
    DistractionStep,
    Frame,
    HubStatus,
    LoadTestEnd,
    LoadTestStart,
    Reason,
    Reboot,
    events_topic,
    status_topic,
    telemetry_topic,
)
from devices.registry import Registry

# Hub, device and encoding of the example registry's three devices.
DEVICES = (
    ("HUB-A", "DX-0001", "json"),
    ("HUB-A", "DX-0002", "json"),
    ("HUB-B", "DX-0003", "binary"),
)
MAX_PAYLOAD_BYTES = 65_536


@dataclass(frozen=True)
class Published:
    hub: str
    frame: Frame
    encoding: str


@pytest.fixture
def ingest(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> Iterator[IngestProcess]:
    """`osteotel ingest` as users run it: a process configured by environment variables."""
    env = ingest_env(
        mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path,
        max_payload_bytes=str(MAX_PAYLOAD_BYTES), stats_interval_s="0.5",
    )  # fmt: skip
    with running_ingest(env, tmp_path) as running:
        yield running


def _mosquitto_pub(broker: Mosquitto, topic: str, payload: bytes, tmp_path: Path) -> None:
    payload_file = tmp_path / f"payload-{time.monotonic_ns()}"
    payload_file.write_bytes(payload)
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            topic,
            "-f",
            str(payload_file),
            "-i",
            f"pub-{payload_file.name}",
        ],
        check=True,
        timeout=10,
    )


def _valid_frames(rng: np.random.Generator, now_ns: int) -> list[Published]:
    """Five frames per device, with rates whose sample times need rounding, hours in the past."""
    published = []
    for hub, device, encoding in DEVICES:
        t0_ns = now_ns - 3 * 3_600_000_000_000 + rng.integers(0, 10**9)
        for seq in range(5):
            rate_hz = float(rng.choice([100.0, 1000.0, 30.0, 7.0]))
            n = int(rng.integers(1, 400))
            force_n = rng.normal(120.0, 40.0, n)
            disp_mm = np.cumsum(rng.uniform(0.0, 0.01, n)) + seq
            ref = rng.uniform(0.0, 800.0, n) if (device, seq) == ("DX-0002", 3) else None
            if encoding == "binary":  # what a binary frame can carry: float32 values and rate
                force_n, disp_mm = force_n.astype(np.float32), disp_mm.astype(np.float32)
                rate_hz = float(np.float32(rate_hz))
            frame = Frame(
                device=device,
                seq=seq,
                t0_ns=int(t0_ns),
                rate_hz=rate_hz,
                force_n=force_n,
                disp_mm=disp_mm,
                ref_load_n=ref,
                temp_c=36.5 if seq == 0 else None,
            )
            published.append(Published(hub, frame, encoding))
            t0_ns += int(n * 1e9 / rate_hz) + 1_000_000_000
    return published


def _invalid_payloads(now_ns: int) -> dict[Reason, tuple[str, bytes]]:
    """One payload for each rejection rule, each breaking only that rule."""

    def frame_json(device: str = "DX-0001", **changes: object) -> bytes:
        body: dict[str, object] = {
            "v": 1,
            "device": device,
            "seq": 900,
            "t0_ns": now_ns - 10**9,
            "rate_hz": 100.0,
            "force_n": [1.0, 2.0, 3.0, 4.0],
            "disp_mm": [0.1, 0.2, 0.3, 0.4],
        }
        body.update(changes)
        return json.dumps(body).encode()

    topic_a1 = telemetry_topic("HUB-A", "DX-0001")
    return {
        Reason.OVERSIZE: (topic_a1, frame_json(force_n=[1.5] * 20_000, disp_mm=[0.5] * 20_000)),
        Reason.MALFORMED: (topic_a1, b"OTF1\x01\x00\x04\x00"),
        Reason.SCHEMA: (topic_a1, frame_json(disp_mm=[0.1, 0.2])),
        Reason.UNKNOWN_HUB: (telemetry_topic("HUB-Z", "DX-0001"), frame_json()),
        Reason.UNKNOWN_DEVICE: (telemetry_topic("HUB-A", "DX-9999"), frame_json("DX-9999")),
        Reason.HUB_MISMATCH: (telemetry_topic("HUB-B", "DX-0001"), frame_json()),
        Reason.TOPIC_MISMATCH: (topic_a1, frame_json("DX-0002")),
        Reason.NON_FINITE: (topic_a1, frame_json(force_n=[1.0, 2.0, 3.0, math.nan])),
        Reason.OUT_OF_RANGE: (topic_a1, frame_json(force_n=[1.0, 2.0, 1e7, 4.0])),
        Reason.FUTURE_TIMESTAMP: (topic_a1, frame_json(t0_ns=now_ns + 3_600_000_000_000)),
    }


def test_exactly_the_valid_samples_are_stored_and_every_rejection_is_reported(
    ingest: IngestProcess,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    influx_db_name: str,
    tmp_path: Path,
) -> None:
    """Valid frames of 3 devices on 2 hubs land to the ns; each bad payload is rejected by rule."""
    now_ns = time.time_ns()
    rng = np.random.default_rng(20261125)
    frames = _valid_frames(rng, now_ns)
    invalid = _invalid_payloads(now_ns)

    # Hubs publish with paho (QoS 1); a frame, its duplicate and every bad payload go through
    # the real mosquitto_pub client.
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hubs-{influx_db_name}")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        for hub in ("HUB-A", "HUB-B"):
            status = HubStatus(hub=hub, online=True, t_ns=now_ns)
            client.publish(
                status_topic(hub), encode_status(status), qos=1, retain=True
            ).wait_for_publish(10)
        for item in frames[1:]:
            encode = encode_frame_binary if item.encoding == "binary" else encode_frame_json
            topic = telemetry_topic(item.hub, item.frame.device)
            client.publish(topic, encode(item.frame), qos=1).wait_for_publish(10)
        step = DistractionStep(device="DX-0001", t_ns=now_ns - 10**9, delta_mm=0.25, source="motor")
        reboot = Reboot(device="DX-0003", t_ns=now_ns - 2 * 10**9)
        client.publish(
            events_topic("HUB-A", "DX-0001"), encode_event(step), qos=1
        ).wait_for_publish(10)
        client.publish(
            events_topic("HUB-B", "DX-0003"), encode_event(reboot), qos=1
        ).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    first = frames[0]
    _mosquitto_pub(
        mosquitto,
        telemetry_topic(first.hub, first.frame.device),
        encode_frame_json(first.frame),
        tmp_path,
    )
    _mosquitto_pub(
        mosquitto,
        telemetry_topic(first.hub, first.frame.device),
        encode_frame_json(first.frame),
        tmp_path,
    )
    for topic, payload in invalid.values():
        _mosquitto_pub(mosquitto, topic, payload, tmp_path)

    expected_samples = sum(item.frame.n for item in frames)

    def all_landed() -> bool:
        raw = query(influxdb, influx_db_name, "SELECT count(force_n) FROM raw")
        rejections = query(influxdb, influx_db_name, "SELECT count(detail) FROM rejection")
        return bool(
            raw
            and raw[0][1] == expected_samples
            and rejections
            and rejections[0][1] == len(invalid)
        )

    wait_for(all_landed, "every sample and rejection to land", ingest)

    # Every valid sample, bit for bit, at its contract timestamp; nothing else.
    for hub, device, _ in DEVICES:
        mine = [item.frame for item in frames if item.frame.device == device]
        rows = query(
            influxdb,
            influx_db_name,
            f"SELECT force_n, disp_mm, ref_load_n, hub FROM raw WHERE device = '{device}'",
        )
        times = np.array([row[0] for row in rows], dtype=np.int64)
        expected_t = np.concatenate([f.timestamps_ns() for f in mine])
        np.testing.assert_array_equal(times, np.sort(expected_t))
        order = np.argsort(expected_t)
        np.testing.assert_array_equal(
            [row[1] for row in rows], np.concatenate([f.force_n for f in mine])[order]
        )
        np.testing.assert_array_equal(
            [row[2] for row in rows], np.concatenate([f.disp_mm for f in mine])[order]
        )
        assert {row[4] for row in rows} == {hub}
        ref_rows = [row[3] for row in rows if row[3] is not None]
        ref_frames = [f.ref_load_n for f in mine if f.ref_load_n is not None]
        assert ref_rows == (list(np.concatenate(ref_frames)) if ref_frames else [])

    frame_rows = query(influxdb, influx_db_name, "SELECT seq, n, encoding FROM frame")
    assert len(frame_rows) == len(frames)
    assert sorted(str(row[3]) for row in frame_rows) == sorted(item.encoding for item in frames)
    event_rows = query(influxdb, influx_db_name, "SELECT type, delta_mm, v FROM event")
    assert sorted((row[1], row[2]) for row in event_rows) == [
        ("distraction_step", 0.25),
        ("reboot", None),
    ]
    info_rows = query(influxdb, influx_db_name, "SELECT device, patient, active FROM device_info")
    registry = Registry.load(EXAMPLE_REGISTRY)
    assert sorted((row[1], row[2], row[3]) for row in info_rows) == sorted(
        (d.id, d.patient, True) for d in registry.devices.values()
    )
    status_rows = query(influxdb, influx_db_name, "SELECT hub, online FROM hub_status")
    assert sorted((row[1], row[2]) for row in status_rows) == [("HUB-A", True), ("HUB-B", True)]

    # Each rejection: a rejection point, a dead letter and a log line, all naming the reason.
    rejection_rows = query(influxdb, influx_db_name, "SELECT reason, topic FROM rejection")
    assert sorted((row[1], row[2]) for row in rejection_rows) == sorted(
        (str(reason), topic) for reason, (topic, _) in invalid.items()
    )
    letters = [
        json.loads(line)
        for path in sorted(ingest.dead_letter_dir.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(letter["reason"] for letter in letters) == sorted(str(r) for r in invalid)
    by_reason = {letter["reason"]: letter for letter in letters}
    assert by_reason["non_finite"]["field"] == "force_n"
    assert by_reason["non_finite"]["index"] == 3
    assert by_reason["out_of_range"]["index"] == 2
    assert by_reason["oversize"]["payload_bytes"] == len(invalid[Reason.OVERSIZE][1])
    assert by_reason["oversize"]["payload_truncated"] is True
    assert by_reason["malformed"]["payload_encoding"] in {"utf-8", "base64"}
    log = ingest.log()
    for reason in invalid:
        assert f"rejected reason={reason}" in log

    # The duplicate was stored once (the counts above) and reported.
    assert "duplicate device=DX-0001 seq=0" in log

    # The same accounting on /metrics, and the service says it is healthy and ready.
    http_status, metrics = ingest.get("/metrics")
    assert http_status == 200
    for _, device, _ in DEVICES:
        mine = [item.frame for item in frames if item.frame.device == device]
        received = len(mine) + (device == "DX-0001")
        assert f'osteotel_ingest_frames_received_total{{device="{device}"}} {received}.0' in metrics
        assert f'osteotel_ingest_frames_stored_total{{device="{device}"}} {len(mine)}.0' in metrics
        samples = sum(f.n for f in mine)
        assert f'osteotel_ingest_samples_stored_total{{device="{device}"}} {samples}.0' in metrics
    assert 'osteotel_ingest_frames_duplicate_total{device="DX-0001"} 1.0' in metrics
    last_stored = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("osteotel_ingest_last_stored_timestamp_seconds ")
    )
    assert now_ns / 1e9 <= last_stored <= time.time()
    for reason, (topic, _) in invalid.items():
        hub = topic.split("/")[2]
        assert f'osteotel_ingest_rejected_total{{hub="{hub}",reason="{reason}"}} 1.0' in metrics
    assert ingest.get("/healthz")[0] == 200
    assert ingest.get("/readyz")[0] == 200

    # And in InfluxDB, for the data-quality board.
    def stats_current() -> bool:
        rows = query(
            influxdb,
            influx_db_name,
            "SELECT last(frames_stored), last(frames_duplicate) FROM ingest_stats "
            "WHERE device = 'DX-0001'",
        )
        rejections = query(
            influxdb, influx_db_name, "SELECT last(rejected) FROM ingest_rejections GROUP BY reason"
        )
        return rows[0][1:] == [5, 1] and len(rejections) == len(invalid) if rows else False

    wait_for(stats_current, "ingest_stats to show DX-0001's frames and every rejection", ingest)


# DX-0001: a force sensor mounted the other way round, with gains and offsets; DX-0002: gains
# and offsets; DX-0003 keeps the identity.
CALIBRATIONS = {
    "DX-0001": (-2.0, 15.0, 0.5, 3.0),
    "DX-0002": (1.5, -4.0, 2.0, -0.25),
    "DX-0003": (1.0, 0.0, 1.0, 0.0),
}


def _calibrated_registry(tmp_path: Path) -> Path:
    text = EXAMPLE_REGISTRY.read_text(encoding="utf-8")
    for device, (f_gain, f_offset, d_gain, d_offset) in CALIBRATIONS.items():
        old = (
            f'calibration = {{ id = "CAL-{device}-01", force_gain = 1.0, force_offset_n = 0.0, '
            "disp_gain = 1.0, disp_offset_mm = 0.0 }"
        )
        assert old in text
        text = text.replace(
            old,
            f'calibration = {{ id = "CAL-{device}-02", force_gain = {f_gain}, '
            f"force_offset_n = {f_offset}, disp_gain = {d_gain}, disp_offset_mm = {d_offset} }}",
        )
    path = tmp_path / "registry.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _expected(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    f_gain, f_offset, d_gain, d_offset = CALIBRATIONS[frame.device]
    return f_gain * frame.force_n + f_offset, d_gain * frame.disp_mm + d_offset


def test_calibration_is_applied_to_stored_samples_and_estimates(
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    influx_db_name: str,
    unique_id: str,
    tmp_path: Path,
) -> None:
    """InfluxDB holds gain x raw + offset per device; a negative force gain rights a load test."""
    env = ingest_env(
        mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path,
        registry=str(_calibrated_registry(tmp_path)),
    )  # fmt: skip
    now_ns = time.time_ns()
    t0_ns = now_ns - 3_600_000_000_000
    rng = np.random.default_rng(20261204)
    published: list[Published] = []
    for hub, device, encoding in DEVICES:
        for seq in range(3):
            n = 100
            force_n = rng.normal(120.0, 40.0, n)
            disp_mm = np.cumsum(rng.uniform(0.0, 0.01, n)) + seq
            ref_load_n = None
            if device == "DX-0001":
                # A weight-bearing test read by a reversed sensor: raw force falls with the load.
                ref_load_n = np.linspace(0.0, 600.0, 3 * n)[seq * n : (seq + 1) * n]
                force_n = 100.0 - 0.3 * ref_load_n
                disp_mm = 20.0 - 0.0005 * ref_load_n
            if encoding == "binary":
                force_n, disp_mm = force_n.astype(np.float32), disp_mm.astype(np.float32)
            frame = Frame(device, seq, t0_ns + seq * 10**9, 100.0, force_n, disp_mm, ref_load_n)
            published.append(Published(hub, frame, encoding))
    with running_ingest(env, tmp_path) as running:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hubs-{influx_db_name}")
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        try:
            start = LoadTestStart(device="DX-0001", t_ns=t0_ns - 10**8)
            end = LoadTestEnd(device="DX-0001", t_ns=t0_ns + 3 * 10**9)
            topic = events_topic("HUB-A", "DX-0001")
            client.publish(topic, encode_event(start), qos=1).wait_for_publish(10)
            for item in published:
                encode = encode_frame_binary if item.encoding == "binary" else encode_frame_json
                topic = telemetry_topic(item.hub, item.frame.device)
                client.publish(topic, encode(item.frame), qos=1).wait_for_publish(10)
            topic = events_topic("HUB-A", "DX-0001")
            client.publish(topic, encode_event(end), qos=1).wait_for_publish(10)
        finally:
            client.loop_stop()
            client.disconnect()

        expected_samples = sum(item.frame.n for item in published)

        def all_landed() -> bool:
            raw = query(influxdb, influx_db_name, "SELECT count(force_n) FROM raw")
            share = query(influxdb, influx_db_name, "SELECT count(n_samples) FROM load_share")
            return bool(raw and raw[0][1] == expected_samples and share and share[0][1] == 1)

        wait_for(all_landed, "every calibrated sample and the load share to land", running)

    for _, device, _ in DEVICES:
        mine = [item.frame for item in published if item.frame.device == device]
        rows = query(
            influxdb,
            influx_db_name,
            f"SELECT force_n, disp_mm, ref_load_n FROM raw WHERE device = '{device}'",
        )
        expected = [_expected(frame) for frame in mine]
        assert len(rows) == sum(frame.n for frame in mine)
        np.testing.assert_array_equal(
            [row[1] for row in rows], np.concatenate([f for f, _ in expected])
        )
        np.testing.assert_array_equal(
            [row[2] for row in rows], np.concatenate([d for _, d in expected])
        )
        if device == "DX-0001":  # the scale is its own instrument: not calibrated
            np.testing.assert_array_equal(
                [row[3] for row in rows],
                np.concatenate([f.ref_load_n for f in mine if f.ref_load_n is not None]),
            )
    # The DSP saw calibrated values: force = -2 (100 - 0.3 load) + 15 = -185 + 0.6 load, a
    # slope twice the raw one, in the compression-positive sense.
    (estimate,) = query(
        influxdb,
        influx_db_name,
        "SELECT share, f_offset_n, n_samples, status FROM load_share WHERE device = 'DX-0001'",
    )
    assert estimate[4] == "ok"
    assert estimate[3] == 300
    assert estimate[2] == pytest.approx(-185.0, abs=1e-6)
    # The sign of the share follows the DSP's convention (dsp/, issue 12): its size is 0.6.
    share = estimate[1]
    assert isinstance(share, float)
    assert abs(share) == pytest.approx(0.6, abs=1e-9)
