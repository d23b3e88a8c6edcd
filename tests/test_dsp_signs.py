"""Load share signs, usability and readiness in the complete estimator: a share outside
[0, 1], a device whose steps and loading disagree, or a test too weak to tell never counts,
and readiness needs two days and can be lost again."""

import math

import numpy as np
import pytest

from dsp.adherence import Protocol
from dsp.estimator import (
    DailyRecord,
    EstimateRecord,
    EstimatorConfig,
    FleetEstimator,
    LoadShareRecord,
    StepRecord,
)

DAY_NS = 86_400 * 10**9
START_NS = 1_767_225_600 * 10**9  # a UTC midnight
RATE_HZ = 10.0
DEVICE = "DX-0001"


def _frames(
    fleet: FleetEstimator,
    t0_ns: int,
    force_n: np.ndarray,
    disp_mm: np.ndarray,
    ref_load_n: np.ndarray | None = None,
) -> list[EstimateRecord]:
    """Feed 1 s frames from t0_ns."""
    out: list[EstimateRecord] = []
    per = int(RATE_HZ)
    for k in range(0, force_n.size, per):
        ref = None if ref_load_n is None else ref_load_n[k : k + per]
        t_k = t0_ns + round(k * 1e9 / RATE_HZ)
        out += fleet.frame(DEVICE, force_n[k : k + per], disp_mm[k : k + per], ref, t_k, RATE_HZ)
    return out


def distraction_steps(
    fleet: FleetEstimator, day: int, *, polarity: float = 1.0
) -> list[EstimateRecord]:
    """Three 0.25 mm sudden steps of 100 N/mm on `day`, 11 min apart, as the sensor shows them
    (polarity -1: a sensor mounted the other way); the records their frames completed."""
    rng = np.random.default_rng(day)
    records: list[EstimateRecord] = []
    for j in range(3):
        t_ev = START_NS + day * DAY_NS + (8 * 3600 + 660 * j) * 10**9
        t_s = np.arange(int(640 * RATE_HZ)) / RATE_HZ - 10.0
        after = np.clip(t_s, 0.0, None)
        shape = np.where(t_s >= 0.0, 0.1 + 0.4 * np.exp(-after) + 0.5 * np.exp(-after / 120), 0)
        force = polarity * (50.0 + 100.0 * 0.25 * shape) + rng.normal(0.0, 0.2, t_s.size)
        disp = 20.0 + 0.25 * (j + (t_s >= 0.0)) + rng.normal(0.0, 0.001, t_s.size)
        records += fleet.step(DEVICE, t_ev, 0.25)
        records += _frames(fleet, t_ev - 10 * 10**9, force, disp)
    return records


def load_test(
    fleet: FleetEstimator,
    day: int,
    share: float,
    *,
    hour: float = 12.0,
    load_n: float = 500.0,
    force_noise_n: float = 0.3,
    polarity: float = 1.0,
) -> LoadShareRecord:
    """A standing test on `day`: the scale reads a 5 s ramp to load_n, 20 s hold and 5 s off;
    the device's force rises by share x load (polarity -1: the sensor shows it falling)."""
    rng = np.random.default_rng(int(day * 100 + hour))
    t0 = START_NS + day * DAY_NS + round(hour * 3600e9)
    t_s = np.arange(int(40 * RATE_HZ)) / RATE_HZ
    load = load_n * np.clip(np.minimum((t_s - 5.0) / 5.0, (35.0 - t_s) / 5.0), 0.0, 1.0)
    force = polarity * (60.0 + share * load) + rng.normal(0.0, force_noise_n, t_s.size)
    disp = 20.5 - share * load / 2000.0 + rng.normal(0.0, 0.0005, t_s.size)
    ref = load + rng.normal(0.0, 1.0, t_s.size)
    fleet.load_test_start(DEVICE, t0)
    _frames(fleet, t0, force, disp, ref)
    [record] = [r for r in fleet.load_test_end(DEVICE, t0 + 40 * 10**9) if r.kind == "load_share"]
    assert isinstance(record, LoadShareRecord)
    return record


def consolidating_fleet(*, polarity: float = 1.0) -> FleetEstimator:
    """A device that did its 0.75 mm (three steps on day 0) and is in consolidation from
    day 1."""
    fleet = FleetEstimator(EstimatorConfig(protocol=Protocol(target_mm=0.75)), capacity=1)
    distraction_steps(fleet, 0, polarity=polarity)
    return fleet


def dailies(records: list[EstimateRecord]) -> list[DailyRecord]:
    return [r for r in records if isinstance(r, DailyRecord)]


def test_a_correctly_signed_share_is_usable_and_right() -> None:
    """Loading that raises the force as the steps do gives a usable share within 0.02."""
    fleet = consolidating_fleet()
    record = load_test(fleet, 1, 0.6)
    assert record.usable
    assert record.flags == ()
    assert abs(record.share - 0.6) < 0.02
    assert record.k_device_n_per_mm == pytest.approx(2000.0, rel=0.1)
    assert not record.removal_criterion_met


