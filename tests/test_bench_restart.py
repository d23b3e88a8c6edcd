"""`osteotel bench restart` at a tiny size: its figures are there and count what they should."""

import argparse

from apps.bench import restart


def test_a_tiny_restart_bench_reads_back_every_sample() -> None:
    """Two devices over eight days: the rebuild reads every stored sample, the restart with
    the checkpoint none, and every figure is present."""
    parser = argparse.ArgumentParser()
    restart.configure(parser)
    figures = restart.run(parser.parse_args(["--devices", "2", "--days", "8"]))
    assert set(figures) == {
        "devices", "days", "frames", "samples", "rebuild_ready_s", "rebuild_samples",
        "rebuild_catchup_s", "rebuild_samples_per_s", "rebuild_device_days_per_s",
        "restart_ready_s", "restart_samples",
    }  # fmt: skip
    assert isinstance(figures["samples"], int)
    assert figures["samples"] > 0
    assert figures["rebuild_samples"] == figures["samples"]
    assert figures["restart_samples"] == 0
