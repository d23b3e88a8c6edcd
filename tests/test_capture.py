"""Capture files round-trip byte for byte; record, replay and `emulate --out` agree."""

import argparse
import asyncio
import base64
import json
from collections import defaultdict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.bench import replay as replay_bench
from apps.services import Mosquitto, free_port
from devices.emulator.capture import (
    CapturedMessage,
    CaptureError,
    CaptureWriter,
    capture_fleet,
    capture_line,
    read_capture,
    record,
    replay,
)
from devices.emulator.fleet import FleetPlan, hub_encodings, plan_devices
from osteotel.settings import MqttSettings

END_NS = 1_700_000_000_000_000_000
_FINITE = st.floats(allow_nan=False, allow_infinity=False)

SAMPLES = [
    CapturedMessage("a/b/telemetry", b'{"v":1,"x":[1.5,2]}', 10, 1, False),
    CapturedMessage("a/b/events", b'{ "spaced" : true,\t"u":"\\u00e9\xc3\xa9" }', 11, 0, False),
    CapturedMessage("a/status", b'{"online":false}', 12, 2, True),
    CapturedMessage("a/b/telemetry", b"OTF1\x01\x00\x02\x00binary\xff\x00", 13, 1, False),
    CapturedMessage("a/b/telemetry", b'{"force_n":[NaN]}', 14, 1, False),
    CapturedMessage("a/b/telemetry", b'{"a":1}\n', 15, 1, False),
    CapturedMessage("a/b/telemetry", b"[1,2]", 16, 1, False),
    CapturedMessage("a/b/telemetry", b"", 17, 1, False),
    CapturedMessage('we"ird/t\\opic/é', b'{"payload":"x"}', 18, 1, False),
]
SAMPLE_IDS = [
    "compact-json", "spaced-unicode-json", "retained-qos2", "binary", "nan-json",
    "json-with-newline", "json-array", "empty", "escaped-topic",
]  # fmt: skip


