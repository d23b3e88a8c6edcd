"""Ten thousand broken payloads beside a valid stream: no crash, no valid frame lost."""

import json
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from harness import IngestProcess, ingest_env, query, query_series, running_ingest, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from apps.services import InfluxDB, Mosquitto
from devices.codec import encode_frame_binary, encode_frame_json
from devices.contract import Frame, Reason, telemetry_topic

MAX_PAYLOAD_BYTES = 262_144
BAD_PAYLOADS = 10_000
VALID_FRAMES = 200
HUB, DEVICE, VALID_DEVICE = "HUB-A", "DX-0001", "DX-0002"


@pytest.fixture
def ingest(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> Iterator[IngestProcess]:
    """A running `osteotel ingest` with a 256 KiB payload limit."""
    env = ingest_env(
        mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path,
        max_payload_bytes=str(MAX_PAYLOAD_BYTES),
    )  # fmt: skip
    with running_ingest(env, tmp_path) as running:
        yield running


def _frame(rng: np.random.Generator, seq: int, device: str = DEVICE, n: int = 20) -> Frame:
    return Frame(
        device=device, seq=seq, t0_ns=1_700_000_000_000_000_000 + seq * 10**9, rate_hz=100.0,
        force_n=rng.normal(100.0, 20.0, n), disp_mm=rng.uniform(5.0, 6.0, n),
    )  # fmt: skip


def _json_frame(rng: np.random.Generator, **changes: object) -> bytes:
    body = json.loads(encode_frame_json(_frame(rng, int(rng.integers(0, 2**31)))))
    body.update(changes)
    return json.dumps(body).encode()


def _bad_payload(rng: np.random.Generator, number: int) -> tuple[Reason, bytes]:
    """One broken payload of a kind chosen by `number`, and the rule it breaks."""
    kind = number % 10
    if kind == 0:  # truncated binary, cut anywhere
        whole = encode_frame_binary(_frame(rng, number))
        return Reason.MALFORMED, whole[: int(rng.integers(0, len(whole)))]
    if kind == 1:  # wrong magic
        return Reason.MALFORMED, b"OTF" + bytes([int(rng.integers(50, 255))]) + rng.bytes(40)
    if kind == 2:  # not UTF-8
        return Reason.MALFORMED, b'{"v": 1, "device": "\xff\xfe' + rng.bytes(20) + b'"}'
    if kind == 3:  # deeply nested
        depth = int(rng.integers(200, 5000))
        return Reason.MALFORMED, b'{"v": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 4:  # more samples than the contract allows, still under the size limit
        n = int(rng.integers(10_001, 16_000))
        header = struct.pack(
            "<4sBBHIqf", b"OTF1", 1, 0, n, number, 1_700_000_000_000_000_000, 100.0
        )
        return Reason.SCHEMA, header + bytes(8 * n)
    if kind == 5:  # wrong types
        field, value = [("seq", "12"), ("rate_hz", "100"), ("force_n", "heavy"), ("t0_ns", 1.5)][
            number % 4
        ]
        return Reason.SCHEMA, _json_frame(rng, **{field: value})
    if kind == 6:  # unequal lengths
        return Reason.SCHEMA, _json_frame(rng, disp_mm=[1.0])
    if kind in (7, 8):  # NaN or infinity somewhere
        values = rng.normal(0.0, 1.0, 20).tolist()
        values[int(rng.integers(0, 20))] = float(["nan", "inf", "-inf"][number % 3])
        return Reason.NON_FINITE, _json_frame(rng, force_n=values)
    # kind 9: too big, a few of them megabytes
    size = 3_000_000 if number % 1000 == 9 else int(rng.integers(MAX_PAYLOAD_BYTES + 1, 400_000))
    return Reason.OVERSIZE, b"{" + rng.bytes(size)


def test_fuzzed_payloads_cost_no_valid_frame(
    ingest: IngestProcess, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str
) -> None:
    """10,000 bad payloads of every kind, each counted under its rule; valid frames stored once."""
    rng = np.random.default_rng(5)
    bad = [_bad_payload(rng, number) for number in range(BAD_PAYLOADS)]
    valid = [_frame(rng, seq, VALID_DEVICE, n=50) for seq in range(VALID_FRAMES)]
    valid_at = set(rng.choice(BAD_PAYLOADS, VALID_FRAMES, replace=False).tolist())
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzzer-{influx_db_name}")
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    infos = []
    try:
        next_valid = iter(valid)
        for number, (_, payload) in enumerate(bad):
            if number in valid_at:
                frame = next(next_valid)
                encode = encode_frame_binary if frame.seq % 2 else encode_frame_json
                infos.append(client.publish(telemetry_topic(HUB, VALID_DEVICE), encode(frame), 1))
            infos.append(client.publish(telemetry_topic(HUB, DEVICE), payload, 1))
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()

    expected = Counter(str(reason) for reason, _ in bad)

    def all_counted() -> bool:
        rows = query(influxdb, influx_db_name, "SELECT count(detail) FROM rejection")
        return bool(rows) and rows[0][1] == BAD_PAYLOADS

    wait_for(all_counted, "every bad payload to be counted", ingest)
    by_reason = {
        series.tags["reason"]: series.values[0][1]
        for series in query_series(
            influxdb, influx_db_name, "SELECT count(detail) FROM rejection GROUP BY reason"
        )
    }
    assert by_reason == dict(expected)

    # Every valid frame, once: binary ones carry float32 values.
    stored = query(influxdb, influx_db_name, "SELECT force_n FROM raw")
    expected_t = np.concatenate([f.timestamps_ns() for f in valid])
    expected_force = np.concatenate(
        [f.force_n.astype(np.float32).astype(np.float64) if f.seq % 2 else f.force_n for f in valid]
    )
    np.testing.assert_array_equal([row[0] for row in stored], expected_t)
    np.testing.assert_array_equal([row[1] for row in stored], expected_force)
    frames = query(influxdb, influx_db_name, "SELECT seq FROM frame")
    assert [row[1] for row in frames] == list(range(VALID_FRAMES))

    status, metrics = ingest.get("/metrics")
    assert status == 200
    for reason, count in expected.items():
        assert (
            f'osteotel_ingest_rejected_total{{hub="{HUB}",reason="{reason}"}} {count}.0' in metrics
        )
    assert (
        f'osteotel_ingest_frames_stored_total{{device="{VALID_DEVICE}"}} {VALID_FRAMES}.0'
        in metrics
    )
    assert ingest.process is not None
    assert ingest.process.poll() is None
    letters = sum(
        len(path.read_bytes().splitlines()) for path in ingest.dead_letter_dir.glob("*.jsonl")
    )
    assert letters == BAD_PAYLOADS
