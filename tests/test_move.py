"""Hubs moved to other processes: after `osteotel ingest --processes 1` is stopped and
`--processes 2` started in its place (and the other way round), every device's stored
estimates are still those `osteotel analyze` makes of the capture, and every sample is stored
once.

An emulated treatment of the example registry (HUB-A with DX-0001 and DX-0002, HUB-B with
DX-0003: BLAKE2b puts the two hubs on different children of two) is published in order by an
independent publisher, part-way to the first layout, which checkpoints. The first part is
split inside a distraction step's relaxation window. The first layout stops (SIGTERM, or
SIGKILL as docs/ingest.md "Moving hubs between processes" says to recover from it), the
publisher waits, and the second layout starts: each of its processes has its own state
directory with no checkpoint, so the devices are new to it and it rebuilds them from InfluxDB
(their `catchup` points say `rebuilt`, with the exact frame counts) before it reads the rest.
The old layout's persistent sessions keep queueing their hubs' messages after the move; the
test reads what they hold and removes them as the operator does.
"""

import signal
import subprocess
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as paho
import pytest
from harness import (
    EXAMPLE_REGISTRY,
    IngestProcess,
    Publisher,
    assert_estimates,
    count,
    drop_database,
    emulated_treatment,
    expect,
    frames_stored,
    ingest_env,
    ingest_metric,
    query_series,
    wait_for,
    wait_stored,
)
from paho.mqtt.enums import CallbackAPIVersion

from apps.services import InfluxDB, Mosquitto
from devices.codec import decode_frame
from devices.contract import parse_topic, status_topic
from devices.emulator.capture import CapturedMessage
from devices.registry import Registry
from ingest.partition import hub_partition

_DAYS = 8.5  # latency 7 days, then a day and a half of steps (20); a load test every day
_HELD = 100  # messages published to a stopped (SIGSTOP) process before it is killed


def _frames(messages: list[CapturedMessage]) -> dict[str, int]:
    """Distinct frames (device, seq, t0_ns) per device among messages."""
    seen: set[tuple[str, int, int]] = set()
    for message in messages:
        if message.topic.endswith("/telemetry"):
            frame, _ = decode_frame(message.payload, topic_device=message.topic.split("/")[3])
            seen.add((frame.device, frame.seq, frame.t0_ns))
    return {device: sum(d == device for d, _, _ in seen) for device in {d for d, _, _ in seen}}


def _samples(influxdb: InfluxDB, database: str, registry: Registry) -> dict[str, int]:
    return {device: count(influxdb, database, "raw", device) for device in registry.devices}


def _expected_samples(messages: list[CapturedMessage], registry: Registry) -> dict[str, int]:
    samples = dict.fromkeys(registry.devices, 0)
    seen: set[tuple[str, int, int]] = set()
    for message in messages:
        if message.topic.endswith("/telemetry"):
            frame, _ = decode_frame(message.payload, topic_device=message.topic.split("/")[3])
            if (frame.device, frame.seq, frame.t0_ns) not in seen:
                seen.add((frame.device, frame.seq, frame.t0_ns))
                samples[frame.device] += frame.n
    return samples


def _take_session(mosquitto: Mosquitto, client_id: str, expected: int) -> tuple[bool, int]:
    """Connect as `client_id` without a clean session and take what its session holds (paho
    acknowledges each); returns whether the broker had the session and the messages taken
    once `expected` arrived (fewer only if the session held fewer)."""
    received: list[str] = []
    present: list[bool] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_connect = lambda _c, _u, flags, _rc, _p: present.append(flags.session_present)
    client.on_message = lambda _c, _u, message: received.append(message.topic)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        wait_for(lambda: bool(present), f"{client_id} connected")
        if present[0]:
            wait_for(lambda: len(received) >= expected, f"what {client_id}'s session holds")
    finally:
        client.disconnect()
        client.loop_stop()
    return present[0], len(received)


def _remove_session(mosquitto: Mosquitto, client_id: str) -> None:
    """The operator's step (docs/ingest.md): connect once with the id and a clean session."""
    subprocess.run(
        ["mosquitto_sub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-i", client_id,
         "-t", "osteotel/v1/+/status", "-E"],
        check=True, timeout=30,
    )  # fmt: skip


