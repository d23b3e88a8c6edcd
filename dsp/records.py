"""The records the complete estimator (dsp.estimator) returns: frozen dataclasses with
provenance, one kind per estimate. What ingest stores and publishes (docs/schema.md,
docs/derived.md); docs/dsp.md defines every field.
"""

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "DailyRecord",
    "EstimateRecord",
    "LoadShareRecord",
    "Phase",
    "QualityRecord",
    "StepKind",
    "StepRecord",
]

Phase = Literal["latency", "distraction", "consolidation", "ready"]
StepKind = Literal["step", "probe"]


@dataclass(frozen=True, kw_only=True)
class EstimateRecord:
    """What every record carries.

    Attributes:
        device: device id.
        t_ns: time the estimate refers to (UTC epoch ns).
        kind: "step", "probe", "load_share", "quality" or "daily".
        version: version of the estimator that made it.
        calibration_id: the device calibration in force, if the caller set one.
        t_start_ns, t_end_ns: the time span of the input used (ns).
    """

    device: str
    t_ns: int
    kind: str
    version: str
    calibration_id: str | None
    t_start_ns: int
    t_end_ns: int

    def as_dict(self) -> dict[str, Any]:
        """The record as a flat JSON-ready dict (tuples become lists, NaN stays NaN)."""
        out = asdict(self)
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in out.items()
        }


@dataclass(frozen=True, kw_only=True)
class StepRecord(EstimateRecord):
    """One distraction step or probe (kind "step" or "probe"); fields as `dsp.StepEstimate`
    (its identities hold on every record), t_ns being the event's time.

    Attributes:
        number: the device's count of distraction steps (probes: of probes), 1-based.
        t_onset_ns: onset measured from the displacement (ns).
        flags: the estimate's own (`dsp.StepEstimate.flags`), "separation" when the step shows
            one, and "low_snr" when its k_inst is not a measurement: its standard error is
            unknown or above `EstimatorConfig.max_k_inst_rel_std` of it, or its tau_fast is
            held. Sorted.
    """

    number: int
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
    fit_status: str
    closed_by: str
    n_samples: int
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class LoadShareRecord(EstimateRecord):
    """One weight-bearing test (kind "load_share"); fields as `dsp.LoadShareEstimate`
    (share = d(force) / d(reference load), 1 = all the load), plus:

    Attributes:
        k_device_n_per_mm: the device's own axial stiffness (N/mm): the device shortens under
            the load, so minus the slope of its force on its displacement; NaN if it could
            not be measured.
        flags: why the share may not be used, sorted: "implausible" (outside [0, 1] by more
            than `share_margin` and 2 standard errors), "poor_fit" (the force scatters about
            its line by more than `share_max_resid_fraction` of the load's range),
            "low_load_variation" (the reference load varied by less than
            `share_min_load_range_n`), "sign_inconsistent" (this device's steps and loading
            disagree in sign).
        usable: the share counts for anything clinical (phase, index, trend, readiness): its
            status is "ok" and it has no flag. The one definition every consumer uses.
        removal_criterion_met: the readiness rule after this test: in consolidation, and the
            last usable test of each of the last two days with one put the share within
            [0, removal_share) by 2 standard errors.
    """

    share: float
    share_std: float
    f_offset_n: float
    r2: float
    resid_sd_n: float
    ref_range_n: float
    status: str
    n_samples: int
    k_device_n_per_mm: float
    flags: tuple[str, ...]
    usable: bool
    removal_criterion_met: bool


@dataclass(frozen=True, kw_only=True)
class QualityRecord(EstimateRecord):
    """Signal problems on one channel over a stretch of frames (kind "quality").

    Attributes:
        channel: "force" or "disp".
        noise_rms: running noise level at the end (channel unit: N or mm).
        flatline: the stretch ends inside a flatline.
        n_flat, n_saturated, n_spikes, n_nonfinite: counts over the stretch.
        n_samples, n_frames: samples and frames in the stretch.
    """

    channel: str
    noise_rms: float
    flatline: bool
    n_flat: int
    n_saturated: int
    n_spikes: int
    n_nonfinite: int
    n_samples: int
    n_frames: int


@dataclass(frozen=True, kw_only=True)
class DailyRecord(EstimateRecord):
    """One device and UTC day (kind "daily"); t_ns is the day's start.

    Attributes:
        phase: "latency", "distraction", "consolidation" or "ready" at the day's end.
        steps_done, steps_prescribed, missed_steps, extra_steps: adherence counts.
        mm_done, mm_prescribed: elongation done and prescribed that day (mm).
        adherence: mm_done / mm_prescribed (NaN if nothing was prescribed).
        gained_mm: total elongation so far (mm).
        k_inst_n_per_mm, k_eq_n_per_mm, f_residual_n: medians over the day's steps (NaN if
            none).
        probe_k_inst_n_per_mm, probe_k_eq_n_per_mm: medians over the day's probes that
            lengthen (NaN if none).
        k_track_n_per_mm: equilibrium stiffness of the continuous tracker at the day's end.
        load_share, load_share_std: the day's last usable load share and its standard
            error (NaN if none).
        n_load_tests, n_load_tests_usable: the day's weight-bearing tests, and how many of
            them gave a usable share.
        k_device_n_per_mm: the day's last device stiffness from a test (NaN if none).
        consolidation_index: 0 (device carries all) to 1 (removal criterion met), from the
            trend's load share (the last usable share while there is no trend); NaN without
            a usable share.
        trend_slope_per_day, trend_slope_std_per_day: d ln(k_regenerate / k_device) / dt and
            its standard error (1/day); NaN without a trend.
        projected_ready_ns: when the trend reaches the removal criterion (-1 if not projected).
        projected_ready_lo_ns, projected_ready_hi_ns: its band of +/- 2 SE (-1 if none).
        projection_status: "ok" (projected), "insufficient_days", "not_significant",
            "too_far" (`dsp.consolidation.Trend.status`), or "none" (not in consolidation).
        projection_horizon_ns: the furthest date the trend's data support a projection to
            (-1 without a trend): with "too_far" the criterion is reached only after it.
        flags: anomalies seen that day, sorted: "poor_regenerate", "separation", "loosening",
            "missed_steps", "extra_steps", "signal_quality", "sign_inconsistent" (the device's
            steps and loading disagree in sign), "unusable_share" (a test gave no usable
            share).
    """

    phase: Phase
    steps_done: int
    steps_prescribed: int
    missed_steps: int
    extra_steps: int
    mm_done: float
    mm_prescribed: float
    adherence: float
    gained_mm: float
    k_inst_n_per_mm: float
    k_eq_n_per_mm: float
    f_residual_n: float
    probe_k_inst_n_per_mm: float
    probe_k_eq_n_per_mm: float
    k_track_n_per_mm: float
    load_share: float
    load_share_std: float
    n_load_tests: int
    n_load_tests_usable: int
    k_device_n_per_mm: float
    consolidation_index: float
    trend_slope_per_day: float
    trend_slope_std_per_day: float
    projected_ready_ns: int
    projected_ready_lo_ns: int
    projected_ready_hi_ns: int
    projection_status: str
    projection_horizon_ns: int
    flags: tuple[str, ...]
