"""Step response: stiffness, relaxation time constants and residual force of every distraction
step or probe, estimated in streaming from frames of force samples.

For each step the tracker keeps, per device and in fixed-size state, a trimmed-mean force of
the seconds before the step and a relaxation curve reduced to at most 64 bins (narrow just after
the step, wide minutes later). When the window closes (its end, the next step, a data gap, or a
flush) the curve is fitted with the two-term Prony series of Bachmeier 2022 (J Mech Behav Biomed
Mater 105133; see /work/shared/DOMAIN.md): F(t) = a_inf + a_f e^(-t/tau_f) + a_s e^(-t/tau_s).
"""

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from dsp import _kernels as kern

__all__ = [
    "STEP_VERSION",
    "StepConfig",
    "StepEstimate",
    "StepTracker",
    "step_response",
]

STEP_VERSION = "dsp.steps/1"

CloseReason = Literal["window", "next_step", "gap", "flush"]
FitStatus = Literal["ok", "short", "tau_at_bound", "no_data"]

_STATUS: dict[int, FitStatus] = {
    kern.FIT_OK: "ok",
    kern.FIT_SHORT: "short",
    kern.FIT_TAU_AT_BOUND: "tau_at_bound",
    kern.FIT_NO_DATA: "no_data",
}

_PRE_BIN_NS = 250_000_000  # the ring before a step holds 16 bins of 0.25 s: 4 s of history


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
        window_s: how long after a step the relaxation is followed (s); the recordings keep
            10 min after a step.
        pre_s: length of the force average before the step (s), at most 3.75 s.
        n_bins: bins of the relaxation curve (at most 64).
        first_bin_s: width of the first bin after the step (s); later bins widen
            geometrically so that n_bins reach window_s.
        peak_search_s: the peak is looked for in this time after the step (s), which covers a
            motorised step's ramp of a few seconds.
        max_gap_s: a gap in the samples longer than this closes an open window (s).
        min_span_s: a relaxation observed for less than this is reported with status "short".
        tau_fast_grid_s: (min, max, points) of the log-spaced grid for tau_fast (s).
        tau_slow_grid_s: (min, max, points) of the log-spaced grid for tau_slow (s).
        min_tau_ratio: tau_slow is at least this multiple of tau_fast.
        refine_rounds: finer 9x9 grids searched around the best grid point.
        ramp_s: duration of the step's elongation ramp (s); 0 is a sudden step. A motor
            spreads a step over a few seconds (DOMAIN.md), during which the tissue already
            relaxes, so the observed peak is below k_inst * delta; with ramp_s > 0 k_inst is
            taken from a refit from the ramp's end, carried back to an instantaneous step.
        ramp_tau_fast_s: tau_fast held fixed in that refit (s): a ramp of a few tau_fast
            leaves too little of the fast term to estimate its time constant, so the
            published 0.97 s (Bachmeier 2022, DOMAIN.md) is used.
    """

    window_s: float = 600.0
    pre_s: float = 2.0
    n_bins: int = 64
    first_bin_s: float = 0.05
    peak_search_s: float = 10.0
    max_gap_s: float = 60.0
    min_span_s: float = 60.0
    # tau_f ~ 0.97 s and tau_s ~ 68-283 s (Bachmeier 2022, DOMAIN.md): grids with wide margins.
    tau_fast_grid_s: tuple[float, float, int] = (0.05, 20.0, 24)
    tau_slow_grid_s: tuple[float, float, int] = (5.0, 3000.0, 32)
    min_tau_ratio: float = 3.0
    refine_rounds: int = 3
    ramp_s: float = 0.0
    ramp_tau_fast_s: float = 0.97

    def __post_init__(self) -> None:
        if not 0.0 < self.pre_s <= (kern.PRE_N - 1) * _PRE_BIN_NS * 1e-9:
            raise ValueError(f"pre_s={self.pre_s} must be in (0, 3.75]")
        if not 2 <= self.n_bins <= kern.STEP_MAX_BINS:
            raise ValueError(f"n_bins={self.n_bins} must be in [2, {kern.STEP_MAX_BINS}]")
        if not 0.0 < self.first_bin_s * self.n_bins < self.window_s:
            raise ValueError(f"first_bin_s={self.first_bin_s} times n_bins must be below window_s")
        for name, (lo, hi, n) in (
            ("tau_fast_grid_s", self.tau_fast_grid_s),
            ("tau_slow_grid_s", self.tau_slow_grid_s),
        ):
            if not (0.0 < lo < hi and n >= 2):
                raise ValueError(f"{name}={(lo, hi, n)} must be 0 < min < max with >= 2 points")
        if self.min_tau_ratio < 1.0 or self.refine_rounds < 0 or self.max_gap_s <= 0.0:
            raise ValueError("min_tau_ratio >= 1, refine_rounds >= 0 and max_gap_s > 0")
        if not (math.isfinite(self.ramp_s) and 0.0 <= self.ramp_s < self.peak_search_s):
            raise ValueError(f"ramp_s={self.ramp_s} must be in [0, peak_search_s)")

    @property
    def bin_shape(self) -> tuple[float, float]:
        """(c_s, h): the bin edges are c_s * (exp(b * h) - 1) seconds after the step."""
        return _bin_shape(self.n_bins, self.first_bin_s, self.window_s)

    def log_tau_grids(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Natural logs of the tau_fast and tau_slow grid points (ln s)."""
        f_lo, f_hi, f_n = self.tau_fast_grid_s
        s_lo, s_hi, s_n = self.tau_slow_grid_s
        return (
            np.linspace(math.log(f_lo), math.log(f_hi), f_n),
            np.linspace(math.log(s_lo), math.log(s_hi), s_n),
        )


