"""The capture files ingest writes (ingest/capture.py): the lines docs/capture.md specifies,
one file per hub and UTC day, a torn tail cut; end to end, exactly the accepted messages in
the order received, and a replay of them stores every sample again."""

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from harness import ingest_env, ingest_metric, publish_all, query, running_ingest, wait_for

from apps.services import InfluxDB, Mosquitto
from devices.codec import encode_event, encode_frame_binary, encode_frame_json, encode_status
from devices.contract import (
    Battery,
    DistractionStep,
    Frame,
    HubStatus,
    events_topic,
    status_topic,
    telemetry_topic,
)
from devices.emulator.capture import capture_line, read_capture, replay
from ingest.accounting import Accounting
from ingest.capture import Captures, capture_path
from ingest.work import Work
from osteotel.mqtt import Received
from osteotel.settings import MqttSettings

S_NS = 1_000_000_000
DAY_NS = 86_400 * S_NS
T_NS = 1_780_000_000 * S_NS  # 2026-05-28 20:26:40 UTC


def _frame(device: str, seq: int, t0_ns: int) -> Frame:
    rng = np.random.default_rng(seq)
    return Frame(
        device, seq, t0_ns, 100.0, np.round(rng.normal(80.0, 30.0, 100), 2),
        np.round(20.0 + rng.uniform(0.0, 0.01, 100), 4),
    )  # fmt: skip


def _work(
    topic: str, payload: bytes, received_ns: int, capture: tuple[str, bool | None] | None
) -> Work:
    return Work(Received(topic, payload, 1, 1, received_ns), [], 1, capture=capture)


def _reference(works: list[Work]) -> bytes:
    """What docs/capture.md's writer gives for the captured works, each payload looked at."""
    return b"".join(
        capture_line(w.message.topic, w.message.payload, w.message.received_ns, 1,
                     w.message.topic.endswith("/status"))
        for w in works
        if w.capture is not None
    )  # fmt: skip


def test_lines_are_the_formats_own_and_only_captured_works_are_written(tmp_path: Path) -> None:
    """An accepted JSON frame (known strict: not parsed again), one whose JSON holds a line
    break (base64), a binary frame, an event and a retained hub status give the bytes the
    format's reference writer gives; a work not to capture (a rejection) writes nothing."""
    json_frame = encode_frame_json(_frame("DX-0001", 0, T_NS))
    broken = json_frame.replace(b'"seq":', b'"seq":\n', 1)
    step = encode_event(DistractionStep(device="DX-0001", t_ns=T_NS, delta_mm=0.25, source="motor"))
    works = [
        _work(telemetry_topic("HUB-A", "DX-0001"), json_frame, T_NS, ("HUB-A", True)),
        _work(telemetry_topic("HUB-A", "DX-0001"), broken, T_NS + 1, ("HUB-A", True)),
        _work(events_topic("HUB-A", "DX-0001"), step, T_NS + 2, ("HUB-A", None)),
        _work(telemetry_topic("HUB-A", "DX-0001"), b'{"v":1,"bad":NaN}', T_NS + 3, None),
        _work(status_topic("HUB-A"),
              encode_status(HubStatus(hub="HUB-A", online=True, t_ns=T_NS)), T_NS + 4,
              ("HUB-A", None)),
    ]  # fmt: skip
    binary = [
        _work(telemetry_topic("HUB-B", "DX-0003"),
              encode_frame_binary(_frame("DX-0003", 1, T_NS)), T_NS + 5, ("HUB-B", False)),
    ]  # fmt: skip
    accounting = Accounting()
    captures = Captures(tmp_path, accounting=accounting)
    try:
        captures.append(works + binary)
    finally:
        captures.close()
    hub_a = capture_path(tmp_path, "HUB-A", T_NS)
    assert hub_a == tmp_path / "HUB-A" / "2026-05-28.jsonl"
    assert hub_a.read_bytes() == _reference(works)
    assert capture_path(tmp_path, "HUB-B", T_NS).read_bytes() == _reference(binary)
    assert b'"payload_b64"' in hub_a.read_bytes().splitlines()[1]  # the line break's frame
    assert [m.payload for m in read_capture(hub_a)] == [
        w.message.payload for w in works if w.capture is not None
    ]
    assert accounting.capture_messages == 5
    assert accounting.capture_bytes == len(_reference(works)) + len(_reference(binary))


