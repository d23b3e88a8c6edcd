"""Catch-up from capture files end to end: a stream with a distraction step goes through a real
Mosquitto into `osteotel ingest` (`raw_tier = "windows"`, capture files written by ingest
itself) and a real InfluxDB 1.6; a start without the checkpoint (a rebuild) and a start from a
checkpoint taken inside the step's window each store the step record of the run that never
stopped, value for value."""

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    drop_database,
    estimate_rows,
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
from ingest.checkpoint import CHECKPOINT_FILE

HUB, DEVICE = "HUB-A", "DX-0001"
S_NS = 1_000_000_000
DAY_NS = 86_400 * S_NS
RATE_HZ = 10.0  # the slowest rate that resolves the fast relaxation (docs/domain.md)
BEFORE_S, AFTER_S = 60, 700  # of stream around the step: its record closes 600 s after it
STOP_AFTER_S = 200  # the first session stops inside the step's window
# The stream may start up to this far ahead of the clock (see _step_ns).
FUTURE_SKEW_S = 3_600


def _step_ns() -> int:
    """A step an hour ago, or a minute into today (UTC) if that is later: the whole stream is
    on the day of the files ingest writes now, so a checkpoint's position is on a day the
    files cover (capture_missing otherwise), whenever the test runs; `FUTURE_SKEW_S` lets
    ingest accept frames ahead of its clock just after midnight."""
    now_ns = time.time_ns()
    return max(now_ns - 3_600 * S_NS, now_ns // DAY_NS * DAY_NS + (60 + BEFORE_S) * S_NS)


def _messages(step_ns: int) -> tuple[list[tuple[str, bytes]], int]:
    """1 s frames of a force relaxing after the step, the step after its frame; and how many
    messages go out before the first session stops."""
    rng = np.random.default_rng(153)
    topic = telemetry_topic(HUB, DEVICE)
    step = DistractionStep(device=DEVICE, t_ns=step_ns, delta_mm=0.25, source="motor")
    messages: list[tuple[str, bytes]] = []
    first_session = 0
    for seq, t0_ns in enumerate(range(step_ns - BEFORE_S * S_NS, step_ns + AFTER_S * S_NS, S_NS)):
        t_s = (t0_ns - step_ns) / S_NS + np.arange(10) / RATE_HZ
        after = t_s >= 0
        force_n = 150.0 + 60.0 * np.exp(-np.where(after, t_s, 0.0) / 20.0) * after
        force_n = np.round(force_n + rng.normal(0.0, 0.5, 10), 3)
        disp_mm = np.round(np.where(after, 30.25, 30.0) + rng.uniform(0, 0.001, 10), 5)
        messages.append((topic, encode_frame_json(Frame(DEVICE, seq, t0_ns, RATE_HZ, force_n,
                                                        disp_mm))))  # fmt: skip
        if t0_ns <= step_ns < t0_ns + S_NS:
            messages.append((events_topic(HUB, DEVICE), encode_event(step)))
        if t0_ns < step_ns + STOP_AFTER_S * S_NS:
            first_session = len(messages)
    return messages, first_session


def _catchup_point(influxdb: InfluxDB, database: str) -> list[Any]:
    influxql = f'SELECT "status", "frames", "events" FROM "catchup" WHERE "device" = \'{DEVICE}\''
    rows = query(influxdb, database, influxql)
    return [row[1:] for row in rows]


def test_a_rebuild_and_a_catch_up_from_capture_files_store_the_uninterrupted_step_record(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str, tmp_path: Path
) -> None:
    """The step record of a run stopped only gracefully, once inside the step window, equals,
    field for field, the one a start without checkpoint rebuilds from the capture files alone
    (status `rebuilt`, every frame and the step fed) and the one a start from the checkpoint
    inside the window makes from the frames captured after it (status `caught_up`)."""
    messages, first_session = _messages(_step_ns())
    frames = len(messages) - 1
    capture_dir = tmp_path / "capture"
    live = tmp_path / "live"
    live.mkdir()

    def env(workdir: Path, database: str, name: str) -> dict[str, str]:
        return ingest_env(
            mosquitto, influxdb, database, f"{name}-{unique_id}", workdir, raw_tier="windows",
            capture_dir=str(capture_dir), future_skew_s=str(FUTURE_SKEW_S),
        )  # fmt: skip

    for session, part in enumerate((messages[:first_session], messages[first_session:])):
        with running_ingest(env(live, influx_db_name, "live"), live) as running:
            publish_all(mosquitto, f"hub-{unique_id}", part)
            samples = 10 * sum(topic.endswith("/telemetry") for topic, _ in part)
            wait_for(
                lambda: ingest_metric(running, "osteotel_ingest_samples_stored_total") == samples,  # noqa: B023 - called within this iteration
                "every frame of the session stored",
                running,
            )
        if session == 0:
            # The checkpoint the graceful stop wrote inside the step's window.
            shutil.copytree(live / "state", tmp_path / "state-in-window")
    uninterrupted = estimate_rows(influxdb, influx_db_name, "step")
    assert len(uninterrupted) == 1
    assert (tmp_path / "state-in-window" / CHECKPOINT_FILE).exists()

    starts = {
        "rebuilt": tmp_path / "rebuild",
        "caught_up": tmp_path / "caught-up",
    }
    starts["rebuilt"].mkdir()
    shutil.copytree(tmp_path / "state-in-window", starts["caught_up"] / "state")
    for status, workdir in starts.items():
        database = f"{influx_db_name}_{status}"
        try:
            with running_ingest(env(workdir, database, status), workdir) as running:
                assert running.log().count("catchup_done") == 1
            assert estimate_rows(influxdb, database, "step") == uninterrupted
            fed = frames if status == "rebuilt" else len(messages) - first_session
            events = 1 if status == "rebuilt" else 0
            assert _catchup_point(influxdb, database) == [[status, fed, events]]
        finally:
            drop_database(influxdb, database)
