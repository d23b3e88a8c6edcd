"""`osteotel bench ingest` at a tiny size: every documented figure is there and makes sense."""

import argparse

import pytest

from apps.bench import ingest as ingest_bench

DOCUMENTED = (
    "devices", "frames", "frame_samples", "samples", "sustained_repeats",
    "mosquitto_sub_seconds", "mosquitto_sub_messages_per_s",
    "ingest_1p_seconds", "ingest_1p_frames_per_s", "ingest_1p_samples_per_s",
    "ingest_1p_samples_in_influx", "ingest_1p_cpu_window_s", "ingest_1p_messages_received",
    "ingest_1p_messages_received_busiest_process", "ingest_2p_messages_received",
    "ingest_2p_messages_received_busiest_process",
    "ingest_2p_seconds", "ingest_2p_frames_per_s", "ingest_2p_samples_per_s",
    "ingest_2p_samples_in_influx", "ingest_2p_cpu_window_s",
    "ingest_1p_vs_mosquitto_sub", "ingest_1p_vs_naive", "scaling_2p_vs_1p",
    "naive_frames", "naive_seconds", "naive_samples_per_s", "naive_samples_in_influx",
    "latency_offered_frames_per_s", "latency_published_frames_per_s", "latency_frames",
    "latency_sample_rate_hz", "latency_p50_s", "latency_p99_s", "latency_under_1s_fraction",
    "latency_samples_in_influx",
    "alert_trials", "alert_notifications", "alert_latency_p50_s", "alert_latency_p99_s",
    "normal_device_months", "cpu_cores", "ceiling_without_ingest_frames_per_s",
    "fleet_devices_continuous_100hz", "fleet_devices_at_emulator_duty",
    "emulator_recorded_samples_per_device_day",
    "ingest_1p_ceiling_reached", "ingest_2p_ceiling_reached", "ingest_write_concurrency",
    "ingest_1p_write_ms_per_batch", "ingest_2p_write_ms_per_batch",
    "ingest_1p_frames_per_batch", "ingest_2p_frames_per_batch",
)  # fmt: skip
# Shares of a run's time spent waiting (per process), and the window in use: zero or more.
WAITS = tuple(
    f"ingest_{processes}p_{name}"
    for processes in (1, 2)
    for name in ("writer_slot_wait_fraction", "queue_full_wait_fraction", "unacked_at_receipt_mean")
)
CPU_USERS = ("ingest", "influxd", "mosquitto", "publisher")
# CPU seconds come in clock ticks (10 ms): a tiny run may see none for a process.
CPU_SHARES = (
    *(f"ingest_{processes}p_cpu_us_per_frame_{name}" for processes in (1, 2) for name in CPU_USERS),
    "mosquitto_sub_cpu_us_per_message",
    "influxd_cpu_us_per_sample",
)
# /proc/PID/stat counts user and system time in ticks of 10 ms; a difference of two readings
# overstates by under a tick per counter: two counters for each process read through /proc
# (ingest's supervisor and two children in the two-process run, influxd and Mosquitto).
PROC_READ_SLACK_S = 2 * 0.01 * 5
LATENCY_S = 1.0  # --latency-s of the run below
THREADS = tuple(
    f"ingest_{processes}p_thread_cpu_us_per_frame_{kind}"
    for processes in (1, 2)
    for kind in ("loop", "mqtt", "workers")
)
STAGES = tuple(
    f"ingest_{processes}p_stage_us_per_frame_{stage}"
    for processes in (1, 2)
    for stage in (
        "handle",
        "validate",
        "lines",
        "dsp",
        "checkpoint",
        "join",
        "acknowledge",
        "capture",
    )
)
# Counts that a good run keeps at zero (the goal is no false critical alert): reported, not judged.
NORMAL_RATES = tuple(
    f"normal_alerts_per_device_month_{severity}" for severity in ("critical", "warning", "info")
)


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The figures of one tiny run: 4 devices, 60 frames of 20 samples (twice for each process
    count), a 1 s paced run, 2 alert trials and one normal treatment of a 2 mm lengthening."""
    parser = argparse.ArgumentParser()
    ingest_bench.configure(parser)
    workdir = tmp_path_factory.mktemp("bench-ingest")
    args = parser.parse_args(
        ["--devices", "4", "--frames", "60", "--frame-samples", "20", "--baseline-frames", "12",
         "--latency-s", str(LATENCY_S), "--timeout-s", "120", "--workdir", str(workdir),
         "--alert-trials", "2", "--normal-devices", "1", "--normal-target-mm", "2",
         "--repeats", "2"]
    )  # fmt: skip
    return ingest_bench.run(args)


def test_every_documented_figure_and_no_other(figures: dict[str, object]) -> None:
    """The run returns exactly the keys docs/ingest.md documents."""
    assert sorted(figures) == sorted(
        DOCUMENTED + NORMAL_RATES + CPU_SHARES + THREADS + STAGES + WAITS + ("ingest_raw_tier",)
    )


@pytest.mark.parametrize("key", WAITS, ids=WAITS)
def test_waits_are_not_negative(figures: dict[str, object], key: str) -> None:
    """Each wait share and the window in use are finite numbers, zero or more."""
    value = figures[key]
    assert isinstance(value, float)
    assert 0 <= value < float("inf")


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_batches_hold_the_frames(figures: dict[str, object], processes: int) -> None:
    """A written batch holds at least one message and at most `batch_max_messages` (400), and
    the run used the defaults: two batches written at a time, every sample in raw."""
    assert 1 <= _float(figures, f"ingest_{processes}p_frames_per_batch") <= 400
    assert figures["ingest_write_concurrency"] == 2
    assert figures["ingest_raw_tier"] == "full"  # the default: every sample in raw


@pytest.mark.parametrize("key", CPU_SHARES + THREADS, ids=CPU_SHARES + THREADS)
def test_cpu_per_frame_is_not_negative(figures: dict[str, object], key: str) -> None:
    """Each process's CPU per frame is a finite number, zero or more."""
    value = figures[key]
    assert isinstance(value, float)
    assert 0 <= value < float("inf")


