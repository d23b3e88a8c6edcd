"""The same capture gives the same estimates offline (`osteotel analyze`) and online (ingest).

A small emulator capture of the example registry's three devices (two hubs, JSON and binary
telemetry; latency, then distraction steps and a daily weight-bearing test) is analysed in
process with `analyze_capture`, then replayed into a real Mosquitto while `osteotel ingest`
runs as a process; the estimates ingest publishes are recorded and compared with the offline
records, value for value, with no tolerance.

Aligned as a user would align them: analyze is run once per device with that device's
registry protocol (`--steps-per-day`, `--step-mm`, `--target-mm`), since analyze knows no
registry. Two differences are by design and asserted as such: ingest stamps each record with
the registry calibration id (analyze has none to give), and ingest never flushes its
estimator, so the records `fleet.flush()` closes at the end of a capture (the last, partial
day and a step window still open) exist offline only. A graceful stop and start of ingest in
the middle (its estimator checkpointed and restored) changes none of it.
"""

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from harness import EXAMPLE_REGISTRY, IngestProcess, ingest_env, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from apps.analyze import AnalyzeStats, analyze_capture
from apps.services import InfluxDB, Mosquitto
from devices.contract import status_topic
from devices.emulator.capture import CaptureWriter, capture_fleet, read_capture, replay
from devices.emulator.fleet import FleetPlan
from devices.registry import Registry
from dsp.estimator import EstimateRecord
from ingest.estimates import dsp_protocol
from osteotel.settings import MqttSettings

_DAYS = 9.5  # latency 7 days, then two and a half days of steps; a load test every day
_RATE_HZ = 20.0  # >= 10 Hz resolves the fast relaxation around a step (docs/domain.md)
_ENVELOPE = ("v", "hub", "patient")  # what `estimate_message` adds to a record