@dataclass(frozen=True, kw_only=True)
class StepEstimate:
    """What one distraction step or probe tells about the regenerate.

    Attributes:
        t_step_ns: time of the step event (UTC epoch ns).
        delta_mm: step displacement (mm), as announced by the event.
        k_inst_n_per_mm: step stiffness, (peak force - force before) / delta_mm (N/mm).
        k_inst_std_n_per_mm: standard error of k_inst_n_per_mm (N/mm): the peak's, from the
            fit's covariance at the fitted time constants with the noise taken from its
            residuals, and the force before's, that noise over its sample count; NaN when
            there is no fit.
        k_eq_n_per_mm: equilibrium stiffness, (settled force - force before) / delta_mm (N/mm).
        tau_fast_s: fast relaxation time constant (s).
        tau_slow_s: slow relaxation time constant (s).
        f_residual_n: force just before the step (N): trimmed mean of the last pre_s seconds.
        f_peak_n: peak force (N): the fitted curve at the start of the peak bin.
        f_settled_n: settled force (N): the fitted a_inf, which a long tau_slow may put
            beyond the window.
        fit_rmse_n: RMS residual of the bin means about the fitted curve, sample-weighted (N).
        fit_r2: share of the relaxation's variance the fit explains (1 is perfect).
        fit_status: "ok", "short" (observed for less than min_span_s), "tau_at_bound" (a time
            constant on its grid edge) or "no_data" (too few bins; fitted fields are NaN).
        closed_by: what ended the window: "window", "next_step", "gap" or "flush".
        n_samples: finite samples in the window.
        t_start_ns: start of the input used: the force average before the step (ns).
        t_end_ns: time of the last sample in the window (ns); -1 if it got none.
        version: estimator version.
    """

    t_step_ns: int
    delta_mm: float
    k_inst_n_per_mm: float
    k_inst_std_n_per_mm: float
    k_eq_n_per_mm: float
    tau_fast_s: float
    tau_slow_s: float
    f_residual_n: float
    f_peak_n: float
    f_settled_n: float
    fit_rmse_n: float
    fit_r2: float
    fit_status: FitStatus
    closed_by: CloseReason
    n_samples: int
    t_start_ns: int
    t_end_ns: int
    version: str = STEP_VERSION


def _as_float_array(name: str, values: NDArray[np.floating] | list[float]) -> NDArray[np.float64]:
    arr = np.ascontiguousarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_rate(rate_hz: float) -> float:
    if not (math.isfinite(rate_hz) and rate_hz > 0.0):
        raise ValueError(f"rate_hz={rate_hz} must be positive and finite")
    return 1e9 / rate_hz