@pytest.mark.parametrize("key", DOCUMENTED, ids=DOCUMENTED)
def test_figure_is_a_positive_number(figures: dict[str, object], key: str) -> None:
    """Each figure is a finite number above zero."""
    value = figures[key]
    assert isinstance(value, int | float)
    assert 0 < value < float("inf")


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_every_sample_reaches_influxdb(figures: dict[str, object], processes: int) -> None:
    """After the sustained run InfluxDB holds exactly the samples that were published."""
    assert figures[f"ingest_{processes}p_samples_in_influx"] == figures["samples"] == 60 * 20


def test_the_naive_baseline_stores_every_sample(figures: dict[str, object]) -> None:
    """The naive baseline's database holds exactly the samples of the frames it was sent, so its
    rate is a rate of stored samples."""
    assert figures["naive_frames"] == 12
    assert figures["naive_samples_in_influx"] == 12 * 20


def test_the_paced_run_stores_every_sample(figures: dict[str, object]) -> None:
    """The paced run's database holds exactly the samples of the frames it published."""
    frames = figures["latency_frames"]
    assert isinstance(frames, int)
    assert figures["latency_samples_in_influx"] == frames * 20


def test_latency_fraction_is_a_share(figures: dict[str, object]) -> None:
    """The share of frames stored within 1 s of publishing lies in [0, 1]."""
    fraction = figures["latency_under_1s_fraction"]
    assert isinstance(fraction, float)
    assert 0.0 <= fraction <= 1.0


@pytest.mark.parametrize("key", NORMAL_RATES, ids=NORMAL_RATES)
def test_normal_alert_rate_is_a_rate(figures: dict[str, object], key: str) -> None:
    """Alerts per device-month in normal healing are finite and not negative."""
    value = figures[key]
    assert isinstance(value, float)
    assert 0.0 <= value < float("inf")


def test_alert_trials_are_notified(figures: dict[str, object]) -> None:
    """The webhook receives at least one notification per alert trial."""
    # Not exactly one: a trial's frame that spans a UTC midnight also closes a day (adherence).
    notifications = figures["alert_notifications"]
    assert isinstance(notifications, int)
    assert figures["alert_trials"] == 2
    assert notifications >= 2


