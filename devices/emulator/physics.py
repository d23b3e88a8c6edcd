"""The emulator's physics: pure numpy functions of time, with no state and no randomness.

The distractor is an actuator in parallel with the regenerate and the soft tissue. Each step of
elongation loads the tissue, which is viscoelastic: a two-term Prony series (Bachmeier 2022, see
docs/emulator.md and docs/domain.md). Under an external load the device and the regenerate share it
in proportion to their stiffness; the regenerate's stiffness grows along a healing curve.

Times here are float seconds (or days) relative to the osteotomy; the generator converts them
from and to UTC epoch nanoseconds.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "FIT_MAX_STEP",
    "HEALED_RATIO",
    "TAU_FAST_PUBLISHED_S",
    "HealingCurve",
    "StepTable",
    "bachmeier_coefficients",
    "gait_load_n",
    "load_share",
    "prony_force_n",
    "ramp_disp_mm",
    "regenerate_ratio",
    "settled_force_n",
    "weight_bearing_load_n",
]

FloatArray = npt.NDArray[np.float64]

# Bachmeier 2022 (J Mech Behav Biomed Mater 105133), docs/domain.md "What the sensors see":
# F(t)/F0 = a_inf + a_f e^(-t/tau_f) + a_s e^(-t/tau_s), with i the step number.
_TAU_FAST_S = 0.97
_TAU_SLOW_PER_STEP_S = 7.42
_TAU_SLOW_AT_ZERO_S = 60.2
_A_FAST_AT_ZERO = 0.71
_A_FAST_PER_STEP = 0.016
_A_INF_PER_LN_STEP = 0.058
_A_INF_AT_ONE = 0.0034

FIT_MAX_STEP = 40
"""Steps beyond this number take the step-40 coefficients.

Emulator choice: the published a_fast = 0.71 - 0.016 i turns negative after step 44, so the
fit cannot be extrapolated much further; at step 40 a_fast is still 0.07.
"""

HEALED_RATIO = 9.0
"""Regenerate-to-device stiffness ratio at which load share is 1 / (1 + 9) = 10 %.

Below 10 % load share the frame comes off (Aarnes 2005, docs/domain.md "Consolidation").
"""

HealingCurve = Literal["sigmoid", "slow", "plateau_then_heal", "non_healing"]
"""Stiffening shapes seen in instrumented plates (Seide 2012, docs/domain.md "Stiffening shape")."""


TAU_FAST_PUBLISHED_S = _TAU_FAST_S
"""Bachmeier 2022's fast time constant, s: one fit of one model, the default of a device."""


