"""The emulator's physics against the published model and plain reference formulas."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from devices.emulator.draws import (
    A_FAST_SCALE_RANGE,
    MANUAL_RAMP_S,
    MOTOR_RAMP_S,
    TAU_FAST_S,
    DevicePhysics,
    draw_physics,
)
from devices.emulator.physics import (
    FIT_MAX_STEP,
    HEALED_RATIO,
    StepTable,
    bachmeier_coefficients,
    gait_load_n,
    load_share,
    prony_force_n,
    ramp_disp_mm,
    regenerate_ratio,
    settled_force_n,
    weight_bearing_load_n,
)

_PIECES = 400


def _reference_force_n(t_s: np.ndarray, steps: StepTable) -> np.ndarray:
    """Obviously-correct sum: numerically integrate each ramp as many tiny instant steps."""
    total = np.zeros_like(t_s)
    for j in range(len(steps)):
        pieces = _PIECES
        starts = steps.t_s[j] + (np.arange(pieces) + 0.5) * steps.ramp_s[j] / pieces
        for start in starts:
            since = t_s - start
            g = (
                steps.a_inf[j]
                + steps.a_fast[j] * np.exp(-np.maximum(since, 0) / steps.tau_fast_s[j])
                + steps.a_slow[j] * np.exp(-np.maximum(since, 0) / steps.tau_slow_s[j])
            )
            share_mm = steps.delta_mm[j] / pieces
            total += np.where(since >= 0, steps.k_inst_n_per_mm[j] * share_mm * g, 0.0)
    return total


def _table(
    t_s: list[float], delta_mm: list[float], ramp_s: float, k: float, step: int
) -> StepTable:
    n = len(t_s)
    coefficients = bachmeier_coefficients(np.full(n, step))
    return StepTable(
        np.array(t_s), np.array(delta_mm), np.full(n, ramp_s), np.full(n, k), *coefficients
    )


@pytest.mark.parametrize(
    ("step", "tau_slow_s"),
    [(1, 67.62), (10, 134.4), (30, 282.8)],
    ids=["step-1", "step-10", "step-30"],
)
def test_slow_time_constant_follows_bachmeier(step: int, tau_slow_s: float) -> None:
    """tau_s = 7.42 i + 60.2 s and tau_f = 0.97 s, as Bachmeier 2022 publishes."""
    _, _, _, tau_fast, tau_slow = bachmeier_coefficients([step])
    assert_allclose(tau_slow, [tau_slow_s], rtol=1e-9)
    assert_allclose(tau_fast, [0.97])


def test_prony_weights_are_a_partition_for_any_step() -> None:
    """For steps 1..1000 the three Prony weights are non-negative and sum to one."""
    a_inf, a_fast, a_slow, _, _ = bachmeier_coefficients(np.arange(1, 1001))
    assert_allclose(a_inf + a_fast + a_slow, 1.0)
    assert min(a_inf.min(), a_fast.min(), a_slow.min()) >= 0.0


def test_coefficients_stop_at_the_fit_limit() -> None:
    """Beyond FIT_MAX_STEP the coefficients stay at their last fitted values."""
    at_limit = bachmeier_coefficients([FIT_MAX_STEP])
    beyond = bachmeier_coefficients([FIT_MAX_STEP * 5])
    for a, b in zip(at_limit, beyond, strict=True):
        assert_allclose(a, b)


@settings(max_examples=15, deadline=None)
# Two steps at once, sampled inside their ramp: the case that sized the tolerance.
@example(starts=[0.0, 0.0], ramp_s=2.625, k=1.0, step=1)
@given(
    starts=st.lists(st.floats(0.0, 400.0), min_size=1, max_size=3),
    ramp_s=st.floats(0.5, 5.0),
    k=st.floats(1.0, 500.0),
    step=st.integers(1, 60),
)
def test_prony_force_matches_the_reference_sum(
    starts: list[float], ramp_s: float, k: float, step: int
) -> None:
    """The closed-form force equals a fine numerical superposition of instant steps."""
    starts = sorted(starts)
    steps = _table(starts, [0.25] * len(starts), ramp_s, k, step)
    t_s = np.linspace(-5.0, 900.0, 301)
    expected = _reference_force_n(t_s, steps)
    # The reference is a midpoint sum of _PIECES instant steps per ramp: inside a ramp it can
    # miss at most one piece's force of each step that is still ramping.
    one_piece_n = k * 0.25 / _PIECES
    assert_allclose(prony_force_n(t_s, steps), expected, rtol=2e-3, atol=one_piece_n * len(starts))


def test_short_ramp_gives_the_step_response() -> None:
    """A near-instant step gives k * delta * (a_inf + a_f e^-t/tf + a_s e^-t/ts)."""
    steps = _table([0.0], [0.5], 1e-6, 40.0, 10)
    t_s = np.array([1.0, 10.0, 100.0, 1000.0])
    a_inf, a_fast, a_slow, tau_f, tau_s = (c[0] for c in bachmeier_coefficients([10]))
    expected = 40.0 * 0.5 * (a_inf + a_fast * np.exp(-t_s / tau_f) + a_slow * np.exp(-t_s / tau_s))
    assert_allclose(prony_force_n(t_s, steps), expected, rtol=1e-5)


def test_force_settles_to_the_equilibrium_sum() -> None:
    """Long after the last step the force equals sum(delta * k_eq)."""
    steps = _table([0.0, 300.0, 700.0], [0.25, 0.25, -0.1], 2.0, 30.0, 20)
    late = prony_force_n(np.array([1e6]), steps)
    assert_allclose(late, [settled_force_n(steps)], rtol=1e-9)
    assert settled_force_n(steps) == pytest.approx(0.4 * 30.0 * steps.a_inf[0])


@pytest.mark.parametrize("factor", [0.19, 0.5], ids=["separation", "half"])
def test_release_scales_only_earlier_steps_after_it(factor: float) -> None:
    """After a release, steps that began before it keep `factor` of their force; later ones all."""
    steps = _table([0.0, 500.0], [0.25, 0.25], 2.0, 50.0, 30)
    t_s = np.array([100.0, 400.0, 600.0])
    first, second = steps.take([0]), steps.take([1])
    got = prony_force_n(t_s, steps, release_at_s=300.0, release_factor=factor)
    expected = prony_force_n(t_s, first) * np.array([1.0, factor, factor])
    expected += prony_force_n(t_s, second)
    assert_allclose(got, expected)


def test_ramp_displacement_is_linear_then_flat() -> None:
    """Elongation rises linearly over the ramp and then stays at delta."""
    steps = _table([10.0], [0.25], 4.0, 1.0, 1)
    t_s = np.array([0.0, 10.0, 11.0, 12.0, 14.0, 100.0])
    assert_allclose(ramp_disp_mm(t_s, steps), [0.0, 0.0, 0.0625, 0.125, 0.25, 0.25])


@pytest.mark.parametrize(
    ("k_reg", "share"), [(0.0, 1.0), (500.0, 0.5), (4500.0, 0.1)], ids=["none", "equal", "ninefold"]
)
def test_load_share_is_the_device_stiffness_fraction(k_reg: float, share: float) -> None:
    """Load share is k_device / (k_device + k_regenerate)."""
    assert float(load_share(500.0, k_reg)) == pytest.approx(share)


@pytest.mark.parametrize("curve", ["sigmoid", "slow", "plateau_then_heal"], ids=str)
def test_healing_curves_reach_ten_percent_on_the_healed_day(curve: str) -> None:
    """Each healing curve rises monotonically and gives a 10 % load share on the healed day."""
    days = np.linspace(0.0, 300.0, 3001)
    ratio = regenerate_ratio(days, curve, consolidation_day=57.0, healed_day=200.0)  # type: ignore[arg-type]
    assert np.all(np.diff(ratio) >= 0.0)
    at_healed = regenerate_ratio([200.0], curve, consolidation_day=57.0, healed_day=200.0)  # type: ignore[arg-type]
    assert_allclose(at_healed, [HEALED_RATIO], rtol=1e-9)
    assert float(load_share(1.0, ratio[0])) > 0.98


def test_non_healing_curve_never_lets_the_regenerate_take_over() -> None:
    """The non-healing curve keeps load share above 70 % for a year."""
    days = np.linspace(0.0, 365.0, 366)
    ratio = regenerate_ratio(days, "non_healing", consolidation_day=57.0, healed_day=200.0)
    assert load_share(1.0, ratio).min() > 0.7


def test_weight_bearing_test_is_a_trapezoid() -> None:
    """The scale load ramps up, holds at the test load and ramps back to zero."""
    t_s = np.array([0.0, 11.5, 13.0, 20.0, 24.5, 30.0])
    load = weight_bearing_load_n(t_s, 10.0, load_n=200.0, ramp_s=3.0, hold_s=10.0)
    assert_allclose(load, [0.0, 100.0, 200.0, 200.0, 100.0, 0.0])


def test_gait_loads_only_in_stance_within_the_bout() -> None:
    """Walking loads the limb with a half-sine in stance, nothing in swing or outside the bout."""
    t_s = np.array([-1.0, 0.33, 0.9, 61.0])
    load = gait_load_n(t_s, 0.0, duration_s=60.0, peak_n=600.0)
    assert load[1] == pytest.approx(600.0 * math.sin(math.pi * 0.3 / 0.6), rel=1e-6)
    assert load[0] == load[2] == load[3] == 0.0


# --- per-device draws ---------------------------------------------------------------------------


def _drawn(seed: int, **fixed: float) -> DevicePhysics:
    kwargs: dict[str, float | None] = {
        "step_ramp_s": None,
        "tau_fast_s": None,
        "a_fast_scale": None,
    }
    kwargs.update(fixed)
    return draw_physics(seed=seed, step_source="motor", force_polarity=1.0, **kwargs)


def test_device_physics_is_reproducible_by_seed_and_differs_between_seeds() -> None:
    """The same seed draws the same physics; another seed draws other values."""
    assert _drawn(5) == _drawn(5)
    assert _drawn(5) != _drawn(6)


def test_device_physics_spans_the_ranges() -> None:
    """Over many devices the draws stay inside their ranges and cover most of each."""
    drawn = [_drawn(seed) for seed in range(400)]
    ramps = np.array([p.step_ramp_s for p in drawn])
    manual = np.array([p.manual_ramp_s for p in drawn])
    taus = np.array([p.tau_fast_s for p in drawn])
    scales = np.array([p.a_fast_scale for p in drawn])
    for values, (lo, hi) in [
        (ramps, MOTOR_RAMP_S),
        (manual, MANUAL_RAMP_S),
        (taus, TAU_FAST_S),
        (scales, A_FAST_SCALE_RANGE),
    ]:
        assert lo <= values.min() < lo * 1.3
        assert hi / 1.3 < values.max() <= hi
    # Log-uniform: as many drives under 6 s as above (the geometric middle of 0.3 .. 120 s).
    assert 0.4 < np.mean(ramps < math.sqrt(0.3 * 120.0)) < 0.6
    # Bachmeier 2022's a_f at step 1, scaled: from about 0.1 to about 0.7.
    a_fast_1 = np.array([bachmeier_coefficients([1], a_fast_scale=s)[1][0] for s in scales])
    assert a_fast_1.min() < 0.12
    assert a_fast_1.max() > 0.65


def test_configured_physics_is_taken_and_moves_no_other_draw() -> None:
    """A value set in the config replaces its draw and leaves the other draws as they were."""
    fixed = _drawn(9, step_ramp_s=2.0)
    assert fixed.step_ramp_s == 2.0
    assert (fixed.tau_fast_s, fixed.a_fast_scale) == (_drawn(9).tau_fast_s, _drawn(9).a_fast_scale)


def test_manual_devices_turn_in_a_fraction_of_a_second() -> None:
    """A manually turned device's steps ramp within the manual range."""
    physics = draw_physics(
        seed=3,
        step_source="manual",
        step_ramp_s=None,
        tau_fast_s=None,
        a_fast_scale=None,
        force_polarity=1.0,
    )
    assert MANUAL_RAMP_S[0] <= physics.step_ramp_s <= MANUAL_RAMP_S[1]


def test_scaled_coefficients_keep_the_published_trends() -> None:
    """Scaling a_f and setting tau_f keep a_inf, tau_s and the weights' sum of Bachmeier 2022."""
    i = np.arange(1, 41)
    a_inf, a_fast, a_slow, tau_f, tau_s = bachmeier_coefficients(
        i, tau_fast_s=2.5, a_fast_scale=0.2
    )
    p_inf, p_fast, _, _, p_tau_s = bachmeier_coefficients(i)
    assert_allclose(a_inf, p_inf)
    assert_allclose(tau_s, p_tau_s)
    assert_allclose(a_fast, 0.2 * p_fast)
    assert_allclose(a_inf + a_fast + a_slow, 1.0)
    assert_allclose(tau_f, 2.5)
    assert np.all(np.diff(a_fast) < 0)