def test_alert_p99_is_not_below_p50(figures: dict[str, object]) -> None:
    """The alert latency's 99th percentile is at least its median."""
    p50, p99 = figures["alert_latency_p50_s"], figures["alert_latency_p99_s"]
    assert isinstance(p50, float)
    assert isinstance(p99, float)
    assert p99 >= p50


def _float(figures: dict[str, object], key: str) -> float:
    value = figures[key]
    assert isinstance(value, int | float)
    return float(value)


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_rates_are_the_counts_over_the_times(figures: dict[str, object], processes: int) -> None:
    """Each rate is what was published over the seconds measured: frames/s = frames / s and
    samples/s = frames/s x samples per frame."""
    seconds = _float(figures, f"ingest_{processes}p_seconds")
    frames_per_s = _float(figures, f"ingest_{processes}p_frames_per_s")
    assert frames_per_s == pytest.approx(_float(figures, "frames") / seconds)
    assert _float(figures, f"ingest_{processes}p_samples_per_s") == pytest.approx(
        frames_per_s * _float(figures, "frame_samples")
    )
    assert _float(figures, "samples") == _float(figures, "frames") * _float(
        figures, "frame_samples"
    )


def test_ratios_are_the_rates_measured(figures: dict[str, object]) -> None:
    """Every ratio is the quotient of the two rates it names, from the same run."""
    one = _float(figures, "ingest_1p_samples_per_s")
    assert _float(figures, "scaling_2p_vs_1p") == pytest.approx(
        _float(figures, "ingest_2p_samples_per_s") / one
    )
    assert _float(figures, "ingest_1p_vs_naive") == pytest.approx(
        one / _float(figures, "naive_samples_per_s")
    )
    assert _float(figures, "ingest_1p_vs_mosquitto_sub") == pytest.approx(
        _float(figures, "ingest_1p_frames_per_s") / _float(figures, "mosquitto_sub_messages_per_s")
    )
    assert _float(figures, "naive_samples_per_s") == pytest.approx(
        _float(figures, "naive_frames") * _float(figures, "frame_samples")
        / _float(figures, "naive_seconds")
    )  # fmt: skip


def test_the_ceiling_is_the_other_processes_cpu(figures: dict[str, object]) -> None:
    """The no-ingest ceiling is every core filled by influxd, Mosquitto and the publisher at
    their measured CPU per frame."""
    others_us = sum(_float(figures, f"ingest_1p_cpu_us_per_frame_{name}") for name in CPU_USERS[1:])
    assert _float(figures, "ceiling_without_ingest_frames_per_s") == pytest.approx(
        _float(figures, "cpu_cores") * 1e6 / others_us
    )
    for processes in (1, 2):
        assert _float(figures, f"ingest_{processes}p_ceiling_reached") == pytest.approx(
            _float(figures, f"ingest_{processes}p_frames_per_s")
            / _float(figures, "ceiling_without_ingest_frames_per_s")
        )


def test_the_fleet_is_half_the_better_rate(figures: dict[str, object]) -> None:
    """The fleet one machine carries: half the better measured sample rate, over 100 Hz for
    devices streaming all day, over the emulator's samples a day for devices recording as it
    does; influxd's CPU per sample is its CPU per frame over the frame's samples."""
    half = max(_float(figures, f"ingest_{p}p_samples_per_s") for p in (1, 2)) / 2
    assert _float(figures, "fleet_devices_continuous_100hz") == pytest.approx(half / 100)
    per_day = _float(figures, "emulator_recorded_samples_per_device_day")
    assert _float(figures, "fleet_devices_at_emulator_duty") == pytest.approx(
        half * 86_400 / per_day
    )
    assert _float(figures, "influxd_cpu_us_per_sample") == pytest.approx(
        _float(figures, "ingest_1p_cpu_us_per_frame_influxd") / _float(figures, "frame_samples")
    )