def bachmeier_coefficients(
    step_index: npt.ArrayLike,
    *,
    tau_fast_s: float = _TAU_FAST_S,
    a_fast_scale: float = 1.0,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Return the Prony coefficients of the published relaxation model for each step number.

    The published trends in the step number are kept; a device may have its own fast time
    constant and its own fast share, the published a_fast times `a_fast_scale` (the part taken
    from the fast term goes to the slow one, so a_inf and its trend are unchanged).

    Args:
        step_index: step numbers, 1-based (the first distraction step is 1).
        tau_fast_s: the fast time constant, s (Bachmeier 2022: 0.97 s).
        a_fast_scale: multiplies the published a_fast, 0..1.

    Returns:
        `(a_inf, a_fast, a_slow, tau_fast_s, tau_slow_s)`, arrays shaped like `step_index`;
        the three weights sum to 1, time constants are in seconds.
    """
    i = np.clip(np.asarray(step_index, dtype=np.float64), 1.0, FIT_MAX_STEP)
    a_inf = _A_INF_PER_LN_STEP * np.log(i) + _A_INF_AT_ONE
    a_fast = a_fast_scale * (_A_FAST_AT_ZERO - _A_FAST_PER_STEP * i)
    a_slow = 1.0 - a_inf - a_fast
    tau_fast = np.full_like(i, tau_fast_s)
    tau_slow_s = _TAU_SLOW_PER_STEP_S * i + _TAU_SLOW_AT_ZERO_S
    return a_inf, a_fast, a_slow, tau_fast, tau_slow_s


@dataclass(frozen=True)
class StepTable:
    """Imposed elongations of the tissue (distraction steps or probes), one row per step.

    Each step ramps its elongation linearly over `ramp_s`; the tissue answers with a force
    `k_inst * delta * g(t)` for an instantaneous step, where g is the normalised Prony series.

    Attributes:
        t_s: start of each ramp, s.
        delta_mm: elongation, mm (negative to shorten).
        ramp_s: ramp duration, s, > 0.
        k_inst_n_per_mm: instantaneous stiffness of the tissue at that step, N/mm.
        a_inf, a_fast, a_slow: Prony weights (sum 1).
        tau_fast_s, tau_slow_s: Prony time constants, s.
    """

    t_s: FloatArray
    delta_mm: FloatArray
    ramp_s: FloatArray
    k_inst_n_per_mm: FloatArray
    a_inf: FloatArray
    a_fast: FloatArray
    a_slow: FloatArray
    tau_fast_s: FloatArray
    tau_slow_s: FloatArray

    def __len__(self) -> int:
        return len(self.t_s)

    def take(self, index: npt.ArrayLike) -> "StepTable":
        """Return the rows at `index` (an integer array, a slice-like array or a boolean mask)."""
        pick = np.asarray(index)
        return StepTable(**{name: getattr(self, name)[pick] for name in self.__dataclass_fields__})

    @property
    def k_eq_n_per_mm(self) -> FloatArray:
        """Equilibrium stiffness of each step, N/mm: what is left once relaxation is over."""
        return self.k_inst_n_per_mm * self.a_inf


def ramp_disp_mm(t_s: FloatArray, steps: StepTable) -> FloatArray:
    """Return the elongation imposed by `steps` at times `t_s`, mm.

    Args:
        t_s: sample times, s, 1-D, ascending.
        steps: the steps to sum.

    Returns:
        Sum over steps of `delta_mm * clip((t - t_step) / ramp_s, 0, 1)`, shaped like `t_s`.
    """
    disp = np.zeros_like(t_s)
    for t0_s, ramp_s, delta_mm in zip(
        steps.t_s.tolist(), steps.ramp_s.tolist(), steps.delta_mm.tolist(), strict=True
    ):
        i_start, i_done = np.searchsorted(t_s, [t0_s, t0_s + ramp_s], side="right")
        disp[i_start:i_done] += delta_mm * (t_s[i_start:i_done] - t0_s) / ramp_s
        disp[i_done:] += delta_mm
    return disp


def prony_force_n(
    t_s: FloatArray,
    steps: StepTable,
    *,
    release_at_s: float = math.inf,
    release_factor: float = 1.0,
) -> FloatArray:
    """Return the tissue force answering a sum of ramped steps, closed form, N (tension +).

    For a ramp of rate v = delta / T that has run for d = clip(t - t0, 0, T) seconds, each
    Prony term contributes `a * tau * v * exp(-(t - t0 - d) / tau) * (1 - exp(-d / tau))` and
    the equilibrium term `a_inf * v * d`, all times `k_inst`. As T -> 0 this is the step
    response `k_inst * delta * (a_inf + a_f e^(-t/tau_f) + a_s e^(-t/tau_s))`. A transient is
    left out once it has decayed for 40 time constants (below 1e-17 of its size).

    Args:
        t_s: sample times, s, 1-D, ascending.
        steps: the steps to sum (keep it to the few whose relaxation is still under way; the
            settled rest is `settled_force_n`).
        release_at_s: time of a separation, s: from then on, steps that began before it carry
            only `release_factor` of their force.
        release_factor: the fraction of force kept by earlier steps after `release_at_s`.

    Returns:
        Force at each time in `t_s`, N.
    """
    force = np.zeros_like(t_s)
    for j in range(len(steps)):
        t0_s, ramp_s = float(steps.t_s[j]), float(steps.ramp_s[j])
        scale = float(steps.k_inst_n_per_mm[j] * steps.delta_mm[j] / ramp_s)
        i_start, i_done = np.searchsorted(t_s, [t0_s, t0_s + ramp_s], side="right")
        part = np.zeros(len(t_s) - i_start)
        during_s = t_s[i_start:i_done] - t0_s
        n_ramp = len(during_s)
        part[:n_ramp] = steps.a_inf[j] * during_s
        part[n_ramp:] = steps.a_inf[j] * ramp_s
        for weight, tau_s in (
            (float(steps.a_fast[j]), float(steps.tau_fast_s[j])),
            (float(steps.a_slow[j]), float(steps.tau_slow_s[j])),
        ):
            part[:n_ramp] += weight * tau_s * -np.expm1(-during_s / tau_s)
            i_gone = int(np.searchsorted(t_s, t0_s + ramp_s + 40.0 * tau_s, side="right"))
            after_s = t_s[i_done:i_gone] - (t0_s + ramp_s)
            at_top = weight * tau_s * -math.expm1(-ramp_s / tau_s)
            part[n_ramp : i_gone - i_start] += at_top * np.exp(-after_s / tau_s)
        part *= scale
        if release_factor != 1.0 and t0_s < release_at_s:
            i_release = int(np.searchsorted(t_s, release_at_s)) - i_start
            part[max(i_release, 0) :] *= release_factor
        force[i_start:] += part
    return force


def settled_force_n(steps: StepTable) -> float:
    """Return the force the steps leave once all relaxation is over, N: sum of `delta * k_eq`."""
    return float(np.sum(steps.delta_mm * steps.k_eq_n_per_mm))


def load_share(
    k_device_n_per_mm: npt.ArrayLike, k_regenerate_n_per_mm: npt.ArrayLike
) -> FloatArray:
    """Return the fraction of an external load that goes through the device (0..1).

    Device and regenerate are springs in parallel, so each carries load in proportion to its
    stiffness: `k_device / (k_device + k_regenerate)`.
    """
    k_dev = np.asarray(k_device_n_per_mm, dtype=np.float64)
    return np.asarray(k_dev / (k_dev + np.asarray(k_regenerate_n_per_mm, dtype=np.float64)))


def _logistic(x: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)))


def regenerate_ratio(
    day: npt.ArrayLike,
    curve: HealingCurve,
    *,
    consolidation_day: float,
    healed_day: float,
    start_ratio: float = 0.01,
    end_ratio: float = 20.0,
    nonunion_ratio: float = 0.3,
    plateau_ratio: float = 0.5,
) -> FloatArray:
    """Return the regenerate's stiffness as a multiple of the device's, along a healing curve.

    Every curve starts at `start_ratio` (soft callus, load share ~99 %). The healing curves
    pass `HEALED_RATIO` (load share 10 %) at `healed_day` and tend to `end_ratio`; the
    non-healing curve levels off at `nonunion_ratio` (load share ~77 %).

    Args:
        day: days since the osteotomy.
        curve: the stiffening shape (sigmoid, slow, plateau_then_heal, non_healing).
        consolidation_day: day the distraction ended, days since osteotomy.
        healed_day: day the load share crosses 10 %, days since osteotomy (> consolidation_day).
        start_ratio: ratio before consolidation.
        end_ratio: ratio the healing curves tend to.
        nonunion_ratio: level of the non-healing curve.
        plateau_ratio: level of the plateau in plateau_then_heal.

    Returns:
        `k_regenerate / k_device`, shaped like `day`.
    """
    d = np.asarray(day, dtype=np.float64)
    span_d = max(healed_day - consolidation_day, 1.0)
    # Width as a fraction of the consolidation span: narrow for a clean sigmoid, wide for "slow".
    width_d = span_d * (0.25 if curve == "slow" else 0.12)
    if curve == "non_healing":
        level = _rising(d, consolidation_day, consolidation_day + 0.3 * span_d, width_d, 0.5)
        return np.asarray(start_ratio + (nonunion_ratio - start_ratio) * level)
    if curve == "plateau_then_heal":
        # A quick rise to the plateau in the first fifth of the span, then a late climb.
        early = _rising(d, consolidation_day, consolidation_day + 0.1 * span_d, 0.03 * span_d, 0.5)
        reach = (HEALED_RATIO - plateau_ratio) / (end_ratio - plateau_ratio)
        late = _rising(d, consolidation_day, healed_day, width_d, reach)
        return np.asarray(
            start_ratio + (plateau_ratio - start_ratio) * early + (end_ratio - plateau_ratio) * late
        )
    reach = (HEALED_RATIO - start_ratio) / (end_ratio - start_ratio)
    return np.asarray(
        start_ratio
        + (end_ratio - start_ratio) * _rising(d, consolidation_day, healed_day, width_d, reach)
    )


def _rising(
    d: FloatArray, from_day: float, at_day: float, width_d: float, reach: float
) -> FloatArray:
    """A logistic that is 0 up to `from_day`, `reach` at `at_day`, and tends to 1."""

    def shifted(centre_d: float, x: FloatArray | float) -> FloatArray:
        low = _logistic(np.asarray((from_day - centre_d) / width_d))
        return np.asarray((_logistic(np.asarray((x - centre_d) / width_d)) - low) / (1.0 - low))

    # Bisection on the centre: the value at `at_day` falls as the centre moves later.
    lo, hi = from_day - 50.0 * width_d, at_day + 50.0 * width_d
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(shifted(mid, at_day)) > reach:
            lo = mid
        else:
            hi = mid
    return np.asarray(np.clip(shifted(0.5 * (lo + hi), d), 0.0, 1.0))


def weight_bearing_load_n(
    t_s: FloatArray, start_s: float, *, load_n: float, ramp_s: float, hold_s: float
) -> FloatArray:
    """Return the reference load of a weight-bearing test, N (compressive load positive).

    The patient steps onto the scale over `ramp_s`, stands for `hold_s`, and steps off over
    `ramp_s`: a trapezoid starting at `start_s`.
    """
    rel_s = t_s - start_s
    up = np.clip(rel_s / ramp_s, 0.0, 1.0)
    down = np.clip((ramp_s + hold_s + ramp_s - rel_s) / ramp_s, 0.0, 1.0)
    return np.asarray(load_n * np.minimum(up, down))


def gait_load_n(
    t_s: FloatArray,
    start_s: float,
    *,
    duration_s: float,
    peak_n: float,
    cycle_s: float = 1.1,
    stance_fraction: float = 0.6,
) -> FloatArray:
    """Return the axial load on the operated limb during a walking bout, N (compression +).

    Each gait cycle loads the limb with a half-sine during stance and leaves it unloaded in
    swing. Emulator choice: a 1.1 s cycle with 60 % stance, typical of slow walking.
    """
    rel_s = t_s - start_s
    phase = np.mod(rel_s, cycle_s) / cycle_s
    inside = (rel_s >= 0.0) & (rel_s < duration_s) & (phase < stance_fraction)
    return np.asarray(np.where(inside, peak_n * np.sin(np.pi * phase / stance_fraction), 0.0))
