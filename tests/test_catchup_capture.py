"""Catch-up under the storage tier reads a device's frames and events from ingest's capture
files (ingest/replaycapture.py, ingest/catchup.py): in receipt order across days and a `.gz`
day, decoded (JSON and binary) and calibrated as live ingest does, from the position on (a
frame across it cut, a line held twice fed once), with `rebuilt`, `truncated`, `caught_up` and
`capture_missing` as the files say."""

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from harness import EXAMPLE_REGISTRY

from devices.codec import (
    decode_event,
    decode_frame,
    encode_event,
    encode_frame_binary,
    encode_frame_json,
    encode_status,
)
from devices.contract import (
    DistractionStep,
    Event,
    Frame,
    HubStatus,
    events_topic,
    status_topic,
    telemetry_topic,
)
from devices.emulator.capture import CapturedMessage, CaptureWriter
from devices.registry import Calibration, Registry
from dsp.estimator import EstimateRecord, FleetEstimator
from ingest.calibration import calibrate
from ingest.catchup import CatchUp, CatchUpProgress, Outcome, feed_frame
from ingest.checkpoint import Position
from ingest.estimates import estimate_line, feed_event, register_device
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore

S_NS = 1_000_000_000
MIDNIGHT_NS = 1_793_491_200 * S_NS  # 2026-11-01 00:00 UTC
DAY0, DAY1, DAY2 = "2026-10-30", "2026-10-31", "2026-11-01"
HUB = "HUB-A"
# DX-0001 as the example registry has it, with a sensor mounted the other way round and an
# offset displacement sensor: a frame fed uncalibrated would give other records.
DEVICE = (
    Registry.load(EXAMPLE_REGISTRY)
    .devices["DX-0001"]
    .model_copy(
        update={
            "calibration": Calibration(
                id="CAL-TEST", force_gain=-2.0, force_offset_n=5.0, disp_gain=1.0,
                disp_offset_mm=3.0,
            )
        }
    )
)  # fmt: skip
OTHER = "DX-0002"  # same hub: its lines are passed over
STEP_NS = MIDNIGHT_NS + 30 * S_NS
FRAMES = 960  # 1 s frames from 4 min before midnight to 12 min after: the step record closes


def _frames(device: str) -> list[Frame]:
    """1 s frames of 100 samples at 100 Hz from 23:56 UTC, raw (the calibration inverts the
    sign): a force relaxing after the step at 00:00:30 and the step in the displacement."""
    rng = np.random.default_rng(15)
    frames = []
    for seq in range(FRAMES):
        t0_ns = MIDNIGHT_NS - 240 * S_NS + seq * S_NS
        t_s = (t0_ns - STEP_NS) / S_NS + np.arange(100) / 100.0
        after = t_s >= 0
        force = 100.0 + 40.0 * np.exp(-np.where(after, t_s, 0.0) / 8.0) * after
        force_n = np.round(-(force + rng.normal(0.0, 1.0, 100)), 2)
        disp_mm = np.round(np.where(after, 5.25, 5.0) + rng.uniform(0, 0.001, 100), 4)
        frames.append(Frame(device, seq, t0_ns, 100.0, force_n, disp_mm))
    return frames


def _step() -> DistractionStep:
    return DistractionStep(device=DEVICE.id, t_ns=STEP_NS, delta_mm=0.25, source="motor")


def _messages() -> list[CapturedMessage]:
    """What ingest received, in order: the device's frames (JSON before midnight, binary
    after), its step when it happened, the other device's frames and a hub status among them;
    each frame received 50 ms after its last sample."""
    encode = {True: encode_frame_json, False: encode_frame_binary}
    messages = [
        CapturedMessage(
            status_topic(HUB),
            encode_status(HubStatus(hub=HUB, online=True, t_ns=MIDNIGHT_NS - 300 * S_NS)),
            MIDNIGHT_NS - 300 * S_NS, 1, True,
        )
    ]  # fmt: skip
    for mine, other in zip(_frames(DEVICE.id), _frames(OTHER), strict=True):
        received_ns = mine.t_last_ns + 50_000_000
        if mine.t0_ns <= STEP_NS < mine.t0_ns + S_NS:
            step = encode_event(_step())
            messages.append(CapturedMessage(events_topic(HUB, DEVICE.id), step, STEP_NS + 1))
        json_day = received_ns < MIDNIGHT_NS
        for frame in (mine, other):
            topic = telemetry_topic(HUB, frame.device)
            messages.append(CapturedMessage(topic, encode[json_day](frame), received_ns))
    messages.sort(key=lambda message: message.t_ns)  # the step between its frames
    return messages


