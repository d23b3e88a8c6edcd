"""The complete per-device estimator: records, provenance, fleet indexing."""

import heapq
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reference import prony_ramp_curve

from apps.analyze import analyze_emulated, feed_frame, record_json
from devices.emulator.generator import DeviceConfig, Emitted, generate
from dsp.estimator import (
    DailyRecord,
    DeviceEstimator,
    EstimateRecord,
    EstimatorConfig,
    FleetEstimator,
    StepRecord,
)
from ingest.estimates import feed_event

NS_PER_DAY = 86_400 * 1_000_000_000
START_NS = 1_699_920_000_000_000_000


@pytest.fixture(scope="module")
def records() -> list[EstimateRecord]:
    """Eleven days of a normal emulated device (2 mm) through the estimator."""
    config = DeviceConfig(device="DX-0001", hub="HUB-A", seed=3, target_mm=2.0)
    return list(analyze_emulated(config, start_ns=START_NS, end_ns=START_NS + 11 * NS_PER_DAY))


def test_every_kind_of_record_is_emitted(records: list[EstimateRecord]) -> None:
    """A run with steps, probes and load tests yields step, probe, load_share and daily records."""
    kinds = {r.kind for r in records}
    assert {"step", "probe", "load_share", "daily"} <= kinds


def test_records_carry_provenance(records: list[EstimateRecord]) -> None:
    """Every record names its estimator version and an input span that ends after it starts."""
    for r in records:
        assert r.version.startswith("dsp.")
        assert r.t_start_ns <= r.t_end_ns or r.t_end_ns == -1


