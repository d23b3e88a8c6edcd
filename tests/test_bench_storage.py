"""`osteotel bench storage` at a tiny size: every variant stores every sample; figures relate."""

import argparse

import pytest

from apps.bench import storage as storage_bench

DEVICES, FRAMES, FRAME_SAMPLES = 4, 400, 100
SAMPLES = FRAMES * FRAME_SAMPLES
NAMES = tuple(variant.name for variant in storage_bench.VARIANTS)
PER_VARIANT = (
    "server_cpu_us_per_sample", "deferred_fraction", "client_cpu_us_per_sample", "samples_per_s",
    "body_bytes_per_sample", "cpu_window_s", "samples_stored", "frames_stored", "vs_baseline",
)  # fmt: skip
RUN = ("devices", "frames", "frame_samples", "samples", "repeats", "cpu_cores",
       "server_idle_cpu_fraction", "emulator_days", "emulator_recorded_samples_per_day",
       "emulator_full_rate_window_samples_per_day", "tier_stored_fraction_at_emulator_duty",
       "tier_stored_fraction_continuous_100hz")  # fmt: skip
# /proc/PID/stat counts user and system time in ticks of 10 ms: a difference of two readings
# can overstate by under a tick for each of its two counters.
PROC_READ_SLACK_S = 2 * 0.01
# The same bytes, cut or sent differently.
SAME_BODY = ("lines_1k", "lines_5k", "lines_100k", "concurrent_2", "concurrent_4", "store_write")


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The figures of one round of every variant: 4 devices, 400 frames of 100 samples."""
    parser = argparse.ArgumentParser()
    storage_bench.configure(parser)
    workdir = tmp_path_factory.mktemp("bench-storage")
    args = parser.parse_args(
        ["--devices", str(DEVICES), "--frames", str(FRAMES), "--frame-samples",
         str(FRAME_SAMPLES), "--repeats", "1", "--timeout-s", "60", "--quiet-s", "1",
         "--workdir", str(workdir)]
    )  # fmt: skip
    return storage_bench.run(args)


def _float(figures: dict[str, object], key: str) -> float:
    value = figures[key]
    assert isinstance(value, float | int), key
    return float(value)


def test_every_documented_figure_and_no_other(figures: dict[str, object]) -> None:
    """The run returns exactly the keys docs/ingest.md documents."""
    expected = set(RUN) | {f"{name}_{key}" for name in NAMES for key in PER_VARIANT}
    assert set(figures) == expected


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_every_sample_and_frame_written_is_stored(figures: dict[str, object], name: str) -> None:
    """Each variant's store counts exactly the samples and frames written, no more, no less."""
    assert figures[f"{name}_samples_stored"] == SAMPLES
    assert figures[f"{name}_frames_stored"] == FRAMES


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_server_cpu_is_positive_and_within_the_cores(figures: dict[str, object], name: str) -> None:
    """The server used some CPU for the writes, and no more than every core over the window."""
    used_s = _float(figures, f"{name}_server_cpu_us_per_sample") * SAMPLES / 1e6
    window_s = _float(figures, f"{name}_cpu_window_s")
    # The tier's raw_1s points for this run's 400 frames cost influxd about 5 ms, under one
    # 10 ms clock tick of /proc: 0 can be read there; every other variant writes 40,000 lines.
    assert used_s > 0 or name == "raw_1s"
    assert used_s >= 0
    assert used_s <= _float(figures, "cpu_cores") * window_s + PROC_READ_SLACK_S
    assert 0 <= _float(figures, f"{name}_deferred_fraction") <= 1


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_client_cpu_is_within_the_cores_over_the_writes(
    figures: dict[str, object], name: str
) -> None:
    """The bench's own CPU while writing is no more than every core over the writing time."""
    used_s = _float(figures, f"{name}_client_cpu_us_per_sample") * SAMPLES / 1e6
    written_s = SAMPLES / _float(figures, f"{name}_samples_per_s")
    assert 0 <= used_s <= _float(figures, "cpu_cores") * written_s + PROC_READ_SLACK_S


def test_bodies_relate_as_their_forms_say(figures: dict[str, object]) -> None:
    """Cutting or overlapping requests sends the baseline's bytes; gzip sends fewer; a
    calibrated device's full digits more, and their float32 form fewer than those."""
    baseline = _float(figures, "baseline_body_bytes_per_sample")
    assert [_float(figures, f"{name}_body_bytes_per_sample") for name in SAME_BODY] == [
        baseline
    ] * len(SAME_BODY)
    assert _float(figures, "gzip_body_bytes_per_sample") < baseline
    full = _float(figures, "full_digits_body_bytes_per_sample")
    assert full > baseline
    assert _float(figures, "float32_digits_body_bytes_per_sample") < full
    assert _float(figures, "two_measurements_body_bytes_per_sample") > baseline
    assert _float(figures, "unsorted_tags_body_bytes_per_sample") == baseline
    assert _float(figures, "raw_1s_body_bytes_per_sample") < baseline / 10


def test_the_baseline_is_its_own_unit(figures: dict[str, object]) -> None:
    """The baseline's ratio to itself is exactly 1."""
    assert figures["baseline_vs_baseline"] == 1.0


def test_the_tier_figures_relate_as_their_windows_say(figures: dict[str, object]) -> None:
    """Full-rate windows are part of what the emulator records, and a tier stores a fraction
    of today's samples, smaller still for a device streaming around the clock."""
    recorded = _float(figures, "emulator_recorded_samples_per_day")
    assert 0 < _float(figures, "emulator_full_rate_window_samples_per_day") < recorded
    at_duty = _float(figures, "tier_stored_fraction_at_emulator_duty")
    assert 0 < _float(figures, "tier_stored_fraction_continuous_100hz") < at_duty < 1
