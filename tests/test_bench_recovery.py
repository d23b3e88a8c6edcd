"""`osteotel bench recovery` at a tiny size: one short outage, every figure there and sane."""

import argparse
import math

import pytest

from apps.bench import recovery

FIGURES = (
    "outage_s", "rate_hz", "recovery_spool_empty_s", "recovery_live_stored_s",
    "ingest_store_recovery_s", "ingest_store_recoveries", "frames_published", "frames_in_influx",
)  # fmt: skip


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One run: 1 s of stream, InfluxDB away for 2 s, 1 s of stream after recovery."""
    parser = argparse.ArgumentParser()
    recovery.configure(parser)
    workdir = tmp_path_factory.mktemp("bench-recovery")
    args = parser.parse_args(
        ["--outage-s", "2", "--warm-s", "1", "--tail-s", "1", "--timeout-s", "120",
         "--workdir", str(workdir)]
    )  # fmt: skip
    return recovery.run(args)


def test_every_documented_figure_and_no_other(figures: dict[str, object]) -> None:
    """The run returns exactly the keys docs/ingest.md documents."""
    assert sorted(figures) == sorted(FIGURES)


def test_every_frame_stored_and_one_recovery(figures: dict[str, object]) -> None:
    """Every published frame is in InfluxDB, and ingest saw exactly one recovery."""
    assert figures["frames_in_influx"] == figures["frames_published"]
    assert figures["ingest_store_recoveries"] == 1.0


def test_recovery_times_are_ordered(figures: dict[str, object]) -> None:
    """The spool empties before a later frame can be stored; both are finite and not negative."""
    empty_s, live_s = figures["recovery_spool_empty_s"], figures["recovery_live_stored_s"]
    assert isinstance(empty_s, float)
    assert isinstance(live_s, float)
    assert 0 <= empty_s <= live_s < math.inf
