"""Hubs moved to other processes: after `osteotel ingest --processes 1` is stopped and
`--processes 2` started in its place (and the other way round), every device's stored
estimates are still those `osteotel analyze` makes of the capture, and every sample is stored
once.

An emulated treatment of the example registry (HUB-A with DX-0001 and DX-0002, HUB-B with
DX-0003: BLAKE2b puts the two hubs on different children of two) is published in order by an
independent publisher, part-way to the first layout, which checkpoints; the part ends inside a
distraction step's relaxation window. The first layout stops (SIGTERM; or SIGKILL, after which
it is started again and stopped gracefully before the move, as docs/ingest.md "Moving hubs
between processes" says) and the second starts: each of its processes has its own state
directory with no checkpoint, so the devices are new to it and it rebuilds them from InfluxDB
(their `catchup` points say `rebuilt`, with the exact frame counts) before it reads the rest.
The old layout's persistent sessions keep queueing their hubs' messages after the move; the
test reads what they hold and removes them as the operator does. In the last test the hubs
publish on through the stop and the start, and the new layout's sessions are made first.
"""

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as paho
import pytest
from harness import (
    EXAMPLE_REGISTRY,
    IngestProcess,
    Publisher,
    Treatment,
    assert_estimates,
    count,
    drop_database,
    emulated_treatment,
    expect,
    frames_stored,
    ingest_env,
    ingest_metric,
    query,
    query_series,
    wait_for,
    wait_stored,
)
from paho.mqtt.enums import CallbackAPIVersion

from apps.services import InfluxDB, Mosquitto
from devices.codec import decode_frame
from devices.contract import SUBSCRIPTIONS, parse_topic, status_topic
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


def _make_session(mosquitto: Mosquitto, client_id: str) -> None:
    """The operator's step (docs/ingest.md): a persistent session with every hub's filters,
    made before its process exists, so that the broker queues for it from now on."""
    topics = [argument for topic in SUBSCRIPTIONS for argument in ("-t", topic)]
    subprocess.run(
        ["mosquitto_sub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-i", client_id,
         "-c", "-q", "1", *topics, "-E"],
        check=True, timeout=30,
    )  # fmt: skip


def _stored_frames(influxdb: InfluxDB, database: str, registry: Registry) -> dict[str, int]:
    """Frames stored per device (the `frame` measurement)."""
    stored = {}
    for device in registry.devices:
        rows = query(
            influxdb, database, f"SELECT count(\"n\") FROM frame WHERE device = '{device}'"
        )
        stored[device] = int(str(rows[0][1])) if rows else 0
    return stored


def _sessions(client_id: str, processes: int) -> list[str]:
    """The persistent sessions of a layout (ingest/supervisor.py names the children's)."""
    return [client_id] if processes == 1 else [f"{client_id}-{k}" for k in range(processes)]


class _Move(NamedTuple):
    """Process counts before and after, and how the first layout stops."""

    before: int
    after: int
    stop: signal.Signals


@dataclass
class _Run:
    """One test's treatment, servers, ingest layouts and publisher."""

    registry: Registry
    treatment: Treatment
    counts: dict[str, int]  # analyze's estimates per measurement
    client_id: str
    first: IngestProcess
    second: IngestProcess
    publisher: Publisher
    cut: int  # messages published to the first layout


