"""The estimator's checkpoint file (ingest/checkpoint.py) and the rule for messages delivered
again after a restart (ingest/catchup.py `unfed_part`, `event_unfed`)."""

import asyncio
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from apps.analyze import record_json
from apps.services import Mosquitto
from devices.contract import DistractionStep, Frame
from dsp.estimator import EstimatorConfig, FleetEstimator
from ingest.catchup import event_unfed, feed_frame, unfed_part
from ingest.checkpoint import (
    CHECKPOINT_FILE,
    Checkpointer,
    Position,
    read_checkpoint,
    take_checkpoint,
    write_checkpoint,
)
from osteotel.mqtt import PahoSource
from osteotel.settings import MqttSettings

START_NS = 1_700_000_000_000_000_000
SECOND_NS = 1_000_000_000
DEVICE = "DX-0001"
CONFIG = EstimatorConfig()


def _frames(count: int) -> list[Frame]:
    """One-second frames of 100 samples at 100 Hz: a force relaxing after a step at 0.5 s."""
    rng = np.random.default_rng(5)
    frames = []
    for k in range(count):
        t_s = k + np.arange(100) / 100.0
        force_n = 100.0 + 40.0 * np.exp(-t_s / 8.0) * (t_s > 0.5) + rng.standard_normal(100)
        disp_mm = np.where(t_s > 0.5, 5.25, 5.0)
        frames.append(Frame(DEVICE, k, START_NS + k * SECOND_NS, 100.0, force_n, disp_mm))
    return frames


def _step() -> DistractionStep:
    return DistractionStep(device=DEVICE, t_ns=START_NS + SECOND_NS // 2, delta_mm=0.25,
                           source="motor")  # fmt: skip


def _fed_fleet(frames: list[Frame]) -> tuple[FleetEstimator, Position]:
    fleet = FleetEstimator(CONFIG)
    step = _step()
    fleet.step(DEVICE, step.t_ns, step.delta_mm)
    for frame in frames:
        feed_frame(fleet, frame)
    return fleet, Position(frames[-1].t_last_ns, step.t_ns)


def test_a_checkpoint_comes_back_with_its_positions_and_stays(tmp_path: Path) -> None:
    """A written checkpoint restores the same open step window and positions, and the file
    is still there afterwards (a second crash starts from it again)."""
    fleet, position = _fed_fleet(_frames(20))
    checkpoint = take_checkpoint(fleet, {DEVICE: position}, handled=21)
    for frame in _frames(25)[20:]:
        feed_frame(fleet, frame)  # after the copy: not in the checkpoint
    assert write_checkpoint(checkpoint, tmp_path / "state", CONFIG)
    for _ in range(2):
        restored = read_checkpoint(tmp_path / "state", CONFIG)
        assert restored is not None
        again, positions = restored
        assert positions == {DEVICE: position}
        assert again.devices == [DEVICE]
        expected, _ = _fed_fleet(_frames(20))
        assert [record_json(r) for r in again.flush()] == [record_json(r) for r in expected.flush()]
    assert (tmp_path / "state" / CHECKPOINT_FILE).exists()


def test_a_checkpoint_of_other_settings_is_set_aside(tmp_path: Path) -> None:
    """A checkpoint made with other estimator settings is refused and kept as `.refused`."""
    fleet, position = _fed_fleet(_frames(3))
    assert write_checkpoint(take_checkpoint(fleet, {DEVICE: position}, 4), tmp_path, CONFIG)
    other = EstimatorConfig(quality_every_s=CONFIG.quality_every_s + 1.0)
    assert read_checkpoint(tmp_path, other) is None
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    assert (tmp_path / f"{CHECKPOINT_FILE}.refused").exists()


def test_an_unreadable_checkpoint_is_set_aside(tmp_path: Path) -> None:
    """A damaged file is refused, kept as `.refused` for inspection, and nothing comes back."""
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 not a numpy archive")
    assert read_checkpoint(tmp_path, CONFIG) is None
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    assert (tmp_path / f"{CHECKPOINT_FILE}.refused").exists()


def test_the_snapshot_of_earlier_builds_is_named_and_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An `estimator.npz` without a checkpoint gives no fleet (it has no positions), is
    logged as obsolete, and stays where it is."""
    (tmp_path / "estimator.npz").write_bytes(b"an earlier build's snapshot")
    with caplog.at_level(logging.WARNING, logger="osteotel.ingest.checkpoint"):
        assert read_checkpoint(tmp_path, CONFIG) is None
    assert [r.getMessage().split()[0] for r in caplog.records] == ["estimator_state_obsolete"]
    assert (tmp_path / "estimator.npz").exists()


def test_a_failed_write_is_reported_not_raised(tmp_path: Path) -> None:
    """Writing where no directory can be made returns False instead of failing ingest."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    fleet, position = _fed_fleet(_frames(2))
    checkpoint = take_checkpoint(fleet, {DEVICE: position}, 3)
    assert write_checkpoint(checkpoint, blocker / "state", CONFIG) is False


def _records(fleet: FleetEstimator, frames: list[Frame | None]) -> list[str]:
    records = []
    for frame in frames:
        if frame is not None:
            records += feed_frame(fleet, frame)
    return [record_json(r) for r in records + fleet.flush()]


