"""Two ingest processes share the devices: each device is stored by exactly one, all of it."""

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from harness import IngestProcess, ingest_env, query, query_series, running_ingest, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from apps.services import InfluxDB, Mosquitto
from devices.codec import encode_frame_json
from devices.contract import Frame, telemetry_topic
from ingest.service import partition_of

DEVICES = (("HUB-A", "DX-0001"), ("HUB-A", "DX-0002"), ("HUB-B", "DX-0003"))
FRAMES_PER_DEVICE = 30


@pytest.fixture
def two_processes(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> Iterator[IngestProcess]:
    """`osteotel ingest --processes 2`."""
    env = ingest_env(
        mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path,
        stats_interval_s="0.5",
    )  # fmt: skip
    with running_ingest(env, tmp_path, args=("--processes", "2"), processes=2) as running:
        yield running


def test_partition_is_stable_and_covers_every_process() -> None:
    """The owner of a device depends only on its id; 64 devices spread over both processes."""
    owners = {partition_of(telemetry_topic("HUB-A", f"DX-{n:04d}"), 2) for n in range(64)}
    assert owners == {0, 1}
    topic = telemetry_topic("HUB-A", "DX-0007")
    assert partition_of(topic, 2) == partition_of(topic.replace("telemetry", "events"), 2)
    assert partition_of("not/a/topic", 2) == 0


def test_each_device_is_stored_once_by_its_owner(
    two_processes: IngestProcess, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str
) -> None:
    """Every sample lands once; ingest_stats shows each device under one instance only."""
    rng = np.random.default_rng(3)
    t0_ns = time.time_ns() - 3_600_000_000_000
    published: dict[str, list[Frame]] = {device: [] for _, device in DEVICES}
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hubs-{influx_db_name}")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        for seq in range(FRAMES_PER_DEVICE):
            for hub, device in DEVICES:
                frame = Frame(
                    device=device, seq=seq, t0_ns=t0_ns + seq * 10**9, rate_hz=100.0,
                    force_n=rng.normal(80.0, 5.0, 40), disp_mm=rng.uniform(0.0, 1.0, 40),
                )  # fmt: skip
                topic = telemetry_topic(hub, device)
                client.publish(topic, encode_frame_json(frame), 1).wait_for_publish(10)
                published[device].append(frame)
    finally:
        client.loop_stop()
        client.disconnect()

    for _, device in DEVICES:
        expected = np.concatenate([f.force_n for f in published[device]])

        def landed(device: str = device, count: int = expected.size) -> bool:
            rows = query(
                influxdb,
                influx_db_name,
                f"SELECT count(force_n) FROM raw WHERE device = '{device}'",
            )
            return bool(rows) and rows[0][1] == count

        wait_for(landed, f"{device}'s samples", two_processes)
        rows = query(influxdb, influx_db_name, f"SELECT force_n FROM raw WHERE device = '{device}'")
        np.testing.assert_array_equal([row[1] for row in rows], expected)

    def stats_written() -> bool:
        series = query_series(
            influxdb, influx_db_name,
            "SELECT last(frames_stored) FROM ingest_stats GROUP BY device, instance",
        )  # fmt: skip
        return len({s.tags["device"] for s in series}) == len(DEVICES) and all(
            s.values[0][1] == FRAMES_PER_DEVICE for s in series
        )

    wait_for(stats_written, "ingest_stats to count every device's frames", two_processes)
    series = query_series(
        influxdb, influx_db_name,
        "SELECT last(frames_stored) FROM ingest_stats GROUP BY device, instance",
    )  # fmt: skip
    owners = {s.tags["device"]: s.tags["instance"] for s in series}
    assert len(series) == len(DEVICES)  # one instance per device, never two
    for hub, device in DEVICES:
        partition = partition_of(telemetry_topic(hub, device), 2)
        assert owners[device].endswith(f"-{partition}")