@pytest.fixture
def ingest(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> Iterator[IngestProcess]:
    """`osteotel ingest` against the session's broker and InfluxDB, with the example registry."""
    running = IngestProcess(
        ingest_env(mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path), tmp_path
    )
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0


class _Recorder:
    """Every estimate message ingest publishes, decoded, in arrival order."""

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.last_ns = time.monotonic_ns()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        self._client.subscribe("osteotel/v1/derived/+/estimates", qos=1)
        assert self._subscribed.wait(10), "the recorder could not subscribe"

    def _on_message(self, _client: object, _userdata: object, message: Any) -> None:
        with self._lock:
            self.messages.append(json.loads(message.payload))
            self.last_ns = time.monotonic_ns()

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _comparable(record: EstimateRecord) -> dict[str, Any]:
    """A record as ingest sends it: NaN as null, tuples as lists (through JSON, as on the wire)."""
    body = {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in record.as_dict().items()
    }
    decoded: dict[str, Any] = json.loads(json.dumps(body, allow_nan=False))
    return decoded


def _key(body: dict[str, Any]) -> tuple[str, str, int, int]:
    return body["device"], body["kind"], body["t_ns"], body.get("number", -1)


def _offline(capture: Path, registry: Registry) -> tuple[list[dict[str, Any]], AnalyzeStats]:
    """analyze_capture once per device with the device's registry protocol, as a user would."""
    records: list[dict[str, Any]] = []
    stats = AnalyzeStats()
    for device in registry.devices.values():
        protocol = dsp_protocol(device)
        stats = AnalyzeStats()
        records += [
            _comparable(record)
            for record in analyze_capture(capture, protocol=protocol, stats=stats)
            if record.device == device.id
        ]
    return records, stats


def _flushed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records only `fleet.flush()` closes: each device's last day and flushed windows."""
    last_day: dict[str, int] = {}
    for body in records:
        if body["kind"] == "daily":
            last_day[body["device"]] = max(last_day.get(body["device"], 0), body["t_ns"])
    return [
        body
        for body in records
        if (body["kind"] == "daily" and body["t_ns"] == last_day[body["device"]])
        or body.get("closed_by") == "flush"
    ]


def _split_in_a_step_window(capture: Path, directory: Path) -> tuple[Path, Path]:
    """The capture cut in two a few messages after its middle distraction step, so that the
    step's relaxation window is open where the first part ends."""
    messages = list(read_capture(capture))
    steps = [
        number
        for number, message in enumerate(messages)
        if message.topic.endswith("/events")
        and json.loads(message.payload).get("type") == "distraction_step"
    ]
    cut = steps[len(steps) // 2] + 5
    parts = (directory / "first.jsonl", directory / "second.jsonl")
    for path, part in zip(parts, (messages[:cut], messages[cut:]), strict=True):
        with CaptureWriter(path) as writer:
            writer.write_many(part)
    return parts


@pytest.mark.parametrize("restart", [False, True], ids=["uninterrupted", "restarted-midway"])
def test_a_capture_gives_the_same_estimates_offline_and_online(
    ingest: IngestProcess, mosquitto: Mosquitto, unique_id: str, tmp_path: Path, restart: bool
) -> None:
    """Every estimate ingest publishes for a replayed capture equals analyze's, bit for bit,
    also when ingest is stopped and started again inside a step's window (its estimator
    checkpoint written and restored)."""
    registry = Registry.load(EXAMPLE_REGISTRY)
    end_ns = time.time_ns() - 3_600_000_000_000  # an hour ago: nothing in ingest's future
    plan = FleetPlan.from_registry(
        registry, days=_DAYS, speed=None, end_ns=end_ns, seed=7, rate_hz=_RATE_HZ
    )
    capture = tmp_path / "fleet.jsonl.gz"
    written = asyncio.run(capture_fleet(plan, capture))

    offline, stats = _offline(capture, registry)
    assert stats.rejected == {}
    flushed = _flushed(offline)
    expected = [body for body in offline if body not in flushed]
    kinds = {body["kind"] for body in expected}
    assert {"step", "load_share", "daily"} <= kinds, f"the capture shows too little: {kinds}"

    recorder = _Recorder(mosquitto, f"estimates-{unique_id}")
    try:
        mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
        parts = _split_in_a_step_window(capture, tmp_path) if restart else (capture,)
        sent = 0
        for number, part in enumerate(parts):
            if number:
                # A graceful stop: what ingest received is stored and acknowledged, the rest
                # waits at the broker in ingest's session; the estimator state goes to disk.
                assert ingest.stop() == 0
                ingest.start()
            sent += asyncio.run(replay(part, mqtt, speed=None, client_id=f"replay-{unique_id}"))
        assert sent == written
        if restart:
            log = ingest.log()
            assert "checkpoint_written devices=3" in log
            assert "checkpoint_restored devices=3" in log
        wait_for(
            lambda: recorder.count() >= len(expected), "every online estimate", ingest,
            deadline_s=180.0,
        )  # fmt: skip
        # Anything beyond the offline set would come right behind: wait for a quiet spell.
        wait_for(
            lambda: time.monotonic_ns() - recorder.last_ns > 3_000_000_000, "estimates to stop"
        )
    finally:
        recorder.close()
        _clear_retained_status(mosquitto, plan.hubs, unique_id)

    # A start publishes each device's catch-up status on the same topic (docs/derived.md): the
    # restart's, from its checkpoint, for every device; they are not estimates.
    statuses = sorted(
        (body["device"], body["status"]) for body in recorder.messages if body["kind"] == "catchup"
    )
    assert statuses == ([(d, "caught_up") for d in sorted(registry.devices)] if restart else [])
    online = [body for body in recorder.messages if body["kind"] != "catchup"]
    for body in online:
        device = registry.devices[body["device"]]
        assert {key: body.pop(key) for key in _ENVELOPE} == {
            "v": 1, "hub": device.hub, "patient": device.patient,
        }  # fmt: skip
        # ingest knows the registry's calibration; analyze has none to stamp.
        assert body.pop("calibration_id") == device.calibration.id
    for body in expected:
        assert body.pop("calibration_id") is None
    assert sorted(online, key=_key) == sorted(expected, key=_key)


def _clear_retained_status(broker: Mosquitto, hubs: list[str], unique_id: str) -> None:
    """Remove the hub statuses the replay left retained on the shared broker."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"cleanup-{unique_id}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for hub in hubs:
            client.publish(status_topic(hub), b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
