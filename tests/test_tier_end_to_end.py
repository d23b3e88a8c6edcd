"""The storage tier end to end: a device's stream with a distraction step in the middle goes
through a real Mosquitto into `osteotel ingest` and a real InfluxDB 1.6, with
`raw_tier = "windows"` and with `"full"`; the step arrives after the frames of its first seconds."""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from harness import (
    IngestProcess,
    ingest_env,
    ingest_metric,
    publish_all,
    query,
    running_ingest,
    wait_for,
)

from apps.services import InfluxDB, Mosquitto
from devices.codec import encode_event, encode_frame_json
from devices.contract import DistractionStep, Frame, events_topic, telemetry_topic

HUB, DEVICE = "HUB-A", "DX-0001"  # identity calibration in the example registry
S_NS = 1_000_000_000
RATE_HZ, FRAME_SAMPLES = 10.0, 20  # 2 s frames: each spans three UTC seconds
BEFORE_S, AFTER_S = 30, 600
# The step comes after the frames of its first 10 s were received.
STEP_LATE_S = 10


def _stream(step_ns: int) -> tuple[list[Frame], int]:
    """2 s frames from 100 s before the step to 720 s after it, 0.3 s off whole seconds (so
    consecutive frames share a second); and how many go out before the step event."""
    rng = np.random.default_rng(15)
    frames = []
    for seq, t0_ns in enumerate(range(step_ns - 100 * S_NS, step_ns + 720 * S_NS, 2 * S_NS)):
        force_n = np.round(rng.normal(50.0, 200.0, FRAME_SAMPLES), 3)  # both signs
        disp_mm = np.round(30.0 + seq * 0.001 + rng.uniform(0, 0.01, FRAME_SAMPLES), 5)
        frames.append(Frame(DEVICE, seq, t0_ns, RATE_HZ, force_n, disp_mm))
    before = sum(frame.t0_ns < step_ns + STEP_LATE_S * S_NS for frame in frames)
    return frames, before


def _in_window(frame: Frame, step_ns: int) -> bool:
    times = frame.timestamps_ns()
    start, end = step_ns - BEFORE_S * S_NS, step_ns + AFTER_S * S_NS
    return bool(((times >= start) & (times <= end)).any())