def test_latency_frames_follow_the_offered_rate(figures: dict[str, object]) -> None:
    """The paced run offers half the one-process rate for --latency-s seconds, samples each
    device's frames back to back, and sends no frame before it is due."""
    offered = _float(figures, "latency_offered_frames_per_s")
    assert offered == pytest.approx(_float(figures, "ingest_1p_frames_per_s") / 2)
    frames = figures["latency_frames"]
    assert frames == max(1, round(offered * LATENCY_S))
    assert _float(figures, "latency_sample_rate_hz") == pytest.approx(
        min(10_000.0, max(100.0, 20 * offered / 4))
    )
    # Frame k is due k / offered s after the first: the last one no sooner than (n - 1) / offered.
    published = _float(figures, "latency_published_frames_per_s")
    assert published * (_float(figures, "latency_frames") - 1) <= offered * frames * (1 + 1e-9)


@pytest.mark.parametrize("quantile", [0.50, 0.99], ids=["p50", "p99"])
def test_latency_percentiles_agree_with_the_share_under_1s(
    figures: dict[str, object], quantile: float
) -> None:
    """The percentiles and the share under 1 s come from the same histogram (1 s is one of its
    bounds): a percentile below 1 s means at least that share was stored within 1 s, one above
    it means less."""
    latency_s = _float(figures, f"latency_p{round(quantile * 100)}_s")
    fraction = _float(figures, "latency_under_1s_fraction")
    if latency_s < 1.0:
        assert fraction >= quantile
    elif latency_s > 1.0:
        assert fraction < quantile
    assert _float(figures, "latency_p99_s") >= _float(figures, "latency_p50_s")


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_every_message_is_received_by_exactly_one_process(
    figures: dict[str, object], processes: int
) -> None:
    """The processes' received counts add up to the frames published, not N times them; with
    two, the bench's five hubs are split so that neither process receives all of them."""
    frames = _float(figures, "frames")
    assert _float(figures, f"ingest_{processes}p_messages_received") == frames
    busiest = _float(figures, f"ingest_{processes}p_messages_received_busiest_process")
    assert busiest == frames if processes == 1 else frames / 2 <= busiest < frames


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_cpu_window_covers_the_run(figures: dict[str, object], processes: int) -> None:
    """The CPU was read over the whole measured run: from before the first publish until after
    the last store."""
    assert _float(figures, f"ingest_{processes}p_cpu_window_s") >= _float(
        figures, f"ingest_{processes}p_seconds"
    )


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_cpu_adds_up_within_the_cores(figures: dict[str, object], processes: int) -> None:
    """The processes' CPU per frame, times the frames, adds up to no more than every core busy
    for the window it was read over (up to the clock ticks of the readings)."""
    used_s = (
        sum(_float(figures, f"ingest_{processes}p_cpu_us_per_frame_{name}") for name in CPU_USERS)
        * _float(figures, "frames")
        / 1e6
    )
    window_s = _float(figures, f"ingest_{processes}p_cpu_window_s")
    assert used_s <= _float(figures, "cpu_cores") * window_s + PROC_READ_SLACK_S


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_ingest_threads_add_up_to_its_cpu(figures: dict[str, object], processes: int) -> None:
    """The threads' CPU (each read from /proc/PID/task) adds up to no more than ingest's whole
    CPU (a thread that ended between the readings is only in the whole), within the ticks."""
    threads_us = sum(
        _float(figures, f"ingest_{processes}p_thread_cpu_us_per_frame_{kind}")
        for kind in ("loop", "mqtt", "workers")
    )
    slack_us = PROC_READ_SLACK_S / _float(figures, "frames") * 1e6
    assert threads_us <= _float(figures, f"ingest_{processes}p_cpu_us_per_frame_ingest") + slack_us


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_handling_a_batch_holds_its_stages(figures: dict[str, object], processes: int) -> None:
    """Every event-loop stage took time, and handling a batch took at least its parts (one
    clock, nested intervals)."""
    stage = {
        name: _float(figures, f"ingest_{processes}p_stage_us_per_frame_{name}")
        for name in ("handle", "validate", "lines", "dsp", "checkpoint", "join", "acknowledge")
    }
    assert all(value > 0 for value in stage.values()), stage
    # The default tier writes no capture files.
    assert _float(figures, f"ingest_{processes}p_stage_us_per_frame_capture") == 0
    parts = stage["validate"] + stage["lines"] + stage["dsp"] + stage["checkpoint"]
    assert stage["handle"] >= parts * (1 - 1e-9)
