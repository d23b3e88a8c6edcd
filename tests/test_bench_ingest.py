"""`osteotel bench ingest` at a tiny size: every documented figure is there and makes sense."""

import argparse

import pytest

from osteotel.bench import ingest as ingest_bench

DOCUMENTED = (
    "devices", "frames", "frame_samples", "samples",
    "mosquitto_sub_seconds", "mosquitto_sub_messages_per_s",
    "ingest_1p_seconds", "ingest_1p_frames_per_s", "ingest_1p_samples_per_s",
    "ingest_1p_samples_in_influx",
    "ingest_2p_seconds", "ingest_2p_frames_per_s", "ingest_2p_samples_per_s",
    "ingest_2p_samples_in_influx",
    "ingest_1p_vs_mosquitto_sub", "ingest_1p_vs_naive", "scaling_2p_vs_1p",
    "naive_frames", "naive_seconds", "naive_samples_per_s",
    "latency_offered_frames_per_s", "latency_published_frames_per_s", "latency_frames",
    "latency_sample_rate_hz", "latency_p50_s", "latency_p99_s", "latency_under_1s_fraction",
)  # fmt: skip


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The figures of one tiny run: 4 devices, 60 frames of 20 samples, a 1 s paced run."""
    parser = argparse.ArgumentParser()
    ingest_bench.configure(parser)
    workdir = tmp_path_factory.mktemp("bench-ingest")
    args = parser.parse_args(
        ["--devices", "4", "--frames", "60", "--frame-samples", "20", "--baseline-frames", "12",
         "--latency-s", "1", "--timeout-s", "120", "--workdir", str(workdir)]
    )  # fmt: skip
    return ingest_bench.run(args)


def test_every_documented_figure_and_no_other(figures: dict[str, object]) -> None:
    """The run returns exactly the keys docs/ingest.md documents."""
    assert sorted(figures) == sorted(DOCUMENTED)


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


def test_latency_fraction_is_a_share(figures: dict[str, object]) -> None:
    """The share of frames stored within 1 s of publishing lies in [0, 1]."""
    fraction = figures["latency_under_1s_fraction"]
    assert isinstance(fraction, float)
    assert 0.0 <= fraction <= 1.0
