"""Accuracy of the estimator on emulator output against the emulator's ground truth."""

import pytest

from osteotel.bench.dsp import accuracy


@pytest.fixture(scope="module")
def normal() -> dict[str, float]:
    """A normal 10 mm lengthening up to 14 days before the load share reaches 10 %."""
    return accuracy("normal", target_mm=10.0, days=27.0)


def test_step_estimates_meet_the_accuracy_goals(normal: dict[str, float]) -> None:
    """Median relative errors: k_inst <= 5 %, k_eq <= 10 %, tau_slow <= 20 %."""
    assert normal["k_inst_median_rel_err"] <= 0.05
    assert normal["k_eq_median_rel_err"] <= 0.10
    assert normal["tau_slow_median_rel_err"] <= 0.20


def test_load_share_is_within_three_hundredths(normal: dict[str, float]) -> None:
    """Every daily load share is within 0.03 of the true one."""
    assert normal["load_share_max_abs_err"] <= 0.03


@pytest.mark.parametrize("seed", [1, 2, 3], ids=["seed1", "seed2", "seed3"])
def test_readiness_is_projected_within_three_days(seed: int) -> None:
    """Made 14 days before readiness, the projected date is within +/- 3 days, on normal
    healers whose devices drew different ramps, tau_fast and fast shares."""
    figures = accuracy("normal", target_mm=10.0, days=27.0, seed=seed)
    assert abs(figures["projection_err_days"]) <= 3.0


def test_a_reversed_sensor_is_never_ready() -> None:
    """A force sensor mounted the other way, uncorrected: no usable share, no ready day."""
    figures = accuracy("reversed_force_sensor", target_mm=10.0, days=27.0)
    assert figures["load_share_usable_fraction"] == 0.0
    assert figures["ready_days"] == 0.0


def test_step_errors_are_within_their_standard_errors(normal: dict[str, float]) -> None:
    """Every fitted step's k_inst is within 2.5 standard errors of the truth, or nearly."""
    assert normal["k_inst_within_2_5_se_fraction"] >= 0.9


def test_normal_healing_has_no_false_phase_change_or_flag(normal: dict[str, float]) -> None:
    """Normal healing goes latency -> distraction -> consolidation with no anomaly flag."""
    assert normal["phase_changes"] == 2.0
    assert normal["false_flags"] == 0.0


@pytest.mark.parametrize(
    ("scenario", "days"),
    [
        ("nonunion", 9.0),
        ("separation", 14.0),
        ("loosening", 22.0),
    ],
    ids=["nonunion", "separation", "loosening"],
)
def test_anomaly_is_recognised_within_two_days(scenario: str, days: float) -> None:
    """The scenario's anomaly flag appears within 2 days of onset and not before."""
    figures = accuracy(scenario, target_mm=10.0, days=days)
    assert figures["detect_delay_days"] <= 2.0
    assert figures["false_flags"] == 0.0