def test_loading_that_lowers_the_force_is_never_used() -> None:
    """With steps that raise the force, a test that lowers it (share -0.94) is implausible
    and sign-inconsistent; every later share of the device carries sign_inconsistent, even
    a small positive one, and the day says so; nothing is ever ready."""
    fleet = consolidating_fleet()
    wrong = load_test(fleet, 1, 0.94, polarity=-1.0)
    assert wrong.share == pytest.approx(-0.94, abs=0.02)
    assert set(wrong.flags) == {"implausible", "sign_inconsistent"}
    assert not wrong.usable
    later = [load_test(fleet, day, 0.03) for day in (2, 3, 4)]
    assert all("sign_inconsistent" in r.flags and not r.usable for r in later)
    assert not any(r.removal_criterion_met for r in later)
    days = dailies(fleet.flush())
    assert days[-1].phase == "consolidation"
    assert "sign_inconsistent" in days[-1].flags
    assert math.isnan(days[-1].load_share)
    assert math.isnan(days[-1].consolidation_index)


def test_a_sensor_mounted_the_other_way_is_flagged_from_its_steps() -> None:
    """Steps that lower the force mark the device sign_inconsistent before any test; a
    calibration with a new id clears it."""
    fleet = consolidating_fleet(polarity=-1.0)
    record = load_test(fleet, 1, 0.5, polarity=-1.0)
    assert "sign_inconsistent" in record.flags
    assert not record.usable
    fleet.set_calibration(DEVICE, "CAL-2")
    distraction_steps(fleet, 2)
    assert load_test(fleet, 3, 0.5).usable


@pytest.mark.parametrize(
    ("share", "kwargs", "flag"),
    [
        (1.3, {}, "implausible"),
        (0.5, {"load_n": 60.0}, "low_load_variation"),
        (0.5, {"force_noise_n": 40.0}, "poor_fit"),
    ],
    ids=["above_one", "scale_barely_loaded", "patient_moved"],
)
def test_a_test_that_cannot_be_trusted_is_flagged(
    share: float, kwargs: dict[str, float], flag: str
) -> None:
    """A share above 1, a load too small to give a slope, or a force that scatters far
    about its line is flagged and not usable."""
    fleet = consolidating_fleet()
    record = load_test(fleet, 1, share, **kwargs)
    assert flag in record.flags
    assert not record.usable


def test_readiness_needs_two_days_and_can_be_lost() -> None:
    """A qualifying share on one day is not enough; on a second day it is (phase ready); a
    later usable share above 10 % takes it back, while an unusable test changes nothing."""
    fleet = consolidating_fleet()
    first = load_test(fleet, 1, 0.05)
    assert first.usable
    assert not first.removal_criterion_met
    second = load_test(fleet, 2, 0.05)
    assert second.removal_criterion_met
    unusable = load_test(fleet, 2, 0.5, hour=14.0, load_n=50.0)
    assert not unusable.usable
    assert unusable.removal_criterion_met
    records = fleet.step(DEVICE, START_NS + 3 * DAY_NS + 10**9, 0.0001, kind="probe")
    assert dailies(records)[-1].phase == "ready"
    lost = load_test(fleet, 3, 0.3)
    assert lost.usable
    assert not lost.removal_criterion_met
    days = dailies(fleet.flush())
    assert days[-1].phase == "consolidation"


def test_a_healed_share_within_its_error_of_zero_is_ready() -> None:
    """A fully healed bone carries the load: a share of 0.003 whose standard error reaches
    below 0 is usable and qualifies on both days (its sign cannot matter at that size)."""
    fleet = consolidating_fleet()
    for day in (1, 2):
        record = load_test(fleet, day, 0.003, load_n=150.0, force_noise_n=4.0)
        assert record.usable
        assert record.share - 2.0 * record.share_std < 0.0
    assert record.removal_criterion_met


def test_the_day_counts_its_tests_and_says_why_none_was_used() -> None:
    """A day with one usable and one flagged test counts both, keeps the usable share and
    flags unusable_share."""
    fleet = consolidating_fleet()
    good = load_test(fleet, 1, 0.4, hour=9.0)
    load_test(fleet, 1, 0.4, hour=15.0, load_n=50.0)
    [day] = [d for d in dailies(fleet.flush()) if d.t_ns == START_NS + DAY_NS]
    assert (day.n_load_tests, day.n_load_tests_usable) == (2, 1)
    assert day.load_share == good.share
    assert "unusable_share" in day.flags
    assert day.projection_status == "insufficient_days"


def test_step_records_pass_on_the_estimates_flags() -> None:
    """A step record carries its estimate's fields and flags as they are."""
    fleet = FleetEstimator(capacity=1)
    steps = [r for r in distraction_steps(fleet, 0) if isinstance(r, StepRecord)]
    assert len(steps) == 3
    record = steps[0]
    assert record.closed_by == "window"
    assert record.flags == ()
    assert record.k_inst_n_per_mm == pytest.approx(100.0, rel=0.05)
    assert record.k_inst_n_per_mm * record.delta_mm == pytest.approx(
        record.f_inst_n - record.f_residual_n
    )