def _plan(seed: int, *, devices: int = 2, days: float = 0.02) -> FleetPlan:
    configs = plan_devices(
        devices=devices, hubs=2, seed=seed, scenarios=["normal"], rate_hz=10.0, frame_samples=50
    )
    return FleetPlan(
        devices=configs,
        encodings=hub_encodings([config.hub for config in configs], "mixed"),
        start_ns=END_NS - round(days * 86_400e9),
        end_ns=END_NS,
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"], ids=["plain", "gzip"])
def test_writer_reader_round_trip(tmp_path: Path, suffix: str) -> None:
    """Every message read back equals the one written, payload bytes included, plain or gzip."""
    path = tmp_path / f"capture{suffix}"
    with CaptureWriter(path) as writer:
        writer.write_many(SAMPLES)
    assert list(read_capture(path)) == SAMPLES


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"], ids=["plain", "gzip"])
def test_a_reader_of_some_topics_gets_exactly_their_messages(tmp_path: Path, suffix: str) -> None:
    """Read for two topics (one with escapes), a file gives their messages in file order, equal
    to those of a full read; a line of another topic is not parsed, so a broken one is passed
    over, while a broken line of a topic read still raises."""
    path = tmp_path / f"capture{suffix}"
    with CaptureWriter(path) as writer:
        writer.write_many(SAMPLES)
    wanted = {"a/b/telemetry", 'we"ird/t\\opic/é'}
    expected = [message for message in SAMPLES if message.topic in wanted]
    assert len(expected) == 7
    assert list(read_capture(path, topics=wanted)) == expected
    assert list(read_capture(path, topics=["a/b/telemetry/"])) == []
    broken = b'{"topic":"a/status","t_ns":1,"qos":1,"retain":false,"payload_b64":"@@"}'
    plain = tmp_path / "broken.jsonl"
    plain.write_bytes(broken + b"\n" + b"\n".join(line for line in _lines(SAMPLES)) + b"\n")
    assert list(read_capture(plain, topics=wanted)) == expected
    with pytest.raises(CaptureError) as caught:
        list(read_capture(plain, topics=["a/status"]))
    assert caught.value.line == 1


def _lines(messages: list[CapturedMessage]) -> list[bytes]:
    """The messages as capture lines, without their newline."""
    return [
        capture_line(m.topic, m.payload, m.t_ns, m.qos, m.retain).rstrip(b"\n") for m in messages
    ]


@pytest.mark.parametrize("message", SAMPLES, ids=SAMPLE_IDS)
def test_payload_is_verbatim_only_for_strict_one_line_json_objects(
    tmp_path: Path, message: CapturedMessage
) -> None:
    """A strict one-line JSON object is embedded as its own bytes; anything else is base64."""
    path = tmp_path / "capture.jsonl"
    with CaptureWriter(path) as writer:
        writer.write_many([message])
    line = path.read_bytes()
    document = json.loads(line)
    strict_object = message.payload in {
        SAMPLES[0].payload, SAMPLES[1].payload, SAMPLES[2].payload, SAMPLES[8].payload
    }  # fmt: skip
    if strict_object:
        assert line.endswith(b',"payload":' + message.payload + b"}\n")
        assert "payload_b64" not in document
    else:
        assert base64.b64decode(document["payload_b64"]) == message.payload
        assert "payload" not in document
    assert list(document)[:4] == ["topic", "t_ns", "qos", "retain"]
    assert document["topic"] == message.topic


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    topic=st.text(min_size=1, max_size=40),
    retain=st.booleans(),
)
def test_arbitrary_payloads_round_trip(
    tmp_path: Path, payloads: list[bytes], topic: str, retain: bool
) -> None:
    """Any bytes on any topic come back identical, through the base64 or the verbatim path."""
    path = tmp_path / "capture.jsonl.gz"
    messages = [CapturedMessage(topic, p, i, i % 3, retain) for i, p in enumerate(payloads)]
    with CaptureWriter(path) as writer:
        writer.write_many(messages)
    assert list(read_capture(path)) == messages


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=10,
        ),
        max_size=5,
    ),
    ensure_ascii=st.booleans(),
)
def test_json_objects_are_stored_verbatim(
    tmp_path: Path, document: dict[str, object], ensure_ascii: bool
) -> None:
    """A JSON object payload sits in the line as its own bytes and reads back identical."""
    payload = json.dumps(document, ensure_ascii=ensure_ascii, allow_nan=False).encode()
    path = tmp_path / "capture.jsonl"
    with CaptureWriter(path) as writer:
        writer.write("t", payload, t_ns=1)
    assert path.read_bytes().endswith(b',"payload":' + payload + b"}\n")
    assert [m.payload for m in read_capture(path)] == [payload]


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b'{"topic":"t","t_ns":1,"qos":1,"retain":false}\n',
        b'{"topic":"t","t_ns":1,"qos":3,"retain":false,"payload":{}}\n',
        b'{"t_ns":1,"topic":"t","qos":1,"retain":false,"payload":{}}\n',
        b'{"topic":"t","t_ns":1,"qos":1,"retain":false,"payload_b64":"@@"}\n',
        b'{"topic":"t","t_ns":"1","qos":1,"retain":false,"payload":{}}\n',
    ],
    ids=["not-json", "no-payload", "bad-qos", "key-order", "bad-base64", "string-time"],
)
def test_malformed_lines_are_refused_with_their_number(tmp_path: Path, line: bytes) -> None:
    """A line that breaks the format raises CaptureError naming the line."""
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b'{"topic":"t","t_ns":1,"qos":1,"retain":false,"payload":{}}\n' + line)
    with pytest.raises(CaptureError) as caught:
        list(read_capture(path))
    assert caught.value.line == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"], ids=["plain", "gzip"])
