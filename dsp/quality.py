"""Signal quality flags of one channel (force or displacement): noise level, flatline,
saturation, spikes and non-finite samples, kept per device in fixed-size state.

Sequence gaps and clock problems are known to ingest, not here; it joins them to this report.
"""

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from dsp import _kernels as kern
from dsp.checks import as_float_array
from dsp.rows import DeviceRows

__all__ = [
    "QUALITY_VERSION",
    "QualityConfig",
    "QualityMonitor",
    "QualityReport",
    "signal_quality",
]

QUALITY_VERSION = "dsp.quality/1"


@dataclass(frozen=True, kw_only=True)
class QualityConfig:
    """Settings of the quality monitor, in the channel's unit (N for force, mm for disp).

    Attributes:
        full_scale: a sample with |value| >= full_scale counts as saturated.
        flat_eps: consecutive samples closer than this count as repeats.
        flat_samples: a run of more repeats than this is a flatline.
        spike_k: a spike is a single sample beyond spike_k noise sigmas from both neighbours.
        noise_alpha: weight of each new squared difference in the running noise variance.
    """

    # A placeholder above the forces reported (frames failed beyond 1000 N, docs/domain.md); the
    # caller passes the device's real full scale from the registry.
    full_scale: float = 2000.0
    flat_eps: float = 0.0
    flat_samples: int = 100
    spike_k: float = 8.0
    noise_alpha: float = 0.01

    def __post_init__(self) -> None:
        if not (self.full_scale > 0.0 and self.flat_eps >= 0.0 and self.flat_samples >= 1):
            raise ValueError("full_scale must be > 0, flat_eps >= 0 and flat_samples >= 1")
        if not (self.spike_k > 0.0 and 0.0 < self.noise_alpha <= 1.0):
            raise ValueError("spike_k must be > 0 and noise_alpha in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class QualityReport:
    """Quality of one frame, with the device's running figures.

    Attributes:
        noise_rms: running noise level (channel unit, e.g. N): sqrt of half the running mean
            of squared first differences, spikes and jumps clipped; NaN before two samples.
        flatline: the frame ends inside a run of more than flat_samples repeats.
        flat_run: length of the current run of repeats, in samples.
        n_flat: samples in this frame that extended a flatline.
        n_saturated: samples in this frame at or beyond full scale.
        n_spikes: spikes decided in this frame (a spike is decided when its next sample comes).
        n_nonfinite: NaN or inf samples in this frame.
        n_samples: samples in this frame.
        t_start_ns: first sample of the frame (ns).
        t_end_ns: last sample of the frame (ns); t_start_ns - 1 for an empty frame.
        version: estimator version.
    """

    noise_rms: float
    flatline: bool
    flat_run: int
    n_flat: int
    n_saturated: int
    n_spikes: int
    n_nonfinite: int
    n_samples: int
    t_start_ns: int
    t_end_ns: int
    version: str = QUALITY_VERSION

    @property
    def ok(self) -> bool:
        """No flatline, saturation, spike or non-finite sample in this frame."""
        return not (self.flatline or self.n_saturated or self.n_spikes or self.n_nonfinite)


@dataclass
class QualityMonitor(DeviceRows):
    """Streaming quality monitor of one channel for `n_devices` devices.

    State: two fixed-size rows per device (`float_state`, `int_state`), 96 bytes together.
    """

    n_devices: int
    config: QualityConfig = field(default_factory=QualityConfig)
    float_state: NDArray[np.float64] = field(init=False, repr=False)
    int_state: NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise ValueError(f"n_devices={self.n_devices} must be >= 1")
        self.float_state = np.zeros((self.n_devices, kern.Q_FLOAT_LEN))
        self.float_state[:, kern.QF_NOISE_VAR] = np.nan
        self.int_state = np.zeros((self.n_devices, kern.Q_INT_LEN), dtype=np.int64)

    def frame(
        self,
        device: int,
        values: NDArray[np.floating] | list[float],
        t0_ns: int,
        rate_hz: float,
    ) -> QualityReport:
        """Check one frame of samples.

        Args:
            device: device index.
            values: samples of the channel (its unit, e.g. N).
            t0_ns: time of the first sample (UTC epoch ns).
            rate_hz: sample rate (Hz).

        Returns:
            The frame's report; counts are this frame's, noise and flat run are running.
        """
        x = as_float_array("values", values)
        if not (math.isfinite(rate_hz) and rate_hz > 0.0):
            raise ValueError(f"rate_hz={rate_hz} must be positive and finite")
        qf, qi = self.float_state[device], self.int_state[device]
        before = qi.copy()
        cfg = self.config
        if x.size:
            kern._quality_push(
                qf,
                qi,
                x,
                cfg.full_scale,
                cfg.flat_eps,
                cfg.flat_samples,
                cfg.spike_k,
                cfg.noise_alpha,
            )
        delta = qi - before
        var = float(qf[kern.QF_NOISE_VAR])
        return QualityReport(
            noise_rms=math.sqrt(var / 2.0) if math.isfinite(var) else math.nan,
            flatline=bool(qi[kern.QI_RUN] > cfg.flat_samples),
            flat_run=int(qi[kern.QI_RUN]),
            n_flat=int(delta[kern.QI_N_FLAT]),
            n_saturated=int(delta[kern.QI_N_SATURATED]),
            n_spikes=int(delta[kern.QI_N_SPIKES]),
            n_nonfinite=int(delta[kern.QI_N_NONFINITE]),
            n_samples=int(x.size),
            t_start_ns=t0_ns,
            t_end_ns=t0_ns + round((x.size - 1) * 1e9 / rate_hz),
        )


def signal_quality(
    values: NDArray[np.floating] | list[float],
    t0_ns: int,
    rate_hz: float,
    *,
    config: QualityConfig | None = None,
) -> QualityReport:
    """Quality of a whole recording at once (the batch form of QualityMonitor).

    Args:
        values: samples of the channel (its unit, e.g. N).
        t0_ns: time of the first sample (UTC epoch ns).
        rate_hz: sample rate (Hz).
        config: settings; defaults if None.

    Returns:
        The report over all samples.
    """
    return QualityMonitor(1, config or QualityConfig()).frame(0, values, t0_ns, rate_hz)