@dataclass
class StepTracker:
    """Streaming step-response estimator for `n_devices` devices, indexed 0..n_devices-1.

    Per device: call `event` for each distraction step or probe and `frame` for each frame, in
    time order per device; `frame` returns the estimates of the windows it closed. An event may
    arrive before the frame that contains it; an event older than samples already processed
    opens its window late (the samples in between are lost for that step).

    State: two fixed-size rows per device (`float_state`, `int_state`), 792 bytes together,
    plus a window slot (a row of `bins`, 2.5 KiB) held only while the device's window is open.
    The pool of slots doubles when full and halves when three quarters of it are free.
    """

    n_devices: int
    config: StepConfig = field(default_factory=StepConfig)
    float_state: NDArray[np.float64] = field(init=False, repr=False)
    int_state: NDArray[np.int64] = field(init=False, repr=False)
    bins: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise ValueError(f"n_devices={self.n_devices} must be >= 1")
        self.float_state = np.zeros((self.n_devices, kern.STEP_FLOAT_LEN))
        self.int_state = np.zeros((self.n_devices, kern.STEP_INT_LEN), dtype=np.int64)
        self.int_state[:, kern.SI_T_LAST] = -1
        self.int_state[:, kern.SI_PRE_KEY : kern.SI_PRE_KEY + kern.PRE_N] = -1
        self.int_state[:, kern.SI_SLOT] = -1
        self.bins = np.zeros((1, kern.STEP_BINS_LEN))
        self._slot_owner = np.full(1, -1, dtype=np.int64)  # device holding each slot, -1 free
        self._free = [0]  # free slots, the lowest last
        self._c_s, self._h = self.config.bin_shape
        self._log_tau_fast, self._log_tau_slow = self.config.log_tau_grids()
        self._pre_bins = math.ceil(self.config.pre_s * 1e9 / _PRE_BIN_NS)

    def window_bins(self, device: int) -> NDArray[np.float64] | None:
        """The bins of the device's open window, one row per bin of (sum_n, sum_t_s, count,
        min_n, max_n) (N, s, samples, N, N); None if it holds no window."""
        slot = int(self.int_state[device, kern.SI_SLOT])
        if slot < 0:
            return None
        return self.bins[slot, : 5 * self.config.n_bins].reshape(self.config.n_bins, 5)

    def _acquire(self, device: int) -> int:
        """Give the device a window slot (the one it holds, if any)."""
        slot = int(self.int_state[device, kern.SI_SLOT])
        if slot >= 0:
            return slot
        if not self._free:
            cap = self.bins.shape[0]
            self.bins = np.concatenate([self.bins, np.zeros_like(self.bins)])
            self._slot_owner = np.concatenate([self._slot_owner, np.full(cap, -1, np.int64)])
            self._free = list(range(2 * cap - 1, cap - 1, -1))
        slot = self._free.pop()
        self._slot_owner[slot] = device
        self.int_state[device, kern.SI_SLOT] = slot
        return slot

    def _release(self, device: int) -> None:
        """Return the device's window slot to the pool, and halve the pool when it is mostly
        free, moving the windows still open into its lower half."""
        slot = int(self.int_state[device, kern.SI_SLOT])
        if slot < 0:
            return
        self.int_state[device, kern.SI_SLOT] = -1
        self._slot_owner[slot] = -1
        self._free.append(slot)
        cap = self.bins.shape[0]
        if cap == 1 or cap - len(self._free) > cap // 4:
            return
        half = cap // 2
        low = sorted((s for s in self._free if s < half), reverse=True)
        for high in range(half, cap):
            owner = int(self._slot_owner[high])
            if owner >= 0:
                to = low.pop()
                self.bins[to] = self.bins[high]
                self._slot_owner[to] = owner
                self.int_state[owner, kern.SI_SLOT] = to
        self.bins = self.bins[:half].copy()
        self._slot_owner = self._slot_owner[:half].copy()
        self._free = low

    def _take_windows(self, prev: "StepTracker") -> None:
        """Take over the window slots of `prev`, a smaller tracker this one replaces (its
        rows already copied into this one's first rows)."""
        self.bins, self._slot_owner, self._free = prev.bins, prev._slot_owner, prev._free

    def event(self, device: int, t_ns: int, delta_mm: float) -> None:
        """Announce a distraction step or probe.

        Args:
            device: device index.
            t_ns: time the step starts (UTC epoch ns).
            delta_mm: step displacement (mm), non-zero.
        """
        if not (math.isfinite(delta_mm) and delta_mm != 0.0):
            raise ValueError(f"delta_mm={delta_mm} must be finite and non-zero")
        fs, si = self.float_state[device], self.int_state[device]
        n = int(si[kern.SI_N_PEND])
        if n == kern.PEND_N:
            # Four steps announced within one frame do not happen in treatment: keep the newest.
            si[kern.SI_DROPPED] += 1
            si[kern.SI_PEND_T : kern.SI_PEND_T + n - 1] = si[
                kern.SI_PEND_T + 1 : kern.SI_PEND_T + n
            ]
            fs[kern.SF_PEND_DELTA : kern.SF_PEND_DELTA + n - 1] = fs[
                kern.SF_PEND_DELTA + 1 : kern.SF_PEND_DELTA + n
            ]
            n -= 1
        si[kern.SI_PEND_T + n] = t_ns
        fs[kern.SF_PEND_DELTA + n] = delta_mm
        si[kern.SI_N_PEND] = n + 1

    def frame(
        self,
        device: int,
        force_n: NDArray[np.floating] | list[float],
        t0_ns: int,
        rate_hz: float,
    ) -> list[StepEstimate]:
        """Process one frame of force samples.

        Args:
            device: device index.
            force_n: force samples (N); non-finite samples are skipped.
            t0_ns: time of the first sample (UTC epoch ns).
            rate_hz: sample rate (Hz).

        Returns:
            The estimates of the windows this frame closed, oldest first.
        """
        force = _as_float_array("force_n", force_n)
        dt_ns = _check_rate(rate_hz)
        fs, si = self.float_state[device], self.int_state[device]
        out: list[StepEstimate] = []
        t_last = int(si[kern.SI_T_LAST])
        if (
            si[kern.SI_MODE] == kern.MODE_OPEN
            and t_last >= 0
            and t0_ns - t_last > self.config.max_gap_s * 1e9
        ):
            out.append(self._close(device, "gap"))
        start = 0
        n = force.shape[0]
        while True:
            # The sample index where the next pending step starts; n if not in this frame.
            k_ev = n
            if si[kern.SI_N_PEND] > 0:
                t_ev = int(si[kern.SI_PEND_T])
                k_ev = min(max(math.ceil((t_ev - t0_ns) / dt_ns), start), n)
            self._push(fs, si, force[start:k_ev], t0_ns + round(start * dt_ns), dt_ns)
            if si[kern.SI_MODE] == kern.MODE_COMPLETE:
                out.append(self._close(device, "window"))
            if k_ev >= n:
                break
            if si[kern.SI_MODE] == kern.MODE_OPEN:
                out.append(self._close(device, "next_step"))
            self._open_pending(device)
            start = k_ev
        return out

    def flush(self, device: int) -> StepEstimate | None:
        """Close the device's open window now (e.g. the device went offline or at shutdown).

        Returns:
            The estimate of the closed window, or None if no window was open.
        """
        if self.int_state[device, kern.SI_MODE] == kern.MODE_IDLE:
            return None
        return self._close(device, "flush")

    def _push(
        self,
        fs: NDArray[np.float64],
        si: NDArray[np.int64],
        force: NDArray[np.float64],
        t0_ns: int,
        dt_ns: float,
    ) -> None:
        if force.shape[0] == 0:
            return
        kern._step_push(
            fs,
            si,
            self.bins,
            force,
            t0_ns,
            dt_ns,
            _PRE_BIN_NS,
            self._c_s,
            self._h,
            self.config.n_bins,
            round(self.config.window_s * 1e9),
        )

    def _open_pending(self, device: int) -> None:
        fs, si = self.float_state[device], self.int_state[device]
        t_ev = int(si[kern.SI_PEND_T])
        delta = float(fs[kern.SF_PEND_DELTA])
        n = int(si[kern.SI_N_PEND])
        si[kern.SI_PEND_T : kern.SI_PEND_T + n - 1] = si[kern.SI_PEND_T + 1 : kern.SI_PEND_T + n]
        fs[kern.SF_PEND_DELTA : kern.SF_PEND_DELTA + n - 1] = fs[
            kern.SF_PEND_DELTA + 1 : kern.SF_PEND_DELTA + n
        ]
        si[kern.SI_N_PEND] = n - 1
        slot = self._acquire(device)
        kern._step_open(fs, si, self.bins[slot], t_ev, delta, _PRE_BIN_NS, self._pre_bins)

    def _close(self, device: int, reason: CloseReason) -> StepEstimate:
        fs, si = self.float_state[device], self.int_state[device]
        cfg = self.config
        res = np.empty(kern.STEP_RESULT_LEN)
        wb = self.bins[int(si[kern.SI_SLOT])]
        kern._step_fit(
            fs,
            wb,
            self._c_s,
            self._h,
            cfg.n_bins,
            cfg.peak_search_s,
            cfg.min_span_s,
            self._log_tau_fast,
            self._log_tau_slow,
            cfg.min_tau_ratio,
            cfg.refine_rounds,
            res,
        )
        si[kern.SI_MODE] = kern.MODE_IDLE
        t_step = int(si[kern.SI_T_STEP])
        delta = float(fs[kern.SF_DELTA_MM])
        f_before = float(res[kern.R_F_BEFORE])
        f_peak = float(res[kern.R_F_PEAK])
        f_settled = float(res[kern.R_A_INF])
        pre_start = (t_step // _PRE_BIN_NS - self._pre_bins) * _PRE_BIN_NS
        k_inst = (f_peak - f_before) / delta
        noise_var, peak_var = float(res[kern.R_NOISE_VAR]), float(res[kern.R_PEAK_VAR])
        if cfg.ramp_s > 0.0 and math.isfinite(f_settled):
            fit = _ramp_fit(wb, cfg, self._c_s, self._h)
            if fit is not None:
                k_inst = (_sudden_peak_n(fit, cfg.ramp_s) - f_before) / delta
                noise_var, peak_var = float(fit[7]), float(fit[8])
        # The force before the step is a mean of n_before samples with the same noise.
        n_before = float(fs[kern.SF_N_BEFORE])
        var = peak_var + noise_var / n_before if n_before > 0.0 else math.nan
        k_inst_std = math.sqrt(var) / abs(delta) if var >= 0.0 else math.nan
        self._release(device)
        return StepEstimate(
            t_step_ns=t_step,
            delta_mm=delta,
            k_inst_n_per_mm=k_inst,
            k_inst_std_n_per_mm=k_inst_std,
            k_eq_n_per_mm=(f_settled - f_before) / delta,
            tau_fast_s=float(res[kern.R_TAU_FAST]),
            tau_slow_s=float(res[kern.R_TAU_SLOW]),
            f_residual_n=f_before,
            f_peak_n=f_peak,
            f_settled_n=f_settled,
            fit_rmse_n=float(res[kern.R_RMSE]),
            fit_r2=float(res[kern.R_R2]),
            fit_status=_STATUS[int(res[kern.R_STATUS])],
            closed_by=reason,
            n_samples=int(si[kern.SI_N_SAMPLES]),
            t_start_ns=int(pre_start),
            t_end_ns=int(si[kern.SI_T_WIN_LAST]),
        )


def _ramp_fit(
    wb: NDArray[np.float64], config: StepConfig, c_s: float, h: float
) -> NDArray[np.float64] | None:
    """Refit the relaxation from the end of the ramp on: [a_inf, a_f, a_s, tau_f, tau_s, rss,
    at_bound, noise variance (N^2), variance of the sudden-step peak (N^2)].

    Only bins that start after the ramp are used (a bin holding the ramp's end mixes rising
    and falling force), with the ramp's end as the time origin. None if too few bins remain.
    """
    edges_s = c_s * np.expm1(np.arange(config.n_bins) * h)
    bins = wb[: 5 * config.n_bins].reshape(config.n_bins, 5)
    total, t_sum, count, lo, hi = bins.T
    trim = count >= 4.0  # the kernel's trimmed mean: drop one min and one max per full bin
    n = np.where(trim, count - 2.0, count)
    keep = (count > 0.0) & (edges_s >= config.ramp_s)
    if int(np.count_nonzero(keep)) < kern.MIN_FIT_BINS:
        return None
    mean_n = (np.where(trim, total - lo - hi, total) / np.where(n > 0, n, 1.0))[keep]
    time_s = (t_sum / np.where(count > 0, count, 1.0))[keep] - config.ramp_s
    _, log_slow = config.log_tau_grids()
    # Two points 1 % apart: the grid search needs two, and the refinement stays between them.
    log_fast = math.log(config.ramp_tau_fast_s) + np.array([-0.005, 0.005])
    out = np.empty(9)
    time_s = np.ascontiguousarray(time_s)
    weight = np.ascontiguousarray(n[keep])
    kern._prony_fit(
        time_s,
        np.ascontiguousarray(mean_n),
        weight,
        log_fast,
        log_slow,
        config.min_tau_ratio,
        config.refine_rounds,
        out,
    )
    # Four parameters are fitted here (three amplitudes and tau_slow; tau_fast is held).
    out[7] = out[5] / (time_s.shape[0] - 4)
    tau_f, tau_s = float(out[3]), float(out[4])
    out[8] = kern._prony_peak_var(
        time_s, weight, tau_f, tau_s, 1.0 / _ramp_kept(tau_f, config.ramp_s),
        1.0 / _ramp_kept(tau_s, config.ramp_s), float(out[7]),
    )  # fmt: skip
    return out


def _ramp_kept(tau_s: float, ramp_s: float) -> float:
    """The share of a relaxation term's sudden-step amplitude a linear ramp of ramp_s leaves
    at its end: (tau / T)(1 - e^(-T / tau))."""
    return tau_s / ramp_s * -math.expm1(-ramp_s / tau_s)


def _sudden_peak_n(fit: NDArray[np.float64], ramp_s: float) -> float:
    """The peak force a sudden step would have given (N), from a fit made from a ramp's end.

    A linear ramp of duration T leaves each relaxation term with amplitude
    A (tau / T) (1 - e^(-T / tau)) at its end, A being the sudden-step amplitude.
    """
    peak_n = float(fit[0])
    for amp, tau in ((fit[1], fit[3]), (fit[2], fit[4])):
        peak_n += float(amp) / _ramp_kept(float(tau), ramp_s)
    return peak_n


def step_response(
    force_n: NDArray[np.floating] | list[float],
    t0_ns: int,
    rate_hz: float,
    t_step_ns: int,
    delta_mm: float,
    *,
    config: StepConfig | None = None,
) -> StepEstimate:
    """Estimate one step's response from a whole recording at once (the batch form).

    The result equals what a `StepTracker` fed the same samples in any split into frames
    returns for this step.

    Args:
        force_n: force samples (N), from before the step to the end of its window.
        t0_ns: time of the first sample (UTC epoch ns).
        rate_hz: sample rate (Hz).
        t_step_ns: time the step starts (UTC epoch ns).
        delta_mm: step displacement (mm).
        config: estimator settings; defaults if None.

    Returns:
        The step's estimate; closed_by is "window" if the recording covers the whole window,
        else "flush".
    """
    tracker = StepTracker(1, config or StepConfig())
    tracker.event(0, t_step_ns, delta_mm)
    found = tracker.frame(0, force_n, t0_ns, rate_hz)
    if found:
        return found[0]
    last = tracker.flush(0)
    if last is None:  # the recording ends before the step: nothing was opened
        raise ValueError(f"t_step_ns={t_step_ns} lies after the last sample")
    return last