def test_capture_fleet_is_byte_identical_for_one_seed(tmp_path: Path, suffix: str) -> None:
    """The same plan and seed give the same file, byte for byte; another seed does not."""
    first, second, other = (tmp_path / f"{name}{suffix}" for name in ("a", "b", "c"))
    count = asyncio.run(capture_fleet(_plan(3), first))
    assert asyncio.run(capture_fleet(_plan(3), second)) == count
    asyncio.run(capture_fleet(_plan(4), other))
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_capture_fleet_frames_hubs_with_status_and_keeps_time_order(tmp_path: Path) -> None:
    """Each hub opens online and closes offline, retained; times never go back; both encodings."""
    path = tmp_path / "fleet.jsonl"
    plan = _plan(5)
    asyncio.run(capture_fleet(plan, path))
    messages = list(read_capture(path))
    times = [m.t_ns for m in messages]
    assert times == sorted(times)
    for hub in plan.hubs:
        statuses = [m for m in messages if m.topic == f"osteotel/v1/{hub}/status"]
        assert [json.loads(m.payload)["online"] for m in statuses] == [True, False]
        assert [m.t_ns for m in statuses] == [plan.start_ns, plan.end_ns]
        assert all(m.retain for m in statuses)
    telemetry = [m.payload for m in messages if m.topic.endswith("/telemetry")]
    assert any(p.startswith(b"OTF1") for p in telemetry)
    assert any(p.startswith(b"{") for p in telemetry)


def _per_device(messages: list[CapturedMessage]) -> dict[str, list[tuple[str, bytes, int, bool]]]:
    """Messages grouped by the topic's hub/device levels, in order."""
    grouped: dict[str, list[tuple[str, bytes, int, bool]]] = defaultdict(list)
    for m in messages:
        device = "/".join(m.topic.split("/")[2:-1])
        grouped[device].append((m.topic, m.payload, m.qos, m.retain))
    return dict(grouped)


async def _record_while(  # noqa: PLR0917 - a test helper read at its two call sites
    mqtt: MqttSettings,
    path: Path,
    prefix: str,
    client_id: str,
    expected: int,
    publish: Coroutine[Any, Any, int],
) -> int:
    """Record under `prefix` while awaiting `publish`, until `expected` messages arrived."""
    ready = asyncio.Event()
    recording = asyncio.create_task(
        record(
            mqtt, path, topics=[f"{prefix}/#"], duration_s=60.0, max_messages=expected,
            client_id=client_id, ready=ready,
        )
    )  # fmt: skip
    await asyncio.wait_for(ready.wait(), 10)
    await publish
    return await recording


def test_record_replay_record_gives_the_same_messages(
    tmp_path: Path, mosquitto: Mosquitto, unique_topic_prefix: str, unique_id: str
) -> None:
    """Recording a replay of a recording gives the same (topic, payload, qos, retain) per device."""
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    fleet = tmp_path / "fleet.jsonl"
    asyncio.run(capture_fleet(_plan(9), fleet))
    source = tmp_path / "source.jsonl.gz"
    with CaptureWriter(source) as writer:
        writer.write_many(
            CapturedMessage(
                m.topic.replace("osteotel/v1", unique_topic_prefix, 1),
                m.payload, m.t_ns, m.qos, m.retain,
            )
            for m in read_capture(fleet)
        )  # fmt: skip
    originals = list(read_capture(source))
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl.gz"

    async def scenario() -> tuple[int, int]:
        n1 = await _record_while(
            mqtt, first, unique_topic_prefix, f"rec1-{unique_id}", len(originals),
            replay(source, mqtt, speed=None, client_id=f"rep1-{unique_id}"),
        )  # fmt: skip
        n2 = await _record_while(
            mqtt, second, unique_topic_prefix, f"rec2-{unique_id}", n1,
            replay(first, mqtt, speed=None, client_id=f"rep2-{unique_id}"),
        )  # fmt: skip
        return n1, n2

    n1, n2 = asyncio.run(scenario())
    recorded_first, recorded_second = list(read_capture(first)), list(read_capture(second))
    assert n1 == n2 == len(originals)
    assert _per_device(recorded_first) == _per_device(originals)
    assert _per_device(recorded_second) == _per_device(recorded_first)
    assert any(m.retain for m in recorded_second)