def test_a_new_utc_day_starts_a_new_file(tmp_path: Path) -> None:
    """Messages received either side of midnight UTC go to their own day's file, in order."""
    midnight_ns = (T_NS // DAY_NS + 1) * DAY_NS
    topic = events_topic("HUB-A", "DX-0001")
    works = [
        _work(topic, encode_event(Battery(device="DX-0001", t_ns=t_ns, pct=80.0)), t_ns,
              ("HUB-A", None))
        for t_ns in (midnight_ns - 1, midnight_ns, midnight_ns + S_NS)
    ]  # fmt: skip
    captures = Captures(tmp_path, accounting=Accounting())
    try:
        captures.append(works[:1])
        captures.append(works[1:])
        captures.append(works)  # one batch across midnight: both files again
    finally:
        captures.close()
    works += works
    assert sorted(p.name for p in (tmp_path / "HUB-A").iterdir()) == [
        "2026-05-28.jsonl", "2026-05-29.jsonl",
    ]  # fmt: skip
    before = [w for w in works if w.message.received_ns < midnight_ns]
    after = [w for w in works if w.message.received_ns >= midnight_ns]
    assert capture_path(tmp_path, "HUB-A", midnight_ns - 1).read_bytes() == _reference(before)
    assert capture_path(tmp_path, "HUB-A", midnight_ns).read_bytes() == _reference(after)


@pytest.mark.parametrize("torn", [b"", b'{"topic":"osteotel/v1/HUB-A/DX-0001/ev', b"{"])
def test_a_torn_last_line_is_cut_before_appending(tmp_path: Path, torn: bytes) -> None:
    """A write a crash cut short leaves a line without its end: it is cut off when the file is
    next opened (its messages were never acknowledged), and the file stays readable."""
    topic = events_topic("HUB-A", "DX-0001")
    first, second = (
        _work(topic, encode_event(Battery(device="DX-0001", t_ns=T_NS + k, pct=50.0)),
              T_NS + k, ("HUB-A", None))
        for k in range(2)
    )  # fmt: skip
    path = capture_path(tmp_path, "HUB-A", T_NS)
    path.parent.mkdir(parents=True)
    path.write_bytes(_reference([first]) + torn)
    captures = Captures(tmp_path, accounting=Accounting())
    try:
        captures.append([second])
    finally:
        captures.close()
    assert path.read_bytes() == _reference([first, second])
    assert len(list(read_capture(path))) == 2


def test_ingest_captures_exactly_what_it_accepts_and_a_replay_stores_it_again(
    influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> None:
    """Through a real Mosquitto into ingest with the tier and a real InfluxDB: each hub's
    capture holds exactly its accepted messages (JSON and binary frames, a step, a hub status),
    once each and in the order published, and neither the rejected frame nor the duplicate;
    replayed into a fresh ingest and database, every accepted sample is stored in `raw`."""
    now_ns = time.time_ns() - 3_600 * S_NS
    frames_a = [_frame("DX-0001", seq, now_ns + seq * S_NS) for seq in range(30)]
    frames_b = [_frame("DX-0003", seq, now_ns + seq * S_NS) for seq in range(20)]
    step = DistractionStep(device="DX-0001", t_ns=now_ns + 10 * S_NS, delta_mm=0.25, source="motor")
    bad = encode_frame_json(_frame("DX-0001", 99, now_ns)).replace(
        b'"force_n":[', b'"force_n":[NaN,', 1
    )
    status = encode_status(HubStatus(hub="HUB-B", online=True, t_ns=now_ns))
    accepted_a = [(telemetry_topic("HUB-A", "DX-0001"), encode_frame_json(f)) for f in frames_a]
    accepted_a.insert(11, (events_topic("HUB-A", "DX-0001"), encode_event(step)))
    accepted_b = [(status_topic("HUB-B"), status)]
    accepted_b += [(telemetry_topic("HUB-B", "DX-0003"), encode_frame_binary(f)) for f in frames_b]
    published = [*accepted_a[:5], (telemetry_topic("HUB-A", "DX-0001"), bad), *accepted_a[5:]]
    published.insert(8, accepted_a[3])  # a duplicate of an accepted frame
    capture_dir = tmp_path / "capture"
    samples = 100 * (len(frames_a) + len(frames_b))
    # A broker of its own: the shared one holds other tests' retained hub statuses, which a
    # new subscription receives (and ingest would rightly capture).
    with Mosquitto(tmp_path / "broker") as mosquitto:
        env = ingest_env(
            mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path,
            raw_tier="windows", capture_dir=str(capture_dir),
        )  # fmt: skip
        with running_ingest(env, tmp_path) as running:
            publish_all(mosquitto, f"hub-a-{unique_id}", published)
            publish_all(mosquitto, f"hub-b-{unique_id}", accepted_b)
            wait_for(
                lambda: (
                    ingest_metric(running, "osteotel_ingest_samples_stored_total") == samples
                    and ingest_metric(running, "osteotel_ingest_capture_messages_total")
                    == len(accepted_a) + len(accepted_b)
                ),
                "every accepted message stored and captured",
                running,
            )
    files = sorted(capture_dir.rglob("*.jsonl"))
    by_hub = {hub: [f for f in files if f.parent.name == hub] for hub in ("HUB-A", "HUB-B")}
    captured = {
        hub: [(m.topic, m.payload) for f in paths for m in read_capture(f)]
        for hub, paths in by_hub.items()
    }
    assert captured == {"HUB-A": accepted_a, "HUB-B": accepted_b}
    status_line = next(m for f in by_hub["HUB-B"] for m in read_capture(f))
    assert status_line.retain is True
    assert status_line.qos == 1

    # Replayed into a broker of its own: the capture's hub status is retained there.
    replayed_db = f"{influx_db_name}_replay"
    (tmp_path / "replay").mkdir()
    with Mosquitto(tmp_path / "replay" / "broker") as broker:
        env = ingest_env(
            broker, influxdb, replayed_db, f"ingest-replay-{unique_id}", tmp_path / "replay"
        )
        with running_ingest(env, tmp_path / "replay") as running:
            for path in files:
                settings = MqttSettings(host=broker.host, port=broker.port)
                asyncio.run(replay(path, settings, speed=None, client_id=f"replay-{unique_id}"))
            wait_for(
                lambda: ingest_metric(running, "osteotel_ingest_samples_stored_total") == samples,
                "every replayed sample stored",
                running,
            )
    rows = query(influxdb, replayed_db, "SELECT count(force_n) FROM raw")
    assert rows[0][1] == samples
