"""Continuous stiffness tracking between steps: recursive least squares with forgetting and
excitation gating on a first-order viscoelastic (standard linear solid) model.

Samples are averaged into blocks of `block_s`; on consecutive blocks the tracker identifies

    F[n] = phi F[n-1] + b (x[n] - x[n-1]) + g (x[n-1] - x_ref) + c

so that k_inst = b (the force per mm of a sudden elongation), k_eq = g / (1 - phi) (the force
per mm once relaxed) and tau = -block_s / ln(phi). Averaging first keeps the noise on F[n-1]
small against the change it carries, which an equation-error fit at the raw rate does not.
An update (and its forgetting) happens only within `hold_s` after the block displacement
moved by more than `excite_mm`: with the distractor still, the data hold nothing about
stiffness and forgetting would only inflate the covariance.
"""

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from dsp import _kernels as kern
from dsp.checks import as_float_array, check_rate
from dsp.rows import DeviceRows

__all__ = [
    "TRACKING_VERSION",
    "StiffnessTrack",
    "StiffnessTracker",
    "TrackingConfig",
    "track_stiffness",
]

TRACKING_VERSION = "dsp.tracking/1"

_CONFIDENCE_REL_STD = 0.05  # the relative std of k_eq at which confidence falls to 1/e


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Settings of the stiffness tracker.

    Attributes:
        block_s: samples are averaged over blocks of this length before identification (s).
        forgetting: RLS forgetting factor per updated block, in (0, 1]; the memory is about
            block_s / (1 - forgetting) seconds of excited data.
        excite_mm: a block displacement this far from the last excitation counts as one (mm).
        hold_s: updates continue this long after an excitation, to see the relaxation (s).
        p0: initial covariance diagonal (large: no prior knowledge).
        sigma_alpha: weight of each new squared prediction error in the noise variance.
    """

    block_s: float = 0.5
    forgetting: float = 0.999
    excite_mm: float = 0.02
    hold_s: float = 120.0
    p0: float = 1e6
    sigma_alpha: float = 0.02

    def __post_init__(self) -> None:
        if not (self.block_s > 0.0 and 0.0 < self.forgetting <= 1.0):
            raise ValueError(f"block_s={self.block_s} must be > 0, forgetting in (0, 1]")
        if not (self.excite_mm > 0.0 and self.hold_s >= 0.0 and self.p0 > 0.0):
            raise ValueError("excite_mm and p0 must be > 0, hold_s >= 0")
        if not 0.0 < self.sigma_alpha <= 1.0:
            raise ValueError(f"sigma_alpha={self.sigma_alpha} must be in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class StiffnessTrack:
    """The tracker's current view of one device's stiffness.

    Attributes:
        k_inst_n_per_mm: instantaneous stiffness b (N/mm).
        k_inst_std_n_per_mm: its standard deviation (N/mm).
        k_eq_n_per_mm: equilibrium stiffness g / (1 - phi) (N/mm).
        k_eq_std_n_per_mm: its standard deviation, to first order (N/mm).
        tau_s: relaxation time constant -block_s / ln(phi) (s); NaN unless 0 < phi < 1.
        noise_n: running RMS of the one-block-ahead prediction error (N).
        confidence: exp(-(k_eq_std / |k_eq|) / 0.05), in [0, 1]; 0 before any update.
        n_updates: blocks that updated the estimate.
        n_blocks: blocks seen.
        t_start_ns: first sample seen (ns); -1 if none.
        t_end_ns: last sample seen (ns); -1 if none.
        version: estimator version.
    """

    k_inst_n_per_mm: float
    k_inst_std_n_per_mm: float
    k_eq_n_per_mm: float
    k_eq_std_n_per_mm: float
    tau_s: float
    noise_n: float
    confidence: float
    n_updates: int
    n_blocks: int
    t_start_ns: int
    t_end_ns: int
    version: str = TRACKING_VERSION


@dataclass
class StiffnessTracker(DeviceRows):
    """Streaming stiffness tracker for `n_devices` devices, indexed 0..n_devices-1.

    State: two fixed-size rows per device (`float_state`, `int_state`), 0.3 KiB together.
    """

    n_devices: int
    config: TrackingConfig = field(default_factory=TrackingConfig)
    float_state: NDArray[np.float64] = field(init=False, repr=False)
    int_state: NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise ValueError(f"n_devices={self.n_devices} must be >= 1")
        self.float_state = np.zeros((self.n_devices, kern.RLS_FLOAT_LEN))
        self.int_state = np.zeros((self.n_devices, kern.RLS_INT_LEN), dtype=np.int64)
        for device in range(self.n_devices):
            self.reset(device)

    def reset(self, device: int) -> None:
        """Forget everything about a device (e.g. after its calibration changed)."""
        kern._rls_reset(self.float_state[device], self.int_state[device], self.config.p0)

    def frame(
        self,
        device: int,
        force_n: NDArray[np.floating] | list[float],
        disp_mm: NDArray[np.floating] | list[float],
        t0_ns: int,
        rate_hz: float,
    ) -> StiffnessTrack:
        """Process one frame and return the updated estimate.

        Args:
            device: device index.
            force_n: force samples (N).
            disp_mm: displacement samples (mm), same length; pairs with a non-finite value
                are skipped.
            t0_ns: time of the first sample (UTC epoch ns).
            rate_hz: sample rate (Hz).

        Returns:
            The estimate after this frame. The block still being filled is not yet in it.
        """
        force = as_float_array("force_n", force_n)
        disp = as_float_array("disp_mm", disp_mm)
        if force.shape != disp.shape:
            raise ValueError(f"force_n has {force.size} samples, disp_mm {disp.size}")
        dt_ns = check_rate(rate_hz)
        cfg = self.config
        if force.size:
            kern._rls_push(
                self.float_state[device],
                self.int_state[device],
                force,
                disp,
                t0_ns,
                dt_ns,
                round(cfg.block_s * 1e9),
                cfg.forgetting,
                cfg.excite_mm,
                round(cfg.hold_s * 1e9),
                cfg.sigma_alpha,
            )
        return self.estimate(device)

    def estimate(self, device: int) -> StiffnessTrack:
        """The device's current estimate, without new data."""
        rf, ri = self.float_state[device], self.int_state[device]
        phi, b, g = (float(v) for v in rf[kern.RF_THETA : kern.RF_THETA + 3])
        p = rf[kern.RF_P : kern.RF_P + kern.RLS_P * kern.RLS_P].reshape(kern.RLS_P, kern.RLS_P)
        n_updates = int(ri[kern.RI_N_UPDATES])
        sigma2 = float(rf[kern.RF_SIGMA2]) if n_updates else math.nan
        k_eq = g / (1.0 - phi) if phi != 1.0 else math.nan
        # First-order propagation of Cov(theta) = sigma^2 P to k_eq = g / (1 - phi).
        grad = np.array([g / (1.0 - phi) ** 2, 0.0, 1.0 / (1.0 - phi), 0.0])
        k_eq_std = math.sqrt(max(sigma2 * float(grad @ p @ grad), 0.0))
        k_inst_std = math.sqrt(max(sigma2 * float(p[1, 1]), 0.0))
        tau = -self.config.block_s / math.log(phi) if 0.0 < phi < 1.0 else math.nan
        rel = k_eq_std / abs(k_eq) if math.isfinite(k_eq) and k_eq != 0.0 else math.inf
        confidence = (
            math.exp(-rel / _CONFIDENCE_REL_STD) if n_updates and not math.isnan(rel) else 0.0
        )
        return StiffnessTrack(
            k_inst_n_per_mm=b if n_updates else math.nan,
            k_inst_std_n_per_mm=k_inst_std,
            k_eq_n_per_mm=k_eq if n_updates else math.nan,
            k_eq_std_n_per_mm=k_eq_std,
            tau_s=tau if n_updates else math.nan,
            noise_n=math.sqrt(sigma2) if not math.isnan(sigma2) else math.nan,
            confidence=confidence,
            n_updates=n_updates,
            n_blocks=int(ri[kern.RI_N_BLOCKS]),
            t_start_ns=int(ri[kern.RI_T_FIRST]),
            t_end_ns=int(ri[kern.RI_T_LAST]),
        )


def track_stiffness(
    force_n: NDArray[np.floating] | list[float],
    disp_mm: NDArray[np.floating] | list[float],
    t0_ns: int,
    rate_hz: float,
    *,
    config: TrackingConfig | None = None,
) -> StiffnessTrack:
    """Track stiffness over a whole recording at once (the batch form of StiffnessTracker).

    Args:
        force_n: force samples (N).
        disp_mm: displacement samples (mm).
        t0_ns: time of the first sample (UTC epoch ns).
        rate_hz: sample rate (Hz).
        config: tracker settings; defaults if None.

    Returns:
        The estimate after the last complete block.
    """
    tracker = StiffnessTracker(1, config or TrackingConfig())
    return tracker.frame(0, force_n, disp_mm, t0_ns, rate_hz)