def test_paced_replay_keeps_order_and_count(
    tmp_path: Path, mosquitto: Mosquitto, unique_topic_prefix: str, unique_id: str
) -> None:
    """At speed 10 a 2 s capture arrives whole and in order, each device's messages in sequence."""
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    source = tmp_path / "paced.jsonl"
    topics = [f"{unique_topic_prefix}/HUB-1/DX-{n}/telemetry" for n in range(3)]
    with CaptureWriter(source) as writer:
        for index in range(60):
            payload = json.dumps({"seq": index}, separators=(",", ":")).encode()
            writer.write(topics[index % 3], payload, t_ns=END_NS + index * 33_000_000)
    recorded = tmp_path / "recorded.jsonl"

    async def scenario() -> int:
        return await _record_while(
            mqtt, recorded, unique_topic_prefix, f"rec-{unique_id}", 60,
            replay(source, mqtt, speed=10.0, client_id=f"rep-{unique_id}"),
        )  # fmt: skip

    assert asyncio.run(scenario()) == 60
    seqs = [json.loads(m.payload)["seq"] for m in read_capture(recorded)]
    assert seqs == list(range(60))
    times = [m.t_ns for m in read_capture(recorded)]
    assert times == sorted(times)


@pytest.mark.parametrize(("speed", "window"), [(0.0, 1), (None, 0)], ids=["speed", "window"])
def test_replay_refuses_bad_arguments(tmp_path: Path, speed: float | None, window: int) -> None:
    """A speed that is not positive or a window below 1 is a ValueError before any connection."""
    mqtt = MqttSettings(host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="must be"):
        asyncio.run(replay(tmp_path / "none.jsonl", mqtt, speed=speed, window=window))


def test_replay_bench_reports_its_figures(tmp_path: Path) -> None:
    """The replay benchmark runs on a tiny capture and returns every documented figure."""
    parser = argparse.ArgumentParser()
    replay_bench.configure(parser)
    args = parser.parse_args(
        ["--devices", "2", "--hours", "0.05", "--baseline-messages", "50",
         "--timeout-s", "120", "--workdir", str(tmp_path)]
    )  # fmt: skip
    figures = replay_bench.run(args)
    documented = {
        "messages", "samples", "sent", "arrived", "seconds", "messages_per_s", "samples_per_s",
        "publish_seconds", "baseline_messages", "baseline_seconds", "baseline_messages_per_s",
        "speedup_vs_baseline", "capture_bytes", "prepare_s", "devices", "hours",
    }  # fmt: skip
    assert set(figures) == documented
    assert figures["arrived"] == figures["sent"] == figures["messages"]
    assert figures["samples"] == 2 * 180 * 100
    assert figures["baseline_messages"] == 50


def test_record_without_a_broker_raises_capture_error(tmp_path: Path) -> None:
    """Recording from a port where no broker listens raises CaptureError, not a library error."""
    mqtt = MqttSettings(host="127.0.0.1", port=free_port())
    with pytest.raises(CaptureError, match="recording from"):
        asyncio.run(record(mqtt, tmp_path / "none.jsonl", duration_s=5.0, client_id="rec-none"))


def test_replay_without_a_broker_raises_capture_error(tmp_path: Path) -> None:
    """Replaying to a port where no broker listens raises CaptureError, not a library error."""
    path = tmp_path / "one.jsonl"
    with CaptureWriter(path) as writer:
        writer.write("t", b"{}", t_ns=1)
    mqtt = MqttSettings(host="127.0.0.1", port=free_port())
    with pytest.raises(CaptureError, match="cannot reach"):
        asyncio.run(replay(path, mqtt, speed=None))