def _points(frame: Frame) -> list[tuple[int, float, float, float, float, float, float, int]]:
    """The frame's raw_1s points, sample by sample: (time, force mean/min/max, disp ..., n)."""
    seconds: dict[int, list[int]] = {}
    times = frame.timestamps_ns().tolist()
    for i, t_ns in enumerate(times):
        seconds.setdefault((t_ns - frame.t0_ns) // S_NS, []).append(i)
    rows = []
    for indices in seconds.values():
        force = [float(frame.force_n[i]) for i in indices]
        disp = [float(frame.disp_mm[i]) for i in indices]
        rows.append(
            (
                times[indices[0]],
                math.fsum(force) / len(force), min(force), max(force),
                math.fsum(disp) / len(disp), min(disp), max(disp),
                len(indices),
            )
        )  # fmt: skip
    return rows


@dataclass(frozen=True)
class Setup:
    """The servers, this test's names, and the stream it publishes."""

    mosquitto: Mosquitto
    influxdb: InfluxDB
    database: str
    unique_id: str
    workdir: Path
    frames: list[Frame]
    before: int  # frames published before the step event
    step: DistractionStep


@pytest.fixture
def setup(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> Setup:
    """The shared servers and a stream with a step two hours ago."""
    step_ns = (time.time_ns() - 2 * 3_600 * S_NS) // S_NS * S_NS
    step = DistractionStep(device=DEVICE, t_ns=step_ns, delta_mm=0.25, source="motor")
    frames, before = _stream(step_ns)
    return Setup(mosquitto, influxdb, influx_db_name, unique_id, tmp_path, frames, before, step)


def _publish(setup: Setup, client_id: str) -> None:
    messages = [(telemetry_topic(HUB, DEVICE), encode_frame_json(f)) for f in setup.frames]
    messages.insert(setup.before, (events_topic(HUB, DEVICE), encode_event(setup.step)))
    publish_all(setup.mosquitto, client_id, messages)


def _count(setup: Setup, influxql: str) -> int:
    rows = query(setup.influxdb, setup.database, influxql)
    return int(rows[0][1]) if rows else 0  # type: ignore[call-overload]


def _status(setup: Setup) -> tuple[object, ...] | None:
    """The latest `ingest_status` raw_points, raw_1s_points and raw_1s_samples; None before one."""
    rows = query(
        setup.influxdb,
        setup.database,
        "SELECT last(raw_points), last(raw_1s_points), last(raw_1s_samples) FROM ingest_status",
    )
    return tuple(rows[0][1:]) if rows else None


def _run(setup: Setup, running: IngestProcess, raw_expected: int, client_id: str) -> None:
    """Publish the stream and wait until this process has made all of it durable."""
    _publish(setup, client_id)
    samples = sum(frame.n for frame in setup.frames)
    raw_metric = 'osteotel_ingest_points_written_total{measurement="raw"}'
    wait_for(
        lambda: (
            ingest_metric(running, "osteotel_ingest_samples_stored_total") == samples
            and ingest_metric(running, raw_metric) == raw_expected
        ),
        "every frame and the step's held frames to be durable",
        running,
    )


@pytest.mark.parametrize("tier", ["windows", "full"])
def test_raw_keeps_full_rate_windows_and_raw_1s_the_rest(setup: Setup, tier: str) -> None:
    """windows: raw holds exactly the samples of frames in the step's window (its 30 s before
    included, though the step came later), raw_1s the others' per-second mean/min/max/n,
    frame every frame; a resend after a restart changes no count. full: raw holds everything."""
    frames, step_ns = setup.frames, setup.step.t_ns
    windowed = tier == "windows"
    full_rate = [frame for frame in frames if not windowed or _in_window(frame, step_ns)]
    # Summarised: whatever came before the step, and what after it lies outside its window.
    summarised = [
        frame
        for k, frame in enumerate(frames)
        if windowed and (k < setup.before or not _in_window(frame, step_ns))
    ]
    assert 0 < len(full_rate) < len(frames) - 50 or not windowed
    raw_expected = sum(frame.n for frame in full_rate)
    env = ingest_env(
        setup.mosquitto, setup.influxdb, setup.database, f"ingest-{setup.unique_id}",
        setup.workdir, raw_tier=tier, capture_dir=str(setup.workdir / "capture"),
        stats_interval_s="0.5",
    )  # fmt: skip
    with running_ingest(env, setup.workdir) as running:
        _run(setup, running, raw_expected, f"hub-{setup.unique_id}-1")
        points = sum(len(_points(frame)) for frame in summarised)
        assert (
            ingest_metric(running, 'osteotel_ingest_points_written_total{measurement="raw_1s"}')
            == points
        )
        assert ingest_metric(running, "osteotel_ingest_raw_1s_samples_total") == sum(
            frame.n for frame in summarised
        )
        # The same three in InfluxDB, for the boards.
        status = (raw_expected, points, sum(frame.n for frame in summarised))
        wait_for(
            lambda: _status(setup) == status,
            "ingest_status to count what was written where",
            running,
        )

    raw = query(setup.influxdb, setup.database, "SELECT force_n, disp_mm FROM raw")
    assert len(raw) == raw_expected
    np.testing.assert_array_equal(
        [row[1] for row in raw], np.concatenate([frame.force_n for frame in full_rate])
    )
    np.testing.assert_array_equal(
        [row[2] for row in raw], np.concatenate([frame.disp_mm for frame in full_rate])
    )
    assert _count(setup, "SELECT count(seq) FROM frame") == len(frames)
    stored = query(
        setup.influxdb,
        setup.database,
        "SELECT force_n_mean, force_n_min, force_n_max, disp_mm_mean, disp_mm_min, disp_mm_max, n "
        "FROM raw_1s",
    )
    expected = sorted(point for frame in summarised for point in _points(frame))
    assert len(stored) == len(expected)
    if expected:
        got = np.array([row[1:] for row in stored], dtype=np.float64)
        want = np.array([point[1:] for point in expected], dtype=np.float64)
        np.testing.assert_array_equal(got[:, [1, 2, 4, 5, 6]], want[:, [1, 2, 4, 5, 6]])
        np.testing.assert_allclose(got[:, [0, 3]], want[:, [0, 3]], rtol=1e-13)
        assert _count(setup, "SELECT sum(n) FROM raw_1s") == sum(frame.n for frame in summarised)

    # The same stream again into a new process (as after a restart): the same points.
    with running_ingest(env, setup.workdir) as running:
        _run(setup, running, raw_expected, f"hub-{setup.unique_id}-2")
    assert _count(setup, "SELECT count(force_n) FROM raw") == raw_expected
    assert _count(setup, "SELECT count(n) FROM raw_1s") == len(expected)
    assert _count(setup, "SELECT count(seq) FROM frame") == len(frames)
