"""Accuracy of the estimator on emulator output against the emulator's ground truth, and the
bench's section over the independent physics family (tests/physics.py)."""

import argparse
import math
import statistics
from pathlib import Path

import physics
import pytest

from apps.bench import dsp as dsp_bench
from apps.bench.dsp import accuracy, physics_accuracy
from dsp.estimator import DeviceEstimator, EstimatorConfig


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


N_PHYSICS_STEPS = 18
N_PHYSICS_LOADS = 4


@pytest.fixture(scope="module")
def physics_figures() -> dict[str, object]:
    """The bench's physics section over a small family."""
    return physics_accuracy(N_PHYSICS_STEPS, N_PHYSICS_LOADS)


def test_bench_finds_the_repository_physics() -> None:
    """The bench loads tests/physics.py of this checkout, by path."""
    assert Path(physics.__file__).resolve() == dsp_bench.PHYSICS_PATH


def test_physics_section_counts_the_family(physics_figures: dict[str, object]) -> None:
    """The section covers every case: overall, and split by ramp bucket and by rate."""
    assert physics_figures["physics_n_cases"] == N_PHYSICS_STEPS
    assert physics_figures["physics_load_n_cases"] == N_PHYSICS_LOADS
    buckets = [
        physics_figures[f"physics_ramp_{name}_n_cases"] for name, _, _ in physics.RAMP_BUCKETS
    ]
    rates = [physics_figures[f"physics_rate_{rate:g}hz_n_cases"] for rate in physics.RATES_HZ]
    assert sum(buckets) == N_PHYSICS_STEPS  # type: ignore[arg-type]
    assert sum(rates) == N_PHYSICS_STEPS  # type: ignore[arg-type]
    assert physics_figures["physics_load_n_correct"] == 2
    assert physics_figures["physics_load_n_wrong_sign"] == 2


def test_physics_section_equals_the_family_run_directly(physics_figures: dict[str, object]) -> None:
    """The section's errors are those of the same family through a fresh estimator per case."""
    results = physics.run_steps(
        physics.standard_family(N_PHYSICS_STEPS),
        lambda: DeviceEstimator("PHY-0001", EstimatorConfig()),
    )
    k_inst = [r.k_inst_rel_err for r in results]
    assert all(math.isfinite(e) for e in k_inst)
    assert physics_figures["physics_k_inst_median_rel_err"] in {
        statistics.median_low(k_inst),
        statistics.median_high(k_inst),
    }
    assert (
        physics_figures["physics_k_inst_p95_rel_err"]
        == sorted(k_inst)[math.ceil(0.95 * len(k_inst)) - 1]
    )
    assert physics_figures["physics_identity_violations"] == sum(
        r.identity_violations for r in results
    )
    assert physics_figures["physics_n_missing"] == 0


def test_physics_section_says_when_the_generator_is_absent(tmp_path: Path) -> None:
    """Without tests/physics.py (an installed package) the section says so instead of failing."""
    figures = physics_accuracy(3, 1, path=tmp_path / "physics.py")
    assert figures == {"physics_family": "absent"}


def test_bench_run_reports_the_physics_section_beside_the_others() -> None:
    """`osteotel bench dsp` at a tiny size has the physics figures with the kernel figures."""
    parser = argparse.ArgumentParser()
    dsp_bench.configure(parser)
    args = parser.parse_args(
        ["--samples", "2000", "--devices", "3", "--frames-per-device", "2", "--no-accuracy",
         "--physics-steps", "6", "--physics-load-tests", "2"]
    )  # fmt: skip
    figures = dsp_bench.run(args)
    assert figures["physics_n_cases"] == 6
    assert figures["physics_load_n_cases"] == 2
    assert "step_samples_per_s" in figures
