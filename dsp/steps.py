"""Step response: the step's geometry, stiffness, relaxation time constants and residual force
of every distraction step or probe, estimated in streaming from frames of force and displacement.

For each step the tracker keeps, per device and in fixed-size state, a ring of 0.25 s bins of
the last seconds (force and displacement) and, while the step's window is open, at most 60 bins
of the window: the ring's bins from `lead_s` before the event on, then bins that widen
geometrically to `window_s` after it. When the window closes (its end, the next step, a data
gap, or a flush) the step's onset, ramp time and size are measured from the displacement (the
event's time and size are hints), and the force is fitted with the two-term Prony relaxation of
Bachmeier 2022 (J Mech Behav Biomed Mater 105133) convolved with the ramp the step really had:
G(t) = k (a_inf + a_f e^(-t/tau_f) + a_s e^(-t/tau_s)) per mm, by Boltzmann superposition.
The window's layout and the fit's settings are `StepConfig` (dsp/stepconfig.py); this module
keeps the per-device state, the pool of open windows and the estimates read from the fit.
docs/dsp.md defines every reported quantity.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from dsp import _kernels as kern
from dsp.checks import as_float_array, check_rate
from dsp.rows import DeviceRows
from dsp.stepconfig import StepConfig

__all__ = [
    "STEP_VERSION",
    "StepConfig",  # defined in dsp.stepconfig, exported here too: dsp.estimator imports it here
    "StepEstimate",
    "StepTracker",
    "step_response",
]

STEP_VERSION = "dsp.steps/2"

CloseReason = Literal["window", "next_step", "gap", "flush"]
FitStatus = Literal["ok", "short", "tau_at_bound", "no_data"]

_STATUS: dict[int, FitStatus] = {
    kern.FIT_OK: "ok",
    kern.FIT_SHORT: "short",
    kern.FIT_TAU_AT_BOUND: "tau_at_bound",
    kern.FIT_NO_DATA: "no_data",
}

_PRE_BIN_NS = kern.PRE_BIN_NS
_MODEL_FLOOR = 0.005  # relative standard error of k_inst never below this (see _close)


@dataclass(frozen=True, kw_only=True)
class StepEstimate:
    """What one distraction step or probe tells about the regenerate.

    The fitted force is F(t) = f_residual_n + A_inf u(t) + A_f r_f(t) + A_s r_s(t): u the
    ramp (0 before the onset, 1 after the ramp), r the ramp response of each relaxation term.
    Every estimate satisfies, to rounding:
    k_inst_n_per_mm * delta_mm = f_inst_n - f_residual_n,
    k_peak_n_per_mm * delta_mm = f_peak_n - f_residual_n,
    k_eq_n_per_mm * delta_mm = f_settled_n - f_residual_n.

    Attributes:
        t_step_ns: time of the step event (UTC epoch ns): the estimate's identity.
        t_onset_ns: onset of the elongation, measured from the displacement (ns).
        ramp_s: duration of the elongation ramp, measured (s); 0 is a sudden step.
        delta_mm: step size measured from the displacement (mm).
        delta_event_mm: step size the event announced (mm).
        k_inst_n_per_mm: sudden-step-equivalent stiffness (N/mm): the force a sudden step of
            delta_mm would have raised at once, (A_inf + A_f + A_s) / delta_mm; independent
            of how fast the device moved.
        k_inst_std_n_per_mm: standard error of k_inst_n_per_mm (N/mm): the fit's, the force
            before's, and the spread the time constants the data cannot exclude give; NaN
            when there is no fit.
        k_peak_n_per_mm: observed-peak stiffness (N/mm), (f_peak_n - f_residual_n) / delta_mm:
            what the tissue answered at the end of this ramp (lower for slower ramps).
        k_eq_n_per_mm: equilibrium stiffness (N/mm), A_inf / delta_mm.
        k_eq_std_n_per_mm: its standard error (N/mm): the fit's at the fitted time constants
            and the force before's; NaN when there is no fit. A regenerate that keeps little
            force after relaxing (a_inf ~ 0.003 at the first steps) has a k_eq within it.
        tau_fast_s, tau_slow_s: relaxation time constants (s).
        f_residual_n: force before the step (N): trimmed mean of pre_s seconds before the
            window.
        f_peak_n: observed peak (N): the fitted curve at the ramp's end.
        f_inst_n: sudden-step-equivalent peak (N): f_residual_n + A_inf + A_f + A_s.
        f_settled_n: settled force (N): f_residual_n + A_inf, which a long tau_slow may put
            beyond the window.
        fit_rmse_n: RMS residual of the bin means about the fitted curve, sample-weighted (N).
        fit_r2: share of the window's variance after the onset the fit explains.
        fit_status: "ok", "short" (observed for less than min_span_s after the ramp),
            "tau_at_bound" (a fitted time constant on its grid edge) or "no_data" (too few bins;
            fitted fields are NaN).
        closed_by: what ended the window: "window", "next_step", "gap" or "flush".
        flags: sorted; "tau_fast_held" (tau_fast not identifiable at this rate and ramp: held
            at tau_fast_held_s, the standard error widened over the plausible range),
            "onset_uncertain" (the displacement did not show the step, or no sample came
            before its onset: the event's time and size stand in), "ramp_mismatch" (the
            measured onset or size disagrees with the event), "poor_fit" (R^2 below
            min_fit_r2), "cut_short" (closed early and observed for less than min_span_s).
        n_samples: samples in the window.
        t_start_ns: start of the input used: the force average before the window (ns).
        t_end_ns: time of the last sample in the window (ns); -1 if it got none.
        version: estimator version.
    """

    t_step_ns: int
    t_onset_ns: int
    ramp_s: float
    delta_mm: float
    delta_event_mm: float
    k_inst_n_per_mm: float
    k_inst_std_n_per_mm: float
    k_peak_n_per_mm: float
    k_eq_n_per_mm: float
    k_eq_std_n_per_mm: float
    tau_fast_s: float
    tau_slow_s: float
    f_residual_n: float
    f_peak_n: float
    f_inst_n: float
    f_settled_n: float
    fit_rmse_n: float
    fit_r2: float
    fit_status: FitStatus
    closed_by: CloseReason
    flags: tuple[str, ...]
    n_samples: int
    t_start_ns: int
    t_end_ns: int
    version: str = STEP_VERSION


@dataclass
class StepTracker(DeviceRows):
    """Streaming step-response estimator for `n_devices` devices, indexed 0..n_devices-1.

    Per device: call `event` for each distraction step or probe and `frame` for each frame, in
    time order per device; `frame` returns the estimates of the windows it closed. An event may
    arrive before the frame that contains it; an event older than samples already processed
    opens its window late (the samples in between are lost for that step).

    State: two fixed-size rows per device (`float_state`, `int_state`), 1,080 bytes together,
    plus a window slot (a row of `bins`, 2.8 KiB) held only while the device's window is open.
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
        self.float_state[:, kern.SF_DT_S] = np.nan
        self._c_s, self._h = self.config.bin_shape
        self._log_tau_fast, self._log_tau_slow = self.config.log_tau_grids()
        self._log_plausible = np.log(np.array(self.config.tau_fast_plausible_s))

    def window_bins(self, device: int) -> NDArray[np.float64] | None:
        """The bins of the device's open window, one row per bin of (sum_n, sum_t_s, count,
        min_n, max_n, sum_mm) (N, s, samples, N, N, mm; the times are from each linear bin's
        own start, from the event in the widening bins); None if it holds no window."""
        slot = int(self.int_state[device, kern.SI_SLOT])
        if slot < 0:
            return None
        n_bins = self.config.n_bins
        return self.bins[slot, : kern.BIN_LEN * n_bins].reshape(n_bins, kern.BIN_LEN)

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

    def copy_rows_to(self, other: DeviceRows) -> None:
        """Copy every device's rows into `other`, a larger tracker that replaces this one,
        which takes over the pool of open windows as it is."""
        super().copy_rows_to(other)
        if isinstance(other, StepTracker):
            other.set_windows(self.windows())

    def windows(self) -> dict[str, NDArray[Any]]:
        """The pool of open step windows: its slots' bins, each slot's device (-1 free) and
        the free slots, lowest last."""
        return {
            "bins": self.bins,
            "slot_owner": self._slot_owner,
            "free": np.array(self._free, dtype=np.int64),
        }

    def set_windows(self, windows: Mapping[str, NDArray[Any]]) -> None:
        """Take over a pool of open windows (`windows()` of a tracker with the same rows).

        Raises:
            ValueError: the bins do not have this tracker's slot layout.
        """
        bins = windows["bins"]
        if bins.ndim != 2 or bins.shape[1:] != self.bins.shape[1:]:
            raise ValueError(f"step windows are {bins.shape}, not (n, {self.bins.shape[1]})")
        self.bins = np.array(bins, dtype=np.float64)
        self._slot_owner = np.array(windows["slot_owner"], dtype=np.int64)
        self._free = [int(slot) for slot in windows["free"]]

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
        disp_mm: NDArray[np.floating] | list[float],
        t0_ns: int,
        rate_hz: float,
    ) -> list[StepEstimate]:
        """Process one frame of force and displacement samples.

        Args:
            device: device index.
            force_n: force samples (N); non-finite samples are skipped.
            disp_mm: displacement samples (mm), same length.
            t0_ns: time of the first sample (UTC epoch ns).
            rate_hz: sample rate (Hz).

        Returns:
            The estimates of the windows this frame closed, oldest first.
        """
        force = as_float_array("force_n", force_n)
        disp = as_float_array("disp_mm", disp_mm)
        if force.shape != disp.shape:
            raise ValueError(f"force_n has {force.size} samples, disp_mm {disp.size}")
        dt_ns = check_rate(rate_hz)
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
            self._push(
                fs, si, force[start:k_ev], disp[start:k_ev], t0_ns + round(start * dt_ns), dt_ns
            )
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

    def _push(  # noqa: PLR0917 - a run's columns and its clock
        self,
        fs: NDArray[np.float64],
        si: NDArray[np.int64],
        force: NDArray[np.float64],
        disp: NDArray[np.float64],
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
            disp,
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
        cfg = self.config
        kern._step_open(
            fs, si, self.bins[slot], t_ev, delta, _PRE_BIN_NS, cfg.pre_bins, cfg.lead_bins,
            cfg.n_bins,
        )  # fmt: skip

    def _close(self, device: int, reason: CloseReason) -> StepEstimate:
        fs, si = self.float_state[device], self.int_state[device]
        cfg = self.config
        res = np.empty(kern.STEP_RESULT_LEN)
        kern._step_fit(
            fs,
            self.bins[int(si[kern.SI_SLOT])],
            cfg.n_bins,
            cfg.min_span_s,
            self._log_tau_fast,
            self._log_tau_slow,
            cfg.min_tau_ratio,
            cfg.refine_rounds,
            cfg.tau_fast_held_s,
            self._log_plausible,
            res,
        )
        si[kern.SI_MODE] = kern.MODE_IDLE
        self._release(device)
        t_step = int(si[kern.SI_T_STEP])
        delta_event = float(fs[kern.SF_DELTA_MM])
        delta = float(res[kern.R_DELTA])
        f_before = float(res[kern.R_F_BEFORE])
        f_peak, f_inst = float(res[kern.R_F_PEAK]), float(res[kern.R_F_INST])
        f_settled = float(res[kern.R_F_SETTLED])
        t_on_s, ramp_s = float(res[kern.R_T_ON]), float(res[kern.R_RAMP])
        status = _STATUS[int(res[kern.R_STATUS])]
        # The force before the step is a mean of n_before samples with the fit's noise.
        n_before = float(fs[kern.SF_N_BEFORE])
        noise_var = float(res[kern.R_NOISE_VAR])
        var = float(res[kern.R_SUM_VAR]) + noise_var / n_before if n_before > 0.0 else math.nan
        # The binned fit's own approximations (trimmed means on curved bins, a step placed on
        # the sample grid) are worth up to ~0.5 % of the sum on noise-free steps: the floor.
        var = max(var, (_MODEL_FLOOR * (f_inst - f_before)) ** 2)
        eq_var = float(res[kern.R_A_INF_VAR]) + noise_var / n_before if n_before > 0.0 else math.nan
        geometry = int(res[kern.R_FLAGS])
        flags: set[str] = set()
        if geometry & kern.GEOM_TAU_FAST_HELD:
            flags.add("tau_fast_held")
        if geometry & kern.GEOM_ONSET_UNCERTAIN:
            flags.add("onset_uncertain")
        elif abs(t_on_s) > cfg.onset_tolerance_s or abs(delta - delta_event) > (
            cfg.delta_tolerance * abs(delta_event)
        ):
            flags.add("ramp_mismatch")
        if status != "no_data" and not float(res[kern.R_R2]) >= cfg.min_fit_r2:
            flags.add("poor_fit")
        if reason != "window" and status == "short":
            flags.add("cut_short")
        key_w = int(si[kern.SI_KEY_W])
        return StepEstimate(
            t_step_ns=t_step,
            t_onset_ns=t_step + round(t_on_s * 1e9),
            ramp_s=ramp_s,
            delta_mm=delta,
            delta_event_mm=delta_event,
            k_inst_n_per_mm=(f_inst - f_before) / delta,
            k_inst_std_n_per_mm=math.sqrt(var) / abs(delta) if var >= 0.0 else math.nan,
            k_peak_n_per_mm=(f_peak - f_before) / delta,
            k_eq_n_per_mm=(f_settled - f_before) / delta,
            k_eq_std_n_per_mm=math.sqrt(eq_var) / abs(delta) if eq_var >= 0.0 else math.nan,
            tau_fast_s=float(res[kern.R_TAU_FAST]),
            tau_slow_s=float(res[kern.R_TAU_SLOW]),
            f_residual_n=f_before,
            f_peak_n=f_peak,
            f_inst_n=f_inst,
            f_settled_n=f_settled,
            fit_rmse_n=float(res[kern.R_RMSE]),
            fit_r2=float(res[kern.R_R2]),
            fit_status=status,
            closed_by=reason,
            flags=tuple(sorted(flags)),
            n_samples=int(si[kern.SI_N_SAMPLES]),
            t_start_ns=(key_w - cfg.pre_bins) * _PRE_BIN_NS,
            t_end_ns=int(si[kern.SI_T_WIN_LAST]),
        )


def step_response(  # noqa: PLR0917 - a recording's columns and its step
    force_n: NDArray[np.floating] | list[float],
    disp_mm: NDArray[np.floating] | list[float],
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
        disp_mm: displacement samples (mm), same length.
        t0_ns: time of the first sample (UTC epoch ns).
        rate_hz: sample rate (Hz).
        t_step_ns: the step event's time (UTC epoch ns).
        delta_mm: the step displacement the event announced (mm).
        config: estimator settings; defaults if None.

    Returns:
        The step's estimate; closed_by is "window" if the recording covers the whole window,
        else "flush".
    """
    tracker = StepTracker(1, config or StepConfig())
    tracker.event(0, t_step_ns, delta_mm)
    found = tracker.frame(0, force_n, disp_mm, t0_ns, rate_hz)
    if found:
        return found[0]
    last = tracker.flush(0)
    if last is None:  # the recording ends before the step: nothing was opened
        raise ValueError(f"t_step_ns={t_step_ns} lies after the last sample")
    return last
