"""The step-response estimator's settings and the window they shape.

`StepConfig` holds how long a step's window follows the event, how its bins are laid out (the
ring's 0.25 s bins, then bins that widen geometrically to `window_s`), the grids the fit
searches for the two relaxation time constants, and the tolerances behind the estimate's flags.
It checks them against the kernels' fixed sizes and derives what the tracker hands the kernels:
bin counts, the widening bins' shape and the log-spaced time-constant grids. docs/dsp.md
describes the window and the fit.
"""

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dsp import _kernels as kern

__all__ = ["StepConfig"]

_PRE_BIN_NS = kern.PRE_BIN_NS


def _bin_shape(n_bins: int, first_bin_s: float, window_s: float) -> tuple[float, float]:
    """(c_s, h) of the bin edges c_s * (exp(b h) - 1) with a first bin of first_bin_s and the
    last edge at window_s, found by bisection on h (the edge count grows monotonically in h)."""
    lo, hi = 1e-9, 50.0 / n_bins
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if first_bin_s / mid * math.expm1(n_bins * mid) < window_s:
            lo = mid
        else:
            hi = mid
    h = 0.5 * (lo + hi)
    return first_bin_s / h, h


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    """Settings of the step-response estimator.

    Attributes:
        window_s: how long after the step's event the relaxation is followed (s); the
            recordings keep 10 min after a step.
        pre_s: length of the force average before the window (s).
        lead_s: the window starts this long before the event's time (s), so that an onset
            the hub stamped late (up to `onset_tolerance_s`) is inside it; pre_s + lead_s
            leaves the ring about 0.75 s for an event that arrives after its samples.
        n_bins: bins of the window (at most 60), of which the first 16 are the ring's 0.25 s
            bins; the rest widen geometrically to window_s.
        max_gap_s: a gap in the samples longer than this closes an open window (s).
        min_span_s: a relaxation observed for less than this after the ramp's end is reported
            with status "short".
        tau_fast_grid_s: (min, max, points) of the log-spaced grid for tau_fast (s).
        tau_slow_grid_s: (min, max, points) of the log-spaced grid for tau_slow (s).
        min_tau_ratio: tau_slow is at least this multiple of tau_fast.
        refine_rounds: finer 9x9 grids searched around the best grid point.
        tau_fast_held_s: tau_fast when the data cannot tell it (a ramp of many tau_fast, or a
            rate too low): 0.97 s, Bachmeier 2022's fit.
        tau_fast_plausible_s: the tau_fast range real gap tissue shows, about 0.3 s to several
            seconds across patients and devices (Bachmeier 2022's model, with the spread seen
            across devices): the standard error of a held tau_fast's k_inst spans it.
        onset_tolerance_s: hubs stamp a step within this of its onset (s); a measured onset
            further from the event's time is flagged `ramp_mismatch`.
        delta_tolerance: a measured step size further than this fraction from the announced
            one is flagged `ramp_mismatch`.
        min_fit_r2: a fit explaining less of the window's variance than this is flagged
            `poor_fit`.
    """

    window_s: float = 600.0
    pre_s: float = 2.0
    lead_s: float = 1.0
    n_bins: int = 60
    max_gap_s: float = 60.0
    min_span_s: float = 60.0
    # tau_f ~ 0.97 s and tau_s ~ 68-283 s (Bachmeier 2022): grids with wide margins.
    tau_fast_grid_s: tuple[float, float, int] = (0.05, 20.0, 24)
    tau_slow_grid_s: tuple[float, float, int] = (5.0, 3000.0, 32)
    min_tau_ratio: float = 3.0
    refine_rounds: int = 3
    tau_fast_held_s: float = 0.97
    tau_fast_plausible_s: tuple[float, float] = (0.3, 5.0)
    onset_tolerance_s: float = 0.5
    delta_tolerance: float = 0.25
    min_fit_r2: float = 0.8

    def __post_init__(self) -> None:
        pre_bin_s = _PRE_BIN_NS * 1e-9
        if not (self.pre_s > 0.0 and self.lead_s >= 0.0):
            raise ValueError(f"pre_s={self.pre_s} must be > 0 and lead_s={self.lead_s} >= 0")
        if self.pre_bins + self.lead_bins + 1 > kern.PRE_N:
            raise ValueError(
                f"pre_s + lead_s = {self.pre_s + self.lead_s} s must leave a ring bin free "
                f"(at most {(kern.PRE_N - 1) * pre_bin_s:g} s)"
            )
        if not kern.LIN_N + 2 <= self.n_bins <= kern.STEP_MAX_BINS:
            raise ValueError(
                f"n_bins={self.n_bins} must be in [{kern.LIN_N + 2}, {kern.STEP_MAX_BINS}]"
            )
        if not pre_bin_s * (self.n_bins - kern.LIN_N) < self.window_s:
            raise ValueError(f"window_s={self.window_s} is too short for {self.n_bins} bins")
        for name, (lo, hi, n) in (
            ("tau_fast_grid_s", self.tau_fast_grid_s),
            ("tau_slow_grid_s", self.tau_slow_grid_s),
        ):
            if not (0.0 < lo < hi and n >= 2):
                raise ValueError(f"{name}={(lo, hi, n)} must be 0 < min < max with >= 2 points")
        if self.min_tau_ratio < 1.0 or self.refine_rounds < 0 or self.max_gap_s <= 0.0:
            raise ValueError("min_tau_ratio >= 1, refine_rounds >= 0 and max_gap_s > 0")
        p_lo, p_hi = self.tau_fast_plausible_s
        if not 0.0 < p_lo <= self.tau_fast_held_s <= p_hi:
            raise ValueError("tau_fast_held_s must lie in tau_fast_plausible_s")

    @property
    def pre_bins(self) -> int:
        """Ring bins in the force before the window."""
        return math.ceil(self.pre_s * 1e9 / _PRE_BIN_NS)

    @property
    def lead_bins(self) -> int:
        """Ring bins the window starts before the event's bin."""
        return math.ceil(self.lead_s * 1e9 / _PRE_BIN_NS)

    @property
    def bin_shape(self) -> tuple[float, float]:
        """(c_s, h): the widening bins' edges are c_s * (exp(b * h) - 1) seconds after the
        linear bins."""
        return _bin_shape(self.n_bins - kern.LIN_N, _PRE_BIN_NS * 1e-9, self.window_s)

    def log_tau_grids(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Natural logs of the tau_fast and tau_slow grid points (ln s)."""
        f_lo, f_hi, f_n = self.tau_fast_grid_s
        s_lo, s_hi, s_n = self.tau_slow_grid_s
        return (
            np.linspace(math.log(f_lo), math.log(f_hi), f_n),
            np.linspace(math.log(s_lo), math.log(s_hi), s_n),
        )