def test_frames_delivered_again_are_not_fed_twice(tmp_path: Path) -> None:
    """Checkpointed after frame 11 and sent frames 9..29 again, the restored estimator skips
    9..11 and makes the same records as one that read every frame once."""
    frames = _frames(30)
    fleet, position = _fed_fleet(frames)
    once = _records(fleet, [])
    assert [json.loads(record)["kind"] for record in once] == ["step", "daily"]
    fleet, position = _fed_fleet(frames[:12])
    assert write_checkpoint(take_checkpoint(fleet, {DEVICE: position}, 12), tmp_path, CONFIG)
    restored = read_checkpoint(tmp_path, CONFIG)
    assert restored is not None
    again, positions = restored
    unfed = [unfed_part(frame, positions[DEVICE]) for frame in frames[9:]]
    assert unfed[:3] == [None, None, None]
    assert unfed[3:] == frames[12:]
    assert _records(again, unfed) == once


def test_a_frame_across_the_position_is_fed_from_there_on() -> None:
    """A redelivered frame that straddles the position gives only its later samples, with
    their own times, and the estimates equal those of reading each sample once."""
    frames = _frames(30)
    whole = _records(_fed_fleet(frames)[0], [])
    fleet, position = _fed_fleet(frames[:11])
    head = Frame(DEVICE, 11, frames[11].t0_ns, 100.0, frames[11].force_n[:41],
                 frames[11].disp_mm[:41])  # fmt: skip
    feed_frame(fleet, head)
    position.sample_ns = head.t_last_ns
    tail = unfed_part(frames[11], position)
    assert tail is not None
    assert tail.n == 59
    assert tail.t0_ns == int(frames[11].timestamps_ns()[41])
    assert np.array_equal(tail.timestamps_ns(), frames[11].timestamps_ns()[41:])
    assert _records(fleet, [tail, *frames[12:]]) == whole


def test_an_event_at_or_before_the_position_is_not_fed_again() -> None:
    """The event rule: fed only when later than the device's last event read."""
    step = _step()
    assert not event_unfed(step, Position(-1, step.t_ns))
    assert event_unfed(step, Position(-1, step.t_ns - 1))
    assert event_unfed(step, None)


def test_catch_up_republishes_only_what_the_alert_service_still_recognises() -> None:
    """A record made again is published again only while the alert service keeps the key of the
    estimate it already applied: older history would reach its rules as new input."""
    from alerts.store import APPLIED_KEEP_S  # noqa: PLC0415
    from ingest.service import REPUBLISH_DAYS  # noqa: PLC0415

    assert REPUBLISH_DAYS * 86_400.0 <= APPLIED_KEEP_S


@pytest.mark.parametrize("acknowledged", [True, False], ids=["acknowledged", "not_acknowledged"])
def test_a_checkpoint_waits_for_the_broker_to_have_the_estimates_before_it(
    tmp_path: Path, acknowledged: bool
) -> None:
    """A due checkpoint is written once what it reflects is committed and the broker has
    acknowledged the estimates published before it; without that acknowledgement it is not
    written (a crash after the write would lose those estimates to the alert service)."""
    fleet = FleetEstimator()
    checkpointer = Checkpointer(directory=tmp_path, config=CONFIG, interval_s=0.0, batches=1)

    async def published() -> bool:
        return acknowledged

    async def commit() -> None:
        checkpointer.handled(fleet, {}, 1)
        checkpointer.committed(1, published)
        await checkpointer.written()

    asyncio.run(commit())
    assert (tmp_path / CHECKPOINT_FILE).exists() is acknowledged


def test_published_messages_are_confirmed_only_by_the_broker(tmp_path: Path) -> None:
    """`PahoSource.confirmed` holds once the broker has acknowledged every message published,
    and not while the broker is away (the messages wait in paho's queue)."""

    async def scenario(broker: Mosquitto) -> tuple[bool, bool]:
        settings = MqttSettings(host=broker.host, port=broker.port, client_id="confirm-test")
        async with PahoSource(settings=settings, subscriptions=["osteotel/v1/settle-none"]) as src:
            await src.wait_connected(timeout_s=30)
            for number in range(50):
                src.publish("osteotel/v1/derived/DX-0001/estimates", b"%d" % number)
            up = await src.confirmed(timeout_s=10.0)
            broker.stop()
            src.publish("osteotel/v1/derived/DX-0001/estimates", b"while away")
            away = await src.confirmed(timeout_s=0.5)
            return up, away

    with Mosquitto(tmp_path / "broker") as broker:
        assert asyncio.run(scenario(broker)) == (True, False)


def test_a_stream_gone_quiet_is_checkpointed(tmp_path: Path) -> None:
    """Messages handled while the last checkpoint was being written, and then nothing more:
    the quiet timer's call writes a checkpoint of them (before, the one on disk stayed
    behind until the next message came)."""
    checkpointer = Checkpointer(directory=tmp_path, config=CONFIG, interval_s=0.0, batches=1)
    earlier, earlier_position = _fed_fleet(_frames(20))
    fleet, position = _fed_fleet(_frames(25))

    async def published() -> bool:
        return True

    async def scenario() -> None:
        checkpointer.handled(earlier, {DEVICE: earlier_position}, 20)
        checkpointer.committed(20, published)  # its write runs ...
        checkpointer.handled(fleet, {DEVICE: position}, 25)  # ... so this one is not taken
        checkpointer.committed(25, published)
        await checkpointer.written()
        checkpointer.quiet(fleet, {DEVICE: position}, 25, published)
        await checkpointer.written()

    asyncio.run(scenario())
    restored = read_checkpoint(tmp_path, CONFIG)
    assert restored is not None
    again, positions = restored
    assert positions == {DEVICE: position}
    expected, _ = _fed_fleet(_frames(25))
    assert [record_json(r) for r in again.flush()] == [record_json(r) for r in expected.flush()]