def test_one_daily_record_per_day(records: list[EstimateRecord]) -> None:
    """Daily records cover consecutive UTC days, one each."""
    days = [r.t_ns // NS_PER_DAY for r in records if isinstance(r, DailyRecord)]
    assert days == list(range(days[0], days[0] + len(days)))


def test_steps_are_numbered_in_order(records: list[EstimateRecord]) -> None:
    """Distraction steps are numbered 1, 2, 3, ... in time order."""
    numbers = [r.number for r in records if isinstance(r, StepRecord) and r.kind == "step"]
    assert numbers == list(range(1, len(numbers) + 1))


def test_records_serialise_as_strict_json(records: list[EstimateRecord]) -> None:
    """Every record becomes one JSON line without NaN literals."""
    for r in records:
        line = record_json(r)
        assert "NaN" not in line
        assert '"kind":"' + r.kind + '"' in line


def test_fleet_grows_without_losing_state() -> None:
    """Devices beyond the initial capacity get the same estimates as a device on its own."""
    rng = np.random.default_rng(0)
    force = 50.0 + rng.standard_normal((30, 100))
    disp = 5.0 + 0.01 * np.arange(30)[:, None] + 0.002 * rng.standard_normal((30, 100))
    fleet = FleetEstimator(capacity=1)
    alone = DeviceEstimator("DX-0002")
    t0 = START_NS + 8 * 3600 * 1_000_000_000
    fleet.step("DX-0002", t0 + 500_000_000, 0.25)
    alone.step(t0 + 500_000_000, 0.25)
    for k in range(30):
        t0_k = t0 + k * 1_000_000_000
        fleet.frame("DX-0001", force[k], disp[k], None, t0_k, 100.0)
        fleet.frame("DX-0002", force[k], disp[k], None, t0_k, 100.0)
        alone.frame(force[k], disp[k], None, t0_k, 100.0)
    got = [r for r in fleet.flush("DX-0002") if r.kind == "step"]
    want = [r for r in alone.flush() if r.kind == "step"]
    assert record_json(got[0]) == record_json(want[0])
    assert fleet.devices == ["DX-0002", "DX-0001"]


def test_numeric_state_per_device_fits_in_four_kib() -> None:
    """Without an open step window, a device's numeric state (trackers, histories and its
    share of the window pool) is at most 4 KiB."""
    fleet = FleetEstimator(capacity=64)
    force = np.full(100, 100.0)
    disp = np.full(100, 10.0)
    for d in range(64):
        fleet.frame(f"DX-{d:04d}", force, disp, None, 1_700_000_000_000_000_000, 100.0)
    parts = fleet.state_parts_per_device()
    assert set(parts) == {"trackers", "windows", "histories"}
    assert fleet.state_bytes_per_device() == sum(parts.values()) <= 4096


def _probe_record(k_inst_n_per_mm: float, seed: int, disp_noise_mm: float = 0.002) -> StepRecord:
    """A 0.02 mm probe ramped over 2 s at 10 Hz with 0.5 N noise (the emulator's probe on the
    step-40 Prony coefficients, docs/emulator.md), the displacement read to 1 um with
    disp_noise_mm of noise, through the estimator."""
    a_f = 0.71 - 0.016 * 40  # Bachmeier 2022 at step 40 (docs/domain.md), as the emulator holds
    a_inf = 0.058 * np.log(40) + 0.0034
    rate_hz, pre_s = 10.0, 30.0
    t_s = np.arange(int((pre_s + 610.0) * rate_hz)) / rate_hz - pre_s
    shape = prony_ramp_curve(t_s, 2.0, a_inf, a_f, 1.0 - a_f - a_inf, 0.97, 7.42 * 40 + 60.2)
    rng = np.random.default_rng(seed)
    force = 150.0 + k_inst_n_per_mm * 0.02 * shape + rng.normal(0.0, 0.5, t_s.size)
    disp = 20.0 + 0.02 * np.clip(t_s / 2.0, 0.0, 1.0) + rng.normal(0.0, disp_noise_mm, t_s.size)
    t0 = START_NS + 13 * 3600 * 1_000_000_000
    fleet = FleetEstimator(capacity=1)
    fleet.step("DX-0001", t0 + round(pre_s * 1e9), 0.02, kind="probe")
    records = fleet.frame("DX-0001", force, np.round(disp, 3), None, t0, rate_hz)
    [probe] = [r for r in records + fleet.flush() if r.kind == "probe"]
    assert isinstance(probe, StepRecord)
    return probe


@pytest.mark.parametrize(
    ("k_inst_n_per_mm", "disp_noise_mm", "low_snr"),
    [(60.0, 0.002, True), (2000.0, 0.002, True), (2000.0, 0.0002, False)],
    ids=["soft_regenerate", "stiff_regenerate_noisy_disp", "stiff_regenerate"],
)
def test_a_probe_within_its_own_noise_is_flagged_low_snr(
    k_inst_n_per_mm: float, disp_noise_mm: float, low_snr: bool
) -> None:
    """A probe whose k_inst error exceeds 8 % of it is flagged low_snr, though its fit explains
    the relaxation (R^2 >= 0.9): a soft regenerate's 1.2 N answer, or a stiff one's 0.02 mm
    the displacement (2 um noise) places only to a few hundredths of a second, whose
    fast relaxation it then cannot carry back to a sudden step; with a displacement read 10x
    better the stiff probe is a measurement."""
    probe = _probe_record(k_inst_n_per_mm, seed=5, disp_noise_mm=disp_noise_mm)
    assert probe.fit_r2 >= 0.9
    assert ("low_snr" in probe.flags) is low_snr


def _two_devices_items(days: float) -> list[Emitted]:
    """Two emulated devices' frames and events, merged in time order as a hub would send them."""
    configs = [
        DeviceConfig(device=f"DX-000{n}", hub="HUB-A", seed=n, target_mm=2.0) for n in (1, 2)
    ]
    end_ns = START_NS + round(days * NS_PER_DAY)
    streams = [generate(config, start_ns=START_NS, end_ns=end_ns) for config in configs]
    return list(heapq.merge(*streams, key=lambda item: item.t_ns))


def _feed(fleet: FleetEstimator, item: Emitted) -> list[EstimateRecord]:
    if item.frame is not None:
        return feed_frame(fleet, item.frame)
    if item.event is not None:
        return feed_event(fleet, item.event)
    return []


def test_a_restored_snapshot_goes_on_bit_for_bit(tmp_path: Path) -> None:
    """A fleet saved to disk and restored every 400 items makes the same records as one that
    never stopped, open step windows included."""
    items = _two_devices_items(11.0)
    straight = FleetEstimator()
    want = [record_json(r) for item in items for r in _feed(straight, item)]
    fleet = FleetEstimator()
    got: list[str] = []
    with_open_windows = 0
    for number, item in enumerate(items, start=1):
        got += [record_json(r) for r in _feed(fleet, item)]
        if number % 400 == 0:
            # Typed loosely: numpy's stubs would match the arrays against savez's own keywords.
            arrays: dict[str, Any] = fleet.snapshot()
            np.savez(tmp_path / "fleet.npz", **arrays)
            with np.load(tmp_path / "fleet.npz", allow_pickle=False) as saved:
                with_open_windows += bool((saved["step_slot_owner"] >= 0).any())
                fleet = FleetEstimator.restore(saved)
    assert {"step", "probe", "daily"} <= {json.loads(line)["kind"] for line in want}
    assert with_open_windows > 0
    assert got == want
    assert [record_json(r) for r in fleet.flush()] == [record_json(r) for r in straight.flush()]


def test_a_snapshot_made_with_other_settings_is_refused() -> None:
    """Restoring under another configuration raises instead of mixing two estimators."""
    fleet = FleetEstimator()
    fleet.frame("DX-0001", np.full(100, 50.0), np.full(100, 5.0), None, START_NS, 100.0)
    with pytest.raises(ValueError, match="other estimator settings"):
        FleetEstimator.restore(fleet.snapshot(), EstimatorConfig(quality_every_s=30.0))
