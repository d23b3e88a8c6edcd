"""A distraction step or probe in the estimator rows of its device (`dsp.layout`): the event's
bookkeeping (`note_step_event`) and, once its window closes, the `StepRecord` with the step
rules it feeds (`step_record`: separation, the steps' sign, poor regenerate; docs/dsp.md).

Every function takes the device's int row `ei` and float row `df` (views into the fleet's
arrays, changed in place) and whatever else it needs as arguments; `dsp.estimator` owns the
rows and calls these.
"""

import math

from dsp import _kernels as kern
from dsp.config import EstimatorConfig
from dsp.layout import (
    DF_GAINED_MM,
    DF_MM_TODAY,
    DF_RECENT_K,
    DF_RECENT_KPEAK,
    DF_RESIDUAL,
    DI_FLAGS,
    DI_KIND_PROBE,
    DI_KIND_T,
    DI_LAST_STEP_NS,
    DI_N_KINDS,
    DI_N_PROBES,
    DI_N_RECENT_K,
    DI_N_RESIDUAL,
    DI_N_STEPS,
    DI_PHASE,
    DI_SIGN_BAD,
    DI_STEPS_TODAY,
    FLAG_BITS,
    NS_PER_DAY,
    PHASE_CODE,
    STEP_HISTORY,
    STEP_KINDS,
    FloatRow,
    IntRow,
    ring_push,
)
from dsp.records import StepKind, StepRecord
from dsp.rules import is_poor_regenerate, is_separation, steps_sign
from dsp.steps import StepEstimate

__all__ = ["note_step_event", "recent_steps_sign", "step_record"]

# The step record restates these fields of the estimate as they are.
_STEP_FIELDS = (
    "t_onset_ns", "ramp_s", "delta_mm", "delta_event_mm", "k_inst_n_per_mm",
    "k_inst_std_n_per_mm", "k_peak_n_per_mm", "k_eq_n_per_mm", "k_eq_std_n_per_mm",
    "tau_fast_s", "tau_slow_s",
    "f_residual_n", "f_peak_n", "f_inst_n", "f_settled_n", "fit_rmse_n", "fit_r2",
    "fit_status", "closed_by", "n_samples",
)  # fmt: skip


def note_step_event(ei: IntRow, df: FloatRow, t_ns: int, delta_mm: float, kind: StepKind) -> None:
    """Count a step or probe that started at t_ns (ns) and remember its kind, so its window's
    estimate can be told a step's or a probe's; a step also counts towards the day's and the
    whole gain (mm) and puts the device in distraction."""
    n = int(ei[DI_N_KINDS])
    bits = int(ei[DI_KIND_PROBE])
    if n == STEP_KINDS:
        bits >>= 1
    n = ring_push(ei, DI_KIND_T, STEP_KINDS, n, t_ns)
    ei[DI_N_KINDS] = n
    bit = 1 << (n - 1)
    ei[DI_KIND_PROBE] = bits | bit if kind == "probe" else bits & ~bit
    if kind == "step":
        ei[DI_N_STEPS] += 1
        df[DF_GAINED_MM] += delta_mm
        ei[DI_LAST_STEP_NS] = t_ns
        if t_ns // NS_PER_DAY >= ei[kern.EI_DAY]:
            ei[DI_STEPS_TODAY] += 1
            df[DF_MM_TODAY] += delta_mm
        if ei[DI_PHASE] != PHASE_CODE["distraction"]:
            ei[DI_PHASE] = PHASE_CODE["distraction"]
    else:
        ei[DI_N_PROBES] += 1


def recent_steps_sign(ei: IntRow, df: FloatRow, *, min_steps: int) -> int:
    """The sign of the force change of the recent distraction steps (`rules.steps_sign` on
    their finite k_peak)."""
    n = int(ei[DI_N_RECENT_K])
    recent = [k for k in df[DF_RECENT_KPEAK : DF_RECENT_KPEAK + n].tolist() if math.isfinite(k)]
    return steps_sign(recent, min_steps=min_steps)


