"""The emulated fleet publishes over a real Mosquitto; everything it sends obeys the contract."""

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from apps.services import Mosquitto
from devices.codec import decode_status
from devices.contract import SUBSCRIPTIONS, MessageKind, parse_topic, status_topic
from devices.emulator.fleet import FleetPlan, hub_stream, run_fleet
from devices.emulator.hub import EmulatedHub
from devices.registry import Registry
from devices.validation import Limits, accept
from osteotel.settings import MqttSettings

EXAMPLE_REGISTRY = Path(__file__).resolve().parents[1] / "deploy" / "registry.example.toml"


def test_every_published_message_arrives_and_is_accepted(mosquitto: Mosquitto) -> None:
    """Nine days of the example registry arrive whole, in order per device, and pass validation."""
    registry = Registry.load(EXAMPLE_REGISTRY)
    plan = FleetPlan.from_registry(
        registry, days=9.0, speed=None, end_ns=time.time_ns(), seed=7,
        rate_hz=10.0, frame_samples=500,
    )  # fmt: skip
    expected = sum(1 for hub in plan.hubs for _ in hub_stream(plan, hub))
    received: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fleet-test-sub")
    client.on_connect = lambda c, *_: c.subscribe([(topic, 1) for topic in SUBSCRIPTIONS])
    client.on_subscribe = lambda *_: subscribed.set()
    # Retained statuses left by earlier tests arrive flagged `retain`; live messages do not.
    client.on_message = lambda _c, _u, m: (
        None if m.retain else received.append((m.topic, bytes(m.payload)))
    )
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
        published = asyncio.run(run_fleet(plan, mqtt=mqtt))
        deadline = time.monotonic() + 30
        # Two status messages per hub (online at start, offline at the end) besides the stream.
        while len(received) < published + 2 * len(plan.hubs) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()

    assert published == expected
    assert len(received) == published + 2 * len(plan.hubs)
    kinds = dict.fromkeys(MessageKind, 0)
    last_seq: dict[str, int] = {}
    for topic, payload in received:
        accepted = accept(topic, payload, registry=registry, now_ns=time.time_ns(), limits=Limits())
        kinds[accepted.topic.kind] += 1
        if accepted.topic.kind is MessageKind.TELEMETRY:
            device = parse_topic(topic).device
            assert device is not None
            seq = accepted.message.seq  # type: ignore[union-attr]
            assert seq == last_seq.get(device, -1) + 1
            last_seq[device] = seq
    assert kinds[MessageKind.TELEMETRY] > 0
    assert kinds[MessageKind.EVENTS] > 0
    assert set(last_seq) == set(registry.devices)


def test_the_same_seed_gives_the_same_capture_and_ground_truth(tmp_path: Path) -> None:
    """`osteotel emulate --out` twice with one seed and end time writes identical files."""
    outputs = []
    for run in ("first", "second"):
        capture = tmp_path / run / "fleet.jsonl.gz"
        capture.parent.mkdir()
        subprocess.run(
            [sys.executable, "-m", "apps.cli", "emulate", "--devices", "2", "--hubs", "2",
             "--days", "8", "--seed", "11", "--scenario", "normal,overload", "--rate-hz", "10",
             "--end-ns", "1764000000000000000", "--out", str(capture)],
            check=True, timeout=240, capture_output=True,
        )  # fmt: skip
        truth = sorted((capture.parent / "fleet.jsonl.gz.truth").iterdir())
        outputs.append([capture.read_bytes(), *[path.read_bytes() for path in truth]])
        assert [path.name for path in truth] == ["DX-0001.truth.jsonl", "DX-0002.truth.jsonl"]
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0]) > 1000
    assert all(b'"type":"step"' in truth for truth in outputs[0][1:])


def test_a_hub_that_dies_is_announced_offline_by_its_will(mosquitto: Mosquitto) -> None:
    """A hub whose session ends without DISCONNECT leaves the retained status `online: false`."""
    hub_id = "HUB-WILL"

    async def die_while_online() -> None:
        mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
        async with EmulatedHub(hub=hub_id, mqtt=mqtt):
            raise ConnectionAbortedError("the gateway loses power")

    address = ["-h", mosquitto.host, "-p", str(mosquitto.port), "-q", "1"]
    with pytest.raises(ConnectionAbortedError, match="loses power"):
        asyncio.run(die_while_online())
    try:
        retained = subprocess.run(
            ["mosquitto_sub", *address, "-t", status_topic(hub_id), "-C", "1", "-W", "10"],
            capture_output=True, check=True, timeout=20,
        ).stdout  # fmt: skip
    finally:
        # The session broker is shared: a retained status of an unknown hub would reach (and
        # be rejected by) every later ingest.
        subprocess.run(
            ["mosquitto_pub", *address, "-r", "-n", "-t", status_topic(hub_id)],
            check=True,
            timeout=20,
        )
    status = decode_status(retained.strip(), topic_hub=hub_id)
    assert (status.hub, status.online) == (hub_id, False)
