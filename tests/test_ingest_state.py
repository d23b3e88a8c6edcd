"""The estimator's state file between a graceful stop and the next start (ingest/state.py)."""

from pathlib import Path

import numpy as np

from apps.analyze import record_json
from dsp.estimator import FleetEstimator
from ingest.state import STATE_FILE, load_estimator, save_estimator

START_NS = 1_700_000_000_000_000_000
SECOND_NS = 1_000_000_000


def _fed_fleet() -> FleetEstimator:
    fleet = FleetEstimator()
    rng = np.random.default_rng(5)
    fleet.step("DX-0001", START_NS + SECOND_NS // 2, 0.25)
    for k in range(20):
        force = 100.0 + rng.standard_normal(100)
        fleet.frame("DX-0001", force, np.full(100, 5.0), None, START_NS + k * SECOND_NS, 100.0)
    return fleet


def test_a_saved_fleet_is_restored_once(tmp_path: Path) -> None:
    """What is saved comes back with the same open step window, and the file is then gone."""
    fleet = _fed_fleet()
    assert save_estimator(fleet, tmp_path / "state")
    restored = load_estimator(tmp_path / "state")
    assert restored is not None
    assert restored.devices == ["DX-0001"]
    assert [record_json(r) for r in restored.flush()] == [record_json(r) for r in fleet.flush()]
    assert not (tmp_path / "state" / STATE_FILE).exists()
    assert load_estimator(tmp_path / "state") is None


def test_an_unreadable_state_file_is_set_aside(tmp_path: Path) -> None:
    """A damaged file is refused, kept as `.refused` for inspection, and no fleet comes back."""
    (tmp_path / STATE_FILE).write_bytes(b"PK\x03\x04 not a numpy archive")
    assert load_estimator(tmp_path) is None
    assert not (tmp_path / STATE_FILE).exists()
    assert (tmp_path / f"{STATE_FILE}.refused").exists()


def test_a_failed_save_is_reported_not_raised(tmp_path: Path) -> None:
    """Saving where no directory can be made returns False instead of failing the stop."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert save_estimator(_fed_fleet(), blocker / "state") is False
