"""The DSP core: regenerate stiffness and consolidation from force and displacement.

Streaming estimators with per-device fixed-size state, numba kernels behind the wrappers:
step response (`steps`, its settings in `stepconfig`), continuous stiffness tracking
(`tracking`), load share (`loadshare`) and signal quality (`quality`). Imports nothing else of
osteotel.
"""

import numpy as np

from dsp.loadshare import LOADSHARE_VERSION, LoadShareEstimate, LoadShareTracker, load_share
from dsp.quality import (
    QUALITY_VERSION,
    QualityConfig,
    QualityMonitor,
    QualityReport,
    signal_quality,
)
from dsp.stepconfig import StepConfig
from dsp.steps import STEP_VERSION, StepEstimate, StepTracker, step_response
from dsp.tracking import (
    TRACKING_VERSION,
    StiffnessTrack,
    StiffnessTracker,
    TrackingConfig,
    track_stiffness,
)

__all__ = [
    "LOADSHARE_VERSION",
    "QUALITY_VERSION",
    "STEP_VERSION",
    "TRACKING_VERSION",
    "LoadShareEstimate",
    "LoadShareTracker",
    "QualityConfig",
    "QualityMonitor",
    "QualityReport",
    "StepConfig",
    "StepEstimate",
    "StepTracker",
    "StiffnessTrack",
    "StiffnessTracker",
    "TrackingConfig",
    "load_share",
    "signal_quality",
    "step_response",
    "track_stiffness",
    "warm_up",
]


def warm_up() -> None:
    """Run a tiny array through every wrapper so that numba compiles (or loads from its cache)
    every kernel now, not on the first real frame."""
    rate_hz = 100.0
    t0_ns = 0
    n = 200
    t_s = np.arange(n) / rate_hz
    force_n = 10.0 + np.where(t_s >= 0.5, 5.0 * np.exp(-(t_s - 0.5)), 0.0)
    disp_mm = np.where(t_s >= 0.5, 0.25, 0.0)
    config = StepConfig(window_s=1.0, n_bins=18, pre_s=0.25, lead_s=0.25)
    step_response(force_n, disp_mm, t0_ns, rate_hz, 500_000_000, 0.25, config=config)
    track_stiffness(force_n, disp_mm, t0_ns, rate_hz, config=TrackingConfig(block_s=0.05))
    load_share(force_n, disp_mm)
    signal_quality(force_n, t0_ns, rate_hz)
    # The complete estimator's fused frame kernel; imported here so `import dsp` stays light.
    from dsp.estimator import FleetEstimator  # noqa: PLC0415

    fleet = FleetEstimator(capacity=1)
    for k in range(2):  # the first frame opens the device's day, the second takes the kernel
        fleet.frame("warm-up", force_n, disp_mm, None, k * 2_000_000_000, rate_hz)
    fleet.frames(
        ["warm-up"],
        np.array([0, n]),
        force_n,
        disp_mm,
        disp_mm,
        np.array([4_000_000_000]),
        np.array([rate_hz]),
    )