def _clear_retained_statuses(mosquitto: Mosquitto, registry: Registry, client_id: str) -> None:
    """Hub statuses other tests' emulated hubs left retained would reach the new
    subscriptions and be counted: an empty retained message clears each."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        for hub in registry.hubs:
            client.publish(status_topic(hub), b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _sessions(client_id: str, processes: int) -> list[str]:
    """The persistent sessions of a layout (ingest/supervisor.py names the children's)."""
    return [client_id] if processes == 1 else [f"{client_id}-{k}" for k in range(processes)]


class _Move(NamedTuple):
    """Process counts before and after, and how the first layout stops."""

    before: int
    after: int
    stop: signal.Signals


@pytest.mark.parametrize(
    "move",
    [_Move(1, 2, signal.SIGTERM), _Move(1, 2, signal.SIGKILL), _Move(2, 1, signal.SIGTERM)],
    ids=["1to2-sigterm", "1to2-sigkill-restart-first", "2to1-sigterm"],
)
def test_moved_hubs_keep_the_estimates_of_analyze(
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    *,
    influx_db_name: str,
    unique_id: str,
    tmp_path: Path,
    move: _Move,
) -> None:
    """Stopping one layout inside a step window and starting the other leaves exactly
    analyze's step, load-share and daily estimates and every sample once; the new processes
    rebuild their devices from the store, each hub's messages reach its new owner only, and
    the old layout's sessions hold the messages published since the move until removed."""
    before, after, stop = move
    registry = Registry.load(EXAMPLE_REGISTRY)
    assert {hub_partition(hub, 2) for hub in registry.hubs} == {0, 1}
    _clear_retained_statuses(mosquitto, registry, f"hubs-{unique_id}")
    treatment = emulated_treatment(registry, tmp_path, _DAYS)
    messages = treatment.messages
    cut = treatment.steps[len(treatment.steps) // 3] + 60  # 20 frames into a step's window
    expected_db = f"{influx_db_name}_expected"
    counts = expect(influxdb, expected_db, treatment, registry)
    client_id = f"ingest-{unique_id}"
    env = ingest_env(
        mosquitto, influxdb, influx_db_name, client_id, tmp_path,
        checkpoint_interval_s="0.1", checkpoint_batches="3",
    )  # fmt: skip

    def layout(processes: int) -> IngestProcess:
        return IngestProcess(
            env, tmp_path / f"{processes}p", args=("--processes", str(processes)),
            processes=processes,
        )  # fmt: skip

    first, second = layout(before), layout(after)
    for ingest in (first, second):
        ingest.workdir.mkdir()
    publisher = Publisher(mosquitto, messages, f"publisher-{unique_id}")
    try:
        first.start()
        publisher.start()
        publisher.limit = cut
        wait_for(lambda: frames_stored(first) == sum(_frames(messages[:cut]).values()),
                 "the first part stored", first)  # fmt: skip
        wait_for(lambda: "checkpoint_written" in first.log(), "a checkpoint", first)
        if stop == signal.SIGKILL:
            # Frozen, the process receives nothing more: what is published now stays
            # unacknowledged in its session, which is where a crash leaves messages.
            assert first.process is not None
            first.process.send_signal(signal.SIGSTOP)
            cut += _HELD
            publisher.limit = cut
            wait_for(lambda: publisher.published == cut, "messages held for the frozen process")
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL
            assert _samples(influxdb, influx_db_name, registry) == _expected_samples(
                messages[: cut - _HELD], registry
            )
            # After a crash the old layout starts again before the move: only its session
            # holds those messages (docs/ingest.md, "Moving hubs between processes").
            first.start()
            wait_for(lambda: _samples(influxdb, influx_db_name, registry)
                     == _expected_samples(messages[:cut], registry),
                     "the held messages stored by the restarted process", first)  # fmt: skip
        assert first.stop(signal.SIGTERM) == 0

        second.start()  # each process ready once its devices are rebuilt
        publisher.limit = len(messages)
        publisher.join(60)
        assert publisher.failed is None
        assert publisher.published == len(messages)
        wait_stored(influxdb, influx_db_name, treatment, counts, second)
        assert_estimates(influxdb, influx_db_name, expected_db)
        for device, times in treatment.samples.items():
            assert count(influxdb, influx_db_name, "raw", device) == len(times), device

        # How each device of the new layout started: rebuilt from the first part's frames.
        moved_from = dict.fromkeys(registry.devices, 0) | _frames(messages[:cut])
        started = query_series(
            influxdb, influx_db_name,
            'SELECT "status", "frames" FROM "catchup" GROUP BY "device"',
        )  # fmt: skip
        assert {s.tags["device"]: s.values[-1][1:] for s in started} == {
            device: ["rebuilt", frames] for device, frames in moved_from.items()
        }
        assert second.log().count("status=rebuilt") == len(registry.devices)
        # The rest reached each hub's new owner, once, and no other process.
        rest = messages[cut:]
        for k in range(after):
            owned = sum(hub_partition(parse_topic(m.topic).hub, after) == k for m in rest)
            received = ingest_metric(second, "osteotel_ingest_messages_received_total", k)
            assert received == owned, k
            assert ingest_metric(second, "osteotel_ingest_messages_foreign_total", k) == 0
        assert second.stop() == 0

        # The old layout's sessions queued their hubs' messages since the move: the new
        # processes got their own copies. Removing them is the last step of a move.
        for k, session in enumerate(_sessions(client_id, before)):
            held = sum(hub_partition(parse_topic(m.topic).hub, before) == k for m in rest)
            assert _take_session(mosquitto, session, held) == (True, held)
            _remove_session(mosquitto, session)
            assert _take_session(mosquitto, session, 0) == (False, 0)
            _remove_session(mosquitto, session)  # the check left an empty session
    finally:
        publisher.limit = len(messages)
        publisher.close()
        for ingest in (first, second):
            if ingest.process is not None and ingest.process.poll() is None:
                ingest.stop()
        for session in _sessions(client_id, 1) + _sessions(client_id, 2):
            _remove_session(mosquitto, session)
        drop_database(influxdb, expected_db)