def _step_kind(ei: IntRow, t_step_ns: int) -> StepKind:
    """The kind of the remembered step event at t_step_ns ("step" if none is)."""
    kind: StepKind = "step"
    probe_bits = int(ei[DI_KIND_PROBE])
    for j in range(int(ei[DI_N_KINDS])):
        if ei[DI_KIND_T + j] == t_step_ns:
            kind = "probe" if probe_bits >> j & 1 else "step"
    return kind


def _separation_rule(
    ei: IntRow, df: FloatRow, f_residual_n: float, config: EstimatorConfig
) -> bool:
    n = int(ei[DI_N_RESIDUAL])
    previous = df[DF_RESIDUAL : DF_RESIDUAL + n].tolist()
    hit = is_separation(
        f_residual_n, previous, drop=config.separation_drop, min_n=config.separation_min_n
    )
    if math.isfinite(f_residual_n):
        ei[DI_N_RESIDUAL] = ring_push(df, DF_RESIDUAL, 4, n, f_residual_n)
    return hit


def _stiffness_rules(ei: IntRow, df: FloatRow, config: EstimatorConfig) -> None:
    n = int(ei[DI_N_RECENT_K])
    recent = df[DF_RECENT_K : DF_RECENT_K + n].tolist()
    limit = config.poor_k_inst_n_per_mm
    if not ei[DI_SIGN_BAD] and is_poor_regenerate(recent, limit_n_per_mm=limit):
        ei[DI_FLAGS] |= FLAG_BITS["poor_regenerate"]


def step_record(
    ei: IntRow,
    df: FloatRow,
    est: StepEstimate,
    *,
    config: EstimatorConfig,
    device: str,
    calibration_id: str | None,
) -> StepRecord:
    """The record of a closed step window, after the step rules its estimate feeds.

    A distraction step's residual force feeds the separation rule; a fitted one's k_peak
    the steps' sign (a negative one marks the device sign-inconsistent) and its k_inst +
    2 SE the poor-regenerate rule. Flags `low_snr` and `separation` join the estimate's
    own. The day's values for its record are the caller's to hold (`daily.hold_step_values`).
    """
    kind = _step_kind(ei, est.t_step_ns)
    flags = set(est.flags)
    k_std = est.k_inst_std_n_per_mm
    if "tau_fast_held" in est.flags or not (
        k_std <= config.max_k_inst_rel_std * abs(est.k_inst_n_per_mm)
    ):
        # Within its own noise (a 0.02 mm probe on a soft regenerate): no measurement.
        flags.add("low_snr")
    if kind == "step":
        if _separation_rule(ei, df, est.f_residual_n, config):
            flags.add("separation")
            ei[DI_FLAGS] |= FLAG_BITS["separation"]
        if est.fit_status in ("ok", "short") and math.isfinite(est.k_inst_n_per_mm):
            n = int(ei[DI_N_RECENT_K])
            ring_push(df, DF_RECENT_KPEAK, STEP_HISTORY, n, est.k_peak_n_per_mm)
            k_upper = est.k_inst_n_per_mm + 2.0 * est.k_inst_std_n_per_mm
            ei[DI_N_RECENT_K] = ring_push(df, DF_RECENT_K, STEP_HISTORY, n, k_upper)
            # Steps that lower the force: the polarity is wrong (or the channel).
            if recent_steps_sign(ei, df, min_steps=config.sign_min_steps) < 0:
                ei[DI_SIGN_BAD] = 1
            _stiffness_rules(ei, df, config)
    return StepRecord(
        device=device,
        t_ns=est.t_step_ns,
        kind=kind,
        version=est.version,
        calibration_id=calibration_id,
        t_start_ns=est.t_start_ns,
        t_end_ns=est.t_end_ns,
        number=int(ei[DI_N_STEPS] if kind == "step" else ei[DI_N_PROBES]),
        **{name: getattr(est, name) for name in _STEP_FIELDS},
        flags=tuple(sorted(flags)),
    )