def _write(hub_dir: Path, messages: list[CapturedMessage], *, gz_from: str = DAY2) -> None:
    """The files ingest writes: one per UTC day of receipt; days from `gz_from` compressed."""
    by_day: dict[str, list[CapturedMessage]] = {}
    for message in messages:
        day = datetime.fromtimestamp(message.t_ns // S_NS, tz=UTC).strftime("%Y-%m-%d")
        by_day.setdefault(day, []).append(message)
    hub_dir.mkdir(parents=True, exist_ok=True)
    for day, lines in by_day.items():
        suffix = ".jsonl.gz" if day >= gz_from else ".jsonl"
        with CaptureWriter(hub_dir / f"{day}{suffix}") as writer:
            writer.write_many(lines)


def _decoded(messages: list[CapturedMessage]) -> list[Frame | Event]:
    """The device's messages as live ingest feeds them: decoded, frames calibrated."""
    items: list[Frame | Event] = []
    for message in messages:
        if message.topic == telemetry_topic(HUB, DEVICE.id):
            frame, _ = decode_frame(message.payload, topic_device=DEVICE.id)
            items.append(calibrate(frame, DEVICE.calibration))
        elif message.topic == events_topic(HUB, DEVICE.id):
            items.append(decode_event(message.payload, topic_device=DEVICE.id))
    return items


def _fleet() -> FleetEstimator:
    fleet = FleetEstimator()
    register_device(fleet, DEVICE)
    return fleet


def _feed(fleet: FleetEstimator, items: list[Frame | Event]) -> list[EstimateRecord]:
    records: list[EstimateRecord] = []
    for item in items:
        records += feed_frame(fleet, item) if isinstance(item, Frame) else feed_event(fleet, item)
    return records


def _lines(records: list[EstimateRecord]) -> list[bytes]:
    return [estimate_line(HUB, record) for record in records]


@dataclass
class Run:
    """What one catch-up emitted and counted."""

    records: list[EstimateRecord] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    progress: CatchUpProgress = field(default_factory=CatchUpProgress)


def _catch_up(
    capture_dir: Path,
    fleet: FleetEstimator,
    position: Position | None,
    *,
    rebuild_from_ns: int = MIDNIGHT_NS - 10 * 86_400 * S_NS,
) -> Run:
    run = Run()
    positions = {} if position is None else {DEVICE.id: position}

    async def emit(records: list[EstimateRecord], outcome: Outcome | None) -> None:
        run.records += records
        if outcome is not None:
            run.outcomes.append(outcome)

    catch_up = CatchUp(
        # Never asked: with capture files the store is not read.
        store=InfluxStore(InfluxSettings(url="http://127.0.0.1:9")),
        fleet=fleet,
        positions=positions,
        progress=run.progress,
        wait_s=0.0,
        capture_dir=capture_dir,
    )
    asyncio.run(catch_up.run([(DEVICE, position is None)], emit, rebuild_from_ns=rebuild_from_ns))
    return run


def _counts(items: list[Frame | Event], records: int) -> dict[str, int]:
    frames = [item for item in items if isinstance(item, Frame)]
    return {
        "frames": len(frames), "samples": sum(frame.n for frame in frames),
        "events": len(items) - len(frames), "records": records,
    }  # fmt: skip


def test_a_rebuild_reads_both_days_in_receipt_order_as_live_ingest_fed_them(
    tmp_path: Path,
) -> None:
    """Rebuilt from a plain JSON-frame day and a gzip binary-frame day, with another device's
    lines, a hub status and one frame line held twice: the records (step, daily, quality) are
    those of the device's messages fed once each, decoded and calibrated, in receipt order."""
    messages = _messages()
    mine = telemetry_topic(HUB, DEVICE.id)
    duplicated = next(i for i, m in enumerate(messages) if m.topic == mine and m.t_ns > STEP_NS)
    _write(tmp_path / HUB, [*messages[: duplicated + 1], *messages[duplicated:]])
    assert sorted(path.name for path in (tmp_path / HUB).iterdir()) == [
        f"{DAY1}.jsonl", f"{DAY2}.jsonl.gz",
    ]  # fmt: skip
    items = _decoded(messages)
    expected = _feed(_fleet(), items)
    assert {record.kind for record in expected} >= {"step", "daily"}

    run = _catch_up(tmp_path, _fleet(), None)

    assert _lines(run.records) == _lines(expected)
    [outcome] = run.outcomes
    assert (outcome.status, outcome.counts) == ("rebuilt", _counts(items, len(expected)))
    assert (run.progress.frames, run.progress.events) == (FRAMES, 1)
    assert (run.progress.frames_unreadable, run.progress.capture_lines_unreadable) == (0, 0)


def test_a_checkpointed_device_is_fed_from_its_position_on_a_frame_across_it_cut(
    tmp_path: Path,
) -> None:
    """Checkpointed 40 samples into a frame after midnight (and after the step): the day before
    the position's is read, the earlier one not (it holds an unreadable line that would be
    counted), the frame across the position is fed from its 41st sample and the rest whole;
    the records are those of a run fed the same split stream without a stop."""
    messages = _messages()
    _write(tmp_path / HUB, messages)
    (tmp_path / HUB / f"{DAY0}.jsonl").write_bytes(b"not a capture line\n")
    items = _decoded(messages)
    cut_at = next(
        i for i, item in enumerate(items)
        if isinstance(item, Frame) and item.t0_ns == MIDNIGHT_NS + 60 * S_NS
    )  # fmt: skip
    frame = items[cut_at]
    assert isinstance(frame, Frame)
    position = Position(int(frame.timestamps_ns()[40]), STEP_NS)
    head = Frame(frame.device, frame.seq, frame.t0_ns, 100.0, frame.force_n[:41],
                 frame.disp_mm[:41])  # fmt: skip
    tail = Frame(frame.device, frame.seq, int(frame.timestamps_ns()[41]), 100.0,
                 frame.force_n[41:], frame.disp_mm[41:])  # fmt: skip
    reference = _fleet()
    _feed(reference, [*items[:cut_at], head])
    restored = _fleet()
    _feed(restored, [*items[:cut_at], head])
    expected = _feed(reference, [tail, *items[cut_at + 1 :]])

    run = _catch_up(tmp_path, restored, position)

    assert _lines(run.records) == _lines(expected)
    [outcome] = run.outcomes
    unfed = [tail, *items[cut_at + 1 :]]
    assert (outcome.status, outcome.from_ns) == ("caught_up", frame.timestamps_ns()[40])
    last = [item for item in items if isinstance(item, Frame)][-1]
    assert position.sample_ns == last.t_last_ns
    assert outcome.counts == _counts(unfed, len(expected))
    assert outcome.counts["samples"] == (FRAMES - 301) * 100 + 59
    assert run.progress.capture_lines_unreadable == 0


@pytest.mark.parametrize(
    ("gap", "first_day"),
    [("files_start_later", DAY2), ("no_files", None)],
    ids=["files_start_later", "no_files"],
)
def test_captures_that_do_not_reach_back_to_the_position_say_so(
    tmp_path: Path, gap: str, first_day: str | None
) -> None:
    """Checkpointed on 2026-10-31 while the hub's files begin on 2026-11-01 (or there are none):
    `capture_missing`, and what the files hold after the position is fed all the same."""
    messages = _messages()
    later = [m for m in messages if m.t_ns >= MIDNIGHT_NS] if gap == "files_start_later" else []
    if later:
        _write(tmp_path / HUB, later)
    days = sorted(p.name[:10] for p in (tmp_path / HUB).iterdir()) if later else []
    assert days[:1] == ([first_day] if first_day else [])
    position = Position(MIDNIGHT_NS - 120 * S_NS, -1)
    items = [item for item in _decoded(later) if not isinstance(item, Frame) or
             item.t0_ns > position.sample_ns]  # fmt: skip
    fleet = _fleet()
    expected = _feed(_fleet(), items)

    run = _catch_up(tmp_path, fleet, position)

    [outcome] = run.outcomes
    assert (outcome.status, outcome.counts) == ("capture_missing", _counts(items, len(expected)))
    # From the frame of 23:59:59, received 40 ms after midnight, to the last one.
    assert outcome.counts["frames"] == (721 if later else 0)
    assert _lines(run.records) == _lines(expected)


@pytest.mark.parametrize(
    ("older", "bound_ns", "frames_fed"),
    [
        ("in_the_files_read", MIDNIGHT_NS + 600 * S_NS, 120),
        ("in_an_earlier_day", MIDNIGHT_NS + 3 * 86_400 * S_NS, 0),
    ],
    ids=["in_the_files_read", "in_an_earlier_day"],
)
def test_a_rebuild_with_captured_data_before_its_bound_is_truncated(
    tmp_path: Path, older: str, bound_ns: int, frames_fed: int
) -> None:
    """A rebuild bound inside the captured data, or days after its last file: `truncated`, and
    only samples after the bound are fed."""
    _write(tmp_path / HUB, _messages())
    items = [item for item in _decoded(_messages()) if isinstance(item, Frame)]

    run = _catch_up(tmp_path, _fleet(), None, rebuild_from_ns=bound_ns)

    [outcome] = run.outcomes
    assert (outcome.status, outcome.from_ns) == ("truncated", bound_ns)
    # The frame that starts at the bound is fed from its second sample.
    assert outcome.counts["frames"] == frames_fed
    assert outcome.counts["frames"] == sum(frame.t_last_ns > bound_ns for frame in items)
    assert outcome.counts["samples"] == sum(
        int((frame.timestamps_ns() > bound_ns).sum()) for frame in items
    )
    assert outcome.counts["samples"] == {"in_the_files_read": 11_999, "in_an_earlier_day": 0}[older]


def test_lines_that_do_not_decode_are_named_counted_and_not_fed(tmp_path: Path) -> None:
    """A frame with NaN, an event of an unknown type and a torn last line (a crash mid-write,
    not cut yet) are counted as unreadable; the frames around them are fed."""
    frames = _frames(DEVICE.id)[:3]
    topic = telemetry_topic(HUB, DEVICE.id)
    nan_frame = re.sub(rb'"force_n":\[[^,]+', b'"force_n":[NaN', encode_frame_json(frames[1]))
    (tmp_path / HUB).mkdir()
    with CaptureWriter(tmp_path / HUB / f"{DAY1}.jsonl") as writer:
        writer.write(topic, encode_frame_json(frames[0]), t_ns=MIDNIGHT_NS - 200 * S_NS)
        writer.write(topic, nan_frame, t_ns=MIDNIGHT_NS - 199 * S_NS)
        writer.write(events_topic(HUB, DEVICE.id), b'{"v":1,"type":"unknown"}',
                     t_ns=MIDNIGHT_NS - 199 * S_NS)  # fmt: skip
        writer.write(topic, encode_frame_json(frames[2]), t_ns=MIDNIGHT_NS - 198 * S_NS)
    with (tmp_path / HUB / f"{DAY1}.jsonl").open("ab") as torn:
        torn.write(b'{"topic":"' + topic.encode() + b'","t_ns":17')

    run = _catch_up(tmp_path, _fleet(), None)

    [outcome] = run.outcomes
    assert (outcome.status, outcome.counts["frames"], outcome.counts["events"]) == (
        "rebuilt", 2, 0,
    )  # fmt: skip
    progress = run.progress
    assert (progress.frames_unreadable, progress.events_unreadable) == (1, 1)
    assert progress.capture_lines_unreadable == 1
