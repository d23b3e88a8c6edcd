"""The estimator's clinical rules as plain functions over one device's values: what each
flag means, testable without a fleet. The estimator's record rooms (`dsp.steprecord`,
`dsp.loadtest`, `dsp.daily`) read the rows and call these.

Sources: separation and loosening signatures from docs/domain.md ("What goes wrong"); the
removal criterion from Aarnes 2005 (J Orthop Res); the load share's physical range from the
springs-in-parallel contract (docs/domain.md, "Signs").
"""

import math
import statistics
from collections.abc import Sequence

__all__ = [
    "is_loosening",
    "is_poor_regenerate",
    "is_separation",
    "qualifies_for_removal",
    "share_flags",
    "steps_sign",
]


def is_separation(
    f_residual_n: float, previous_n: Sequence[float], *, drop: float, min_n: float
) -> bool:
    """A sudden force drop: the force before a step below `drop` of the largest of the
    previous steps' and at least `min_n` (N) lower."""
    if not (math.isfinite(f_residual_n) and previous_n):
        return False
    top = max(previous_n)
    return f_residual_n < drop * top and top - f_residual_n > min_n


def is_poor_regenerate(recent_k_upper_n_per_mm: Sequence[float], *, limit_n_per_mm: float) -> bool:
    """Poor regenerate: the last 4 steps' k_inst below the limit (N/mm) beyond their error,
    judged on the median of their upper ends (k_inst + 2 SE, oldest first).

    A step whose k_inst the data do not pin (a ramp of many fast time constants leaves it to
    the prior, up to +/-100 % off) has a wide upper end and cannot make a healthy regenerate
    read as a poor one; it once did on most days (tests/test_dsp_signs.py). A noisy but
    measured soft regenerate (6 N/mm +/- 10 %) is still caught.
    """
    if len(recent_k_upper_n_per_mm) < 4:
        return False
    return statistics.median(recent_k_upper_n_per_mm[-4:]) < limit_n_per_mm


def is_loosening(k_device_n_per_mm: float, history: Sequence[float], *, drop: float) -> bool:
    """Loosening: the device's own stiffness more than `drop` below the median of its last (up
    to 7, at least 3) tests."""
    if len(history) < 3:
        return False
    return k_device_n_per_mm < (1.0 - drop) * statistics.median(history[-7:])


def steps_sign(recent_k_n_per_mm: Sequence[float], *, min_steps: int) -> int:
    """+1 if the recent distraction steps raised the force (median stiffness > 0), -1 if they
    lowered it, 0 before `min_steps` of them. The estimator passes k_peak: the force observed
    at the ramp's end, whatever a fit makes of the relaxation (a ramp of many fast time
    constants leaves k_inst to the prior; a relaxation cut short, k_eq)."""
    if len(recent_k_n_per_mm) < min_steps:
        return 0
    median = statistics.median(recent_k_n_per_mm)
    return 1 if median > 0.0 else -1 if median < 0.0 else 0


def share_flags(
    share: float,
    share_std: float,
    resid_sd_n: float,
    ref_range_n: float,
    *,
    margin: float,
    max_resid_fraction: float,
    min_load_range_n: float,
) -> set[str]:
    """Why a load test's share may not be used (empty: it may), the device's sign aside:
    "implausible" (outside [-margin, 1 + margin] by 2 SE), "poor_fit" (the force scatters about
    its line by more than max_resid_fraction of the load's range), "low_load_variation"."""
    flags: set[str] = set()
    if share - 2.0 * share_std > 1.0 + margin or share + 2.0 * share_std < -margin:
        flags.add("implausible")
    if resid_sd_n > max_resid_fraction * ref_range_n:
        flags.add("poor_fit")
    if ref_range_n < min_load_range_n:
        flags.add("low_load_variation")
    return flags


def qualifies_for_removal(share: float, share_std: float, *, removal_share: float) -> bool:
    """A usable share whose magnitude lies below removal_share by 2 standard errors: one day's
    test towards readiness (two days are needed). The sign does not enter: a wrongly signed
    device shows the same magnitude, and a healed bone's share of 0 reads a hair either side."""
    return abs(share) + 2.0 * share_std < removal_share
