"""Load share during weight-bearing tests: the fraction of a known reference load (the patient
standing on a scale) that goes through the device.

Between load_test_start and load_test_end the tracker keeps running co-moments of the reference
load and the device force; the share is the least-squares slope of force on reference load, so
the force the device carries at rest (its intercept) does not count. The device carries
compression, and weight-bearing adds to it as the distraction steps do: the share lies between
0 and 1 (springs in parallel); a share outside that is a wrong sign, a wrong channel or a bad
test, never a healed bone. Clinically the frame comes off when the share is below 10 % (Aarnes
2005, J Orthop Res).
"""

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from dsp import _kernels as kern
from dsp.checks import as_float_array, check_rate
from dsp.rows import DeviceRows

__all__ = [
    "LOADSHARE_VERSION",
    "LoadShareEstimate",
    "LoadShareTracker",
    "load_share",
]

LOADSHARE_VERSION = "dsp.loadshare/2"

LoadShareStatus = Literal["ok", "too_few_samples", "no_load_variation"]

_NO_END = np.iinfo(np.int64).max


@dataclass(frozen=True, kw_only=True)
class LoadShareEstimate:
    """The share of a reference load the device carried during one test.

    Attributes:
        share: d(force_n) / d(ref_load_n), dimensionless (1 = all of the load).
        share_std: standard error of the share, from the regression residuals.
        f_offset_n: device force at zero reference load (N).
        r2: share of the force variance the load explains.
        resid_sd_n: standard deviation of the force about the fitted line (N): what the load
            does not explain (noise, and anything else the patient did during the test).
        ref_range_n: max - min of the reference load during the test (N).
        status: "ok", "too_few_samples" (fewer than 3 pairs) or "no_load_variation" (the
            reference load did not vary, so no slope exists); share is NaN unless "ok".
        n_samples: finite sample pairs used.
        t_start_ns: first pair used (ns); -1 if none.
        t_end_ns: last pair used (ns); -1 if none.
        version: estimator version.
    """

    share: float
    share_std: float
    f_offset_n: float
    r2: float
    resid_sd_n: float
    ref_range_n: float
    status: LoadShareStatus
    n_samples: int
    t_start_ns: int
    t_end_ns: int
    version: str = LOADSHARE_VERSION


def _estimate(lf: NDArray[np.float64], li: NDArray[np.int64]) -> LoadShareEstimate:
    n = float(lf[kern.LF_N])
    c_rr, c_rf, c_ff = (float(v) for v in lf[kern.LF_C_RR : kern.LF_C_FF + 1])
    ref_range = float(lf[kern.LF_MAX_REF] - lf[kern.LF_MIN_REF]) if n else math.nan
    status: LoadShareStatus = "ok"
    if n < 3:
        status = "too_few_samples"
    # A reference load flat to within rounding carries no slope.
    elif not c_rr > 1e-12 * max(1.0, n * float(lf[kern.LF_MEAN_REF]) ** 2):
        status = "no_load_variation"
    share = share_std = offset = r2 = resid_sd = math.nan
    if status == "ok":
        slope = c_rf / c_rr
        ss_res = max(c_ff - c_rf * c_rf / c_rr, 0.0)
        share = slope
        resid_sd = math.sqrt(ss_res / (n - 2.0))
        share_std = resid_sd / math.sqrt(c_rr)
        offset = float(lf[kern.LF_MEAN_F]) - slope * float(lf[kern.LF_MEAN_REF])
        r2 = 1.0 - ss_res / c_ff if c_ff > 0.0 else math.nan
    return LoadShareEstimate(
        share=share,
        share_std=share_std,
        f_offset_n=offset,
        r2=r2,
        resid_sd_n=resid_sd,
        ref_range_n=ref_range,
        status=status,
        n_samples=int(n),
        t_start_ns=int(li[kern.LI_T_FIRST]),
        t_end_ns=int(li[kern.LI_T_LAST]),
    )


@dataclass
class LoadShareTracker(DeviceRows):
    """Streaming load-share estimator for `n_devices` devices, indexed 0..n_devices-1.

    Call `start` at load_test_start, `frame` for each frame (samples outside a test are
    ignored), and `end` at load_test_end to get the estimate.
    """

    n_devices: int
    float_state: NDArray[np.float64] = field(init=False, repr=False)
    int_state: NDArray[np.int64] = field(init=False, repr=False)
    _begin_ns: NDArray[np.int64] = field(init=False, repr=False)
    _end_ns: NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise ValueError(f"n_devices={self.n_devices} must be >= 1")
        self.float_state = np.zeros((self.n_devices, kern.LS_FLOAT_LEN))
        self.int_state = np.full((self.n_devices, kern.LS_INT_LEN), -1, dtype=np.int64)
        # No test open: an empty interval.
        self._begin_ns = np.full(self.n_devices, _NO_END, dtype=np.int64)
        self._end_ns = np.full(self.n_devices, _NO_END, dtype=np.int64)

    def rows(self) -> dict[str, NDArray[Any]]:
        """The co-moment rows and each device's test bounds (ns)."""
        return super().rows() | {"begin_ns": self._begin_ns, "end_ns": self._end_ns}

    def start(self, device: int, t_ns: int) -> None:
        """Begin a load test at t_ns (UTC epoch ns); any unfinished test is discarded."""
        self.float_state[device] = 0.0
        self.int_state[device] = -1
        self._begin_ns[device] = t_ns
        self._end_ns[device] = _NO_END

    def frame(
        self,
        device: int,
        force_n: NDArray[np.floating] | list[float],
        ref_load_n: NDArray[np.floating] | list[float],
        t0_ns: int,
        rate_hz: float,
    ) -> None:
        """Add a frame's sample pairs that fall inside the open test.

        Args:
            device: device index.
            force_n: device force (N).
            ref_load_n: reference load (N), same length; pairs with a non-finite value are
                skipped.
            t0_ns: time of the first sample (UTC epoch ns).
            rate_hz: sample rate (Hz).
        """
        force = as_float_array("force_n", force_n)
        ref = as_float_array("ref_load_n", ref_load_n)
        if force.shape != ref.shape:
            raise ValueError(f"force_n has {force.size} samples, ref_load_n {ref.size}")
        dt_ns = check_rate(rate_hz)
        if force.size:
            kern._loadshare_push(
                self.float_state[device],
                self.int_state[device],
                force,
                ref,
                t0_ns,
                dt_ns,
                int(self._begin_ns[device]),
                int(self._end_ns[device]),
            )

    def estimate(self, device: int) -> LoadShareEstimate:
        """The estimate over the test so far (or the last finished test)."""
        return _estimate(self.float_state[device], self.int_state[device])

    def end(self, device: int, t_ns: int) -> LoadShareEstimate:
        """End the load test at t_ns (UTC epoch ns); later samples no longer count.

        Samples of the test that arrive after `end` (in a late frame) are still added if
        their time is before t_ns; call `estimate` again to include them.
        """
        self._end_ns[device] = t_ns
        return self.estimate(device)


def load_share(
    force_n: NDArray[np.floating] | list[float],
    ref_load_n: NDArray[np.floating] | list[float],
) -> LoadShareEstimate:
    """Load share over whole arrays at once (the batch form; every pair is in the test).

    Args:
        force_n: device force (N).
        ref_load_n: reference load (N).

    Returns:
        The estimate; t_start_ns/t_end_ns count sample indices from 0 in ns at 1 GHz.
    """
    tracker = LoadShareTracker(1)
    tracker.start(0, 0)
    tracker.frame(0, force_n, ref_load_n, 0, 1e9)
    return tracker.end(0, _NO_END)