@contextlib.contextmanager
def _running(
    mosquitto: Mosquitto, influxdb: InfluxDB, database: str, unique_id: str, workdir: Path,
    *, move: _Move,
) -> Iterator[_Run]:  # fmt: skip
    """The treatment, analyze's estimates and both layouts; everything is stopped, removed or
    dropped on leaving. The cut lies 20 frames into a distraction step's relaxation window."""
    registry = Registry.load(EXAMPLE_REGISTRY)
    assert {hub_partition(hub, 2) for hub in registry.hubs} == {0, 1}
    _clear_retained_statuses(mosquitto, registry, f"hubs-{unique_id}")
    treatment = emulated_treatment(registry, workdir, _DAYS)
    expected_db = f"{database}_expected"
    counts = expect(influxdb, expected_db, treatment, registry)
    client_id = f"ingest-{unique_id}"
    env = ingest_env(
        mosquitto, influxdb, database, client_id, workdir,
        checkpoint_interval_s="0.1", checkpoint_batches="3",
    )  # fmt: skip
    first, second = (
        IngestProcess(env, workdir / f"{n}p", args=("--processes", str(n)), processes=n)
        for n in (move.before, move.after)
    )
    for ingest in (first, second):
        ingest.workdir.mkdir()
    publisher = Publisher(mosquitto, treatment.messages, f"publisher-{unique_id}")
    cut = treatment.steps[len(treatment.steps) // 3] + 60
    run = _Run(registry, treatment, counts, client_id, first, second, publisher, cut)
    try:
        yield run
    finally:
        publisher.limit = len(treatment.messages)
        publisher.close()
        for ingest in (first, second):
            if ingest.process is not None and ingest.process.poll() is None:
                ingest.stop()
        for session in _sessions(client_id, 1) + _sessions(client_id, 2):
            _remove_session(mosquitto, session)
        drop_database(influxdb, expected_db)


def _first_part(run: _Run) -> None:
    """Start the first layout and publish the first part to it; wait until it is stored and
    a checkpoint written."""
    run.first.start()
    run.publisher.start()
    run.publisher.limit = run.cut
    part = sum(_frames(run.treatment.messages[: run.cut]).values())
    wait_for(lambda: frames_stored(run.first) == part, "the first part stored", run.first)
    wait_for(lambda: "checkpoint_written" in run.first.log(), "a checkpoint", run.first)


def _assert_moved(
    run: _Run, influxdb: InfluxDB, database: str, rebuilt_from: dict[str, int]
) -> None:
    """Once the second layout stored everything: analyze's estimates, every sample once, each
    device `rebuilt` from `rebuilt_from` frames."""
    second = run.second
    wait_stored(influxdb, database, run.treatment, run.counts, second)
    assert_estimates(influxdb, database, f"{database}_expected")
    for device, times in run.treatment.samples.items():
        assert count(influxdb, database, "raw", device) == len(times), device
    started = query_series(
        influxdb, database, 'SELECT "status", "frames" FROM "catchup" GROUP BY "device"'
    )
    assert {s.tags["device"]: s.values[-1][1:] for s in started} == {
        device: ["rebuilt", rebuilt_from.get(device, 0)] for device in run.registry.devices
    }
    assert second.log().count("status=rebuilt") == len(run.registry.devices)


def _received(run: _Run) -> list[tuple[float, float]]:
    """Each new process's received and foreign messages, from its /metrics."""
    return [
        (
            ingest_metric(run.second, "osteotel_ingest_messages_received_total", k),
            ingest_metric(run.second, "osteotel_ingest_messages_foreign_total", k),
        )
        for k in range(run.second.processes)
    ]


def _owned(run: _Run, messages: list[CapturedMessage], processes: int) -> list[int]:
    """How many of the messages belong to each process of `processes`."""
    owners = [hub_partition(parse_topic(m.topic).hub, processes) for m in messages]
    return [owners.count(k) for k in range(processes)]


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
    """Stopping one layout inside a step window and starting the other, with the hubs quiet
    in between, leaves exactly analyze's step, load-share and daily estimates and every sample
    once; the new processes rebuild their devices from the store, each hub's messages reach
    its new owner only, and the old layout's sessions hold the messages published since the
    move until removed."""
    database = influx_db_name
    with _running(mosquitto, influxdb, database, unique_id, tmp_path, move=move) as run:
        messages, first, publisher = run.treatment.messages, run.first, run.publisher
        _first_part(run)
        if move.stop == signal.SIGKILL:
            # Frozen, the process receives nothing more: what is published now stays
            # unacknowledged in its session, which is where a crash leaves messages.
            assert first.process is not None
            first.process.send_signal(signal.SIGSTOP)
            run.cut += _HELD
            publisher.limit = run.cut
            wait_for(lambda: publisher.published == run.cut, "messages for the frozen process")
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL
            assert _samples(influxdb, database, run.registry) == _expected_samples(
                messages[: run.cut - _HELD], run.registry
            )
            # After a crash the old layout starts again before the move: only its session
            # holds those messages (docs/ingest.md, "Moving hubs between processes").
            first.start()
            wait_for(lambda: _samples(influxdb, database, run.registry)
                     == _expected_samples(messages[: run.cut], run.registry),
                     "the held messages stored by the restarted process", first)  # fmt: skip
        assert first.stop(signal.SIGTERM) == 0

        run.second.start()  # each process ready once its devices are rebuilt
        publisher.limit = len(messages)
        publisher.join(60)
        assert publisher.failed is None
        assert publisher.published == len(messages)
        _assert_moved(run, influxdb, database, _frames(messages[: run.cut]))
        # The rest reached each hub's new owner, once, and no other process.
        owned = _owned(run, messages[run.cut :], move.after)
        assert _received(run) == [(n, 0) for n in owned]
        assert run.second.stop() == 0

        # The old layout's sessions queued their hubs' messages since the move: the new
        # processes got their own copies. Removing them is the last step of a move.
        for k, session in enumerate(_sessions(run.client_id, move.before)):
            held = _owned(run, messages[run.cut :], move.before)[k]
            assert _take_session(mosquitto, session, held) == (True, held)
            _remove_session(mosquitto, session)
            assert _take_session(mosquitto, session, 0) == (False, 0)
            _remove_session(mosquitto, session)  # the check left an empty session


def test_hubs_publishing_through_a_move_lose_nothing_once_the_new_sessions_exist(
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    *,
    influx_db_name: str,
    unique_id: str,
    tmp_path: Path,
) -> None:
    """With the new layout's sessions made before the old layout stops (docs/ingest.md), hubs
    that publish on through the stop and the start lose nothing: the new processes rebuild
    what the old one stored, store again without feeding again what it had read, and end with
    analyze's estimates."""
    database = influx_db_name
    move = _Move(1, 2, signal.SIGTERM)
    with _running(mosquitto, influxdb, database, unique_id, tmp_path, move=move) as run:
        messages, publisher = run.treatment.messages, run.publisher
        _first_part(run)
        for session in _sessions(run.client_id, move.after):
            _make_session(mosquitto, session)
        # The old layout reads on for a while, is stopped while the hubs publish, and the
        # rest is published while no process runs.
        publisher.limit = run.cut + 600
        wait_for(lambda: publisher.published >= run.cut + 300, "the old layout reading on")
        assert run.first.stop() == 0
        stored_by_old = _stored_frames(influxdb, database, run.registry)
        assert sum(_frames(messages[: run.cut]).values()) < sum(stored_by_old.values())
        assert sum(stored_by_old.values()) <= sum(_frames(messages[: run.cut + 600]).values())
        publisher.limit = len(messages)
        publisher.join(60)
        assert publisher.failed is None
        assert publisher.published == len(messages)

        run.second.start()
        _assert_moved(run, influxdb, database, stored_by_old)
        # What the old layout read after the sessions were made reached the new one too:
        # stored again, not fed again.
        not_fed = ingest_metric(run.second, "osteotel_ingest_catchup_frames_not_fed_total")
        assert not_fed == sum(stored_by_old.values()) - sum(_frames(messages[: run.cut]).values())
        # Each session held every hub's messages since it was made (all published before its
        # process connected and dropped the other hubs' filters): the other process's are
        # acknowledged as foreign, not stored, and stored by their owner.
        rest = messages[run.cut :]
        owned = _owned(run, rest, move.after)
        assert _received(run) == [(len(rest), len(rest) - n) for n in owned]
        assert run.second.stop() == 0
