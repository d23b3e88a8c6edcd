"""The complete estimator's settings (`EstimatorConfig`), and the scalars of its fused frame
kernel that they make (`kernel_params`). `dsp.estimator` re-exports `EstimatorConfig`.
"""

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from dsp import _kernels as kern
from dsp.adherence import Protocol
from dsp.consolidation import ConsolidationConfig
from dsp.quality import QualityConfig
from dsp.stepconfig import StepConfig
from dsp.tracking import TrackingConfig

__all__ = ["EstimatorConfig", "kernel_params"]


@dataclass(frozen=True, kw_only=True)
class EstimatorConfig:
    """Settings of the complete estimator.

    Attributes:
        step: step-response settings (each step's ramp is measured from the displacement).
        tracking: continuous stiffness tracker settings.
        force_quality, disp_quality: signal-quality settings per channel.
        consolidation: trend settings, including the removal criterion (load share < 10 %).
        protocol: the prescription used when none is set per device.
        consolidation_after_s: without a protocol target, distraction is over once no step
            came for this long (s) and a whole UTC day passed without one.
        share_min_load_range_n: a load test whose reference load varied by less than this (N)
            is flagged `low_load_variation`: the clinical test has the patient step onto a
            scale with a known part of the body weight, hundreds of N (Aarnes 2005, J Orthop
            Res); 100 N keeps the share's leverage to within a few times the scale's noise.
        share_max_resid_fraction: a load test whose force scatters about its line by more
            than this fraction of the reference load's range is flagged `poor_fit` (the
            patient moved, walked or leaned during the test). Not R^2: a healed bone's share
            near 0 explains no variance with a perfect test.
        share_margin: a share is `implausible` when it lies outside [-margin, 1 + margin] by
            more than 2 standard errors: 0.03, the regression's own error does not hold the
            scale's noise and the few seconds the load takes to settle, and early in
            consolidation a share at 1 reads a hair above it.
        sign_min_steps: distraction steps with a fit that the sign check waits for.
        poor_k_inst_n_per_mm: flag `poor_regenerate` when the median step stiffness of the
            last steps is below this (N/mm). Placeholder for limbs: poor regenerate keeps the
            force near half of normal (dog ~60 N at week 3 vs 111-155 N by week 4, docs/domain.md);
            set it per site (a mandible is much stiffer).
        separation_drop: flag `separation` when the force before a step falls below this
            fraction of the largest of the previous steps' (a sudden drop, docs/domain.md) ...
        separation_min_n: ... by at least this much (N), so noise on a small force is no drop.
        loosening_drop: flag `loosening` when the device's own stiffness (force per mm during
            the weight-bearing test) falls by more than this fraction below the median of the
            previous days (docs/domain.md: loosening shows as a stiffness drop).
        quality_every_s: while a signal problem lasts, one quality record per this many s.
        max_k_inst_rel_std: flag `low_snr` on a step or probe whose k_inst standard error
            (`StepEstimate.k_inst_std_n_per_mm`) is unknown or above this fraction of
            |k_inst|, or whose tau_fast the data do not bound (`tau_fast_held`: its k_inst
            rests on the prior). At 0.08, over the independent physics family
            (tests/physics.py: 10-200 Hz, ramps 0-180 s, tau_f 0.3-5 s) the 76 % of steps
            that pass have a median error of 0.3 % and a 95th percentile of 5.3 % (8.1 % at
            0.1, 12 % at 0.2). A 0.02 mm probe at 10 Hz with 0.5 N noise has an error of
            ~40 N/mm: probes count from ~500 N/mm on.
    """

    step: StepConfig = field(default_factory=StepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    force_quality: QualityConfig = field(default_factory=QualityConfig)
    disp_quality: QualityConfig = field(default_factory=lambda: QualityConfig(full_scale=1e3))
    consolidation: ConsolidationConfig = field(default_factory=ConsolidationConfig)
    protocol: Protocol = field(default_factory=Protocol)
    consolidation_after_s: float = 86_400.0
    share_min_load_range_n: float = 100.0
    share_max_resid_fraction: float = 0.05
    share_margin: float = 0.03
    sign_min_steps: int = 3
    poor_k_inst_n_per_mm: float = 10.0
    separation_drop: float = 0.5
    separation_min_n: float = 5.0
    loosening_drop: float = 0.02
    quality_every_s: float = 60.0
    max_k_inst_rel_std: float = 0.08


def kernel_params(config: EstimatorConfig) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The scalars of the fused frame kernel (`_kernels._fleet_frames`) at its P_* (float) and
    PI_* (int) offsets."""
    c_s, h = config.step.bin_shape
    fp = np.zeros(kern.FLEET_FLOAT_LEN)
    fp[kern.P_C_S], fp[kern.P_H] = c_s, h
    fp[kern.P_MAX_GAP_NS] = config.step.max_gap_s * 1e9
    fp[kern.P_LAM] = config.tracking.forgetting
    fp[kern.P_EXCITE_MM] = config.tracking.excite_mm
    fp[kern.P_SIGMA_ALPHA] = config.tracking.sigma_alpha
    ip = np.zeros(kern.FLEET_INT_LEN, dtype=np.int64)
    ip[kern.PI_PRE_BIN_NS] = kern.PRE_BIN_NS
    ip[kern.PI_N_BINS] = config.step.n_bins
    ip[kern.PI_WINDOW_NS] = round(config.step.window_s * 1e9)
    ip[kern.PI_BLOCK_NS] = round(config.tracking.block_s * 1e9)
    ip[kern.PI_HOLD_NS] = round(config.tracking.hold_s * 1e9)
    for at, at_flat, qc in (
        (kern.P_FQ, kern.PI_FQ_FLAT, config.force_quality),
        (kern.P_DQ, kern.PI_DQ_FLAT, config.disp_quality),
    ):
        fp[at : at + 4] = (qc.full_scale, qc.flat_eps, qc.spike_k, qc.noise_alpha)
        ip[at_flat] = qc.flat_samples
    return fp, ip
