"""Two ingest processes share the hubs: each message is received by exactly one, and each
device is stored by exactly one, all of it."""

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from harness import (
    EXAMPLE_REGISTRY,
    IngestProcess,
    clear_hub_status,
    ingest_env,
    query,
    query_series,
    running_ingest,
    wait_for,
)
from paho.mqtt.enums import CallbackAPIVersion

from apps.bench.processes import process_tree
from apps.services import InfluxDB, Mosquitto
from devices.codec import encode_frame_json
from devices.contract import SUBSCRIPTIONS, Frame, hub_filter, telemetry_topic
from ingest.partition import hub_partition, partition_of, subscriptions
from ingest.supervisor import child_environment, partitions_here
from osteotel.settings import Settings

DEVICES = (("HUB-A", "DX-0001"), ("HUB-A", "DX-0002"), ("HUB-B", "DX-0003"))
FRAMES_PER_DEVICE = 30


@pytest.fixture
def two_processes(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> Iterator[IngestProcess]:
    """`osteotel ingest --processes 2`, on a broker holding no retained hub status (the broker
    is shared by the session's tests: a child would receive one on subscribing)."""
    clear_hub_status(mosquitto, {hub for hub, _ in DEVICES}, f"clear-{unique_id}")
    env = ingest_env(
        mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path,
        stats_interval_s="0.5",
    )  # fmt: skip
    with running_ingest(env, tmp_path, args=("--processes", "2"), processes=2) as running:
        yield running


def test_partition_is_by_hub_stable_and_covers_every_process() -> None:
    """The owner of a topic is its hub's, whatever the device or kind; hubs whose ids differ in
    one character spread over both processes; an unparsable topic belongs to process 0."""
    hubs = [f"HUB-{n:03d}" for n in range(1, 33)]
    assert {hub_partition(hub, 2) for hub in hubs} == {0, 1}
    assert {hub_partition(hub, 2) for hub in ("HUB-A", "HUB-B")} == {0, 1}
    for hub in hubs[:4]:
        owners = {partition_of(telemetry_topic(hub, f"DX-{n:04d}"), 2) for n in range(16)}
        owners.add(partition_of(f"osteotel/v1/{hub}/status", 2))
        assert owners == {hub_partition(hub, 2)}
    assert partition_of("not/a/topic", 2) == 0


def test_each_hub_is_subscribed_by_exactly_one_process() -> None:
    """With two processes, each subscribes to its own hubs' subtrees and drops the wildcards and
    the other's hubs from its session; one process keeps the wildcards (and rejects what an
    unregistered hub publishes)."""
    hubs = [f"HUB-{n:03d}" for n in range(1, 9)]
    first, second = (subscriptions(hubs, 2, k) for k in (0, 1))
    assert sorted(first.wanted + second.wanted) == sorted(hub_filter(hub) for hub in hubs)
    assert not set(first.wanted) & set(second.wanted)
    for own, other in ((first, second), (second, first)):
        assert set(own.stale) == set(SUBSCRIPTIONS) | set(other.wanted)
    single = subscriptions(hubs, 1, 0)
    assert (single.wanted, single.stale) == (SUBSCRIPTIONS, ())


def _counter(ingest: IngestProcess, partition: int, name: str) -> float:
    """One un-labelled counter from a child's /metrics (ports http_port + k)."""
    port = int(ingest.env["OSTEOTEL_INGEST__HTTP_PORT"]) + partition
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not on process {partition}'s /metrics")


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
        assert owners[device].endswith(f"-{hub_partition(hub, 2)}")
    # Every message reached exactly one process: the two received counts add up to what was
    # published (the registry's hub status messages aside: none were sent), none foreign.
    received = [
        _counter(two_processes, k, "osteotel_ingest_messages_received_total") for k in (0, 1)
    ]
    foreign = [_counter(two_processes, k, "osteotel_ingest_messages_foreign_total") for k in (0, 1)]
    per_hub = {hub: sum(h == hub for h, _ in DEVICES) * FRAMES_PER_DEVICE for hub, _ in DEVICES}
    expected_received = [
        sum(n for hub, n in per_hub.items() if hub_partition(hub, 2) == k) for k in (0, 1)
    ]
    assert received == expected_received
    assert foreign == [0, 0]


def _publish(mosquitto: Mosquitto, client_id: str, hub: str, device: str, seqs: range) -> int:
    """Publish frames `seqs` of one device at QoS 1; returns their sample count."""
    rng = np.random.default_rng(seqs.start)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    t0_ns = time.time_ns() - 3_600_000_000_000
    try:
        for seq in seqs:
            frame = Frame(
                device=device, seq=seq, t0_ns=t0_ns + seq * 10**9, rate_hz=100.0,
                force_n=rng.normal(80.0, 5.0, 40), disp_mm=rng.uniform(0.0, 1.0, 40),
            )  # fmt: skip
            client.publish(
                telemetry_topic(hub, device), encode_frame_json(frame), 1
            ).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    return 40 * len(seqs)


def test_a_hub_added_to_the_registry_is_subscribed_by_its_owner(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> None:
    """Two processes start with a registry without HUB-B: nobody reads it (in a secured
    deployment its credentials come from the registry too). Once the registry names it, its
    owner subscribes on the reload and stores what it publishes from then on."""
    full = EXAMPLE_REGISTRY.read_text(encoding="utf-8")
    hub_b = full.index('[[hub]]\nid = "HUB-B"')
    without_b = (
        full[:hub_b] + full[full.index("[[device]]") : full.index('[[device]]\nid = "DX-0003"')]
    )
    registry = tmp_path / "registry.toml"
    registry.write_text(without_b, encoding="utf-8")
    env = ingest_env(
        mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path,
        registry=str(registry), registry_reload_s="0.3",
    )  # fmt: skip
    owner = hub_partition("HUB-B", 2)
    with running_ingest(env, tmp_path, args=("--processes", "2"), processes=2) as ingest:
        _publish(mosquitto, f"hub-b-{unique_id}", "HUB-B", "DX-0003", range(5))
        registry.write_text(full, encoding="utf-8")
        wait_for(lambda: "mqtt_subscribed" in ingest.log(), "the owner's new subscription", ingest)
        samples = _publish(mosquitto, f"hub-b-{unique_id}", "HUB-B", "DX-0003", range(5, 15))

        def landed() -> bool:
            rows = query(
                influxdb, influx_db_name, "SELECT count(force_n) FROM raw WHERE device = 'DX-0003'"
            )
            return bool(rows) and rows[0][1] == samples

        wait_for(landed, "HUB-B's frames after the reload", ingest)
        received = [_counter(ingest, k, "osteotel_ingest_messages_received_total") for k in (0, 1)]
    assert received[owner] == 10
    assert received[1 - owner] == 0


def test_two_machines_share_the_site_partitions_between_their_children() -> None:
    """Machine A (first partition 0) and B (first partition 2) of a 4-partition site, two
    children each: every partition runs once, with its own client id, state and spool, and
    every hub is subscribed by exactly one child; a machine cannot run past the last one."""

    hubs = [f"HUB-{n:03d}" for n in range(1, 33)]
    envs = []
    for first in (0, 2):
        settings = Settings(ingest={"partitions": 4, "partition": first})
        for local, partition in enumerate(partitions_here(settings, 2)):
            envs.append(child_environment(settings, partition, 4, local))
    assert sorted(int(env["OSTEOTEL_INGEST__PARTITION"]) for env in envs) == [0, 1, 2, 3]
    assert {env["OSTEOTEL_INGEST__PARTITIONS"] for env in envs} == {"4"}
    for key in (
        "OSTEOTEL_MQTT__CLIENT_ID",
        "OSTEOTEL_INGEST__STATE_DIR",
        "OSTEOTEL_INGEST__SPOOL_DIR",
    ):
        assert len({env[key] for env in envs}) == 4
    wanted = [
        set(subscriptions(hubs, 4, int(env["OSTEOTEL_INGEST__PARTITION"])).wanted) for env in envs
    ]
    assert sorted(f for w in wanted for f in w) == sorted(hub_filter(hub) for hub in hubs)
    with pytest.raises(ValueError, match="do not exist"):
        partitions_here(Settings(ingest={"partitions": 4, "partition": 3}), 2)
    one_machine = Settings()
    assert list(partitions_here(one_machine, 2)) == [0, 1]


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_each_child_keeps_its_dead_letters_and_stops_with_its_supervisor(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> None:
    """With two processes, a bad message of each hub is dead-lettered in its owner's own
    directory (dead_letter_dir/partition-k); a SIGKILLed supervisor takes its children with it
    (they stop gracefully instead of running on, subscribed, beside the next supervisor's)."""
    env = ingest_env(mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path)
    ingest = IngestProcess(env, tmp_path, args=("--processes", "2"), processes=2)
    ingest.start()
    assert ingest.process is not None
    supervisor = ingest.process.pid
    children = [pid for pid in process_tree(supervisor) if pid != supervisor]
    assert len(children) == 2
    try:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bad-{unique_id}")
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        for hub, device in (("HUB-A", "DX-0001"), ("HUB-B", "DX-0003")):
            client.publish(telemetry_topic(hub, device), b"{not json", 1).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
        for hub in ("HUB-A", "HUB-B"):
            own = tmp_path / "dead-letter" / f"partition-{hub_partition(hub, 2)}"
            wait_for(lambda own=own, hub=hub: any(  # type: ignore[misc]
                f"/{hub}/" in path.read_text() for path in own.glob("dead-letter-*.jsonl")
            ), f"{hub}'s dead letter in its owner's directory", ingest)  # fmt: skip
        ingest.process.kill()
        ingest.process.wait(10)
        wait_for(lambda: not any(_running(pid) for pid in children),
                 "the children to stop with their supervisor")  # fmt: skip
    finally:
        for pid in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
