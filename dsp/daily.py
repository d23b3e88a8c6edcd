"""The day's record of one device, from its estimator rows (`dsp.layout`): the day's step and
probe values it holds, the readiness rule, the phase, and `close_day`, which makes the
`DailyRecord` and starts the next day's tallies.

Every function takes the device's int row `ei` and float row `df` (views into the fleet's
arrays, changed in place) and whatever else it needs as arguments; `dsp.estimator` owns the
rows and calls these.
"""

import math
from collections.abc import Sequence

import numpy as np

from dsp import _kernels as kern
from dsp.adherence import Protocol, daily_adherence
from dsp.config import EstimatorConfig
from dsp.consolidation import consolidation_index, fit_trend
from dsp.layout import (
    DF_GAINED_MM,
    DF_K_DEVICE_TODAY,
    DF_MM_TODAY,
    DF_PROBES_TODAY,
    DF_SHARE,
    DF_SHARE_DAY,
    DF_SHARE_STD,
    DF_SHARE_STD_TODAY,
    DF_SHARE_TODAY,
    DF_TODAY,
    DI_FLAGS,
    DI_LAST_STEP_NS,
    DI_N_PROBES_TODAY,
    DI_N_SHARES,
    DI_N_TESTS_TODAY,
    DI_N_TODAY,
    DI_N_USABLE_TODAY,
    DI_PHASE,
    DI_READY,
    DI_SIGN_BAD,
    DI_STEPS_TODAY,
    NS_PER_DAY,
    PHASE_CODE,
    PHASES,
    TODAY_PROBES,
    TODAY_STEPS,
    FloatRow,
    IntRow,
    flag_names,
)
from dsp.records import DailyRecord, Phase
from dsp.rules import qualifies_for_removal

__all__ = [
    "ESTIMATOR_VERSION",
    "close_day",
    "day_phase",
    "hold_probe_values",
    "hold_step_values",
    "note_readiness",
    "removal_criterion_met",
]

ESTIMATOR_VERSION = "dsp.estimator/1"
"""The daily record's version: the complete estimator's own."""


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def _day_ns(day: float) -> int:
    return round(day * NS_PER_DAY) if math.isfinite(day) else -1


def hold_step_values(ei: IntRow, df: FloatRow, values: tuple[float, float, float]) -> bool:
    """Hold a distraction step's (k_inst, k_eq, residual force) for the day's medians; False
    if the row's TODAY_STEPS places are taken (the caller keeps the values aside)."""
    n = int(ei[DI_N_TODAY])
    if n >= TODAY_STEPS:
        return False
    df[DF_TODAY + 3 * n : DF_TODAY + 3 * n + 3] = values
    ei[DI_N_TODAY] = n + 1
    return True


def hold_probe_values(ei: IntRow, df: FloatRow, values: tuple[float, float]) -> bool:
    """Hold a lengthening probe's (k_inst, k_eq) for the day's medians; False if the row's
    TODAY_PROBES places are taken (the caller keeps the values aside)."""
    n = int(ei[DI_N_PROBES_TODAY])
    if n >= TODAY_PROBES:
        return False
    df[DF_PROBES_TODAY + 2 * n : DF_PROBES_TODAY + 2 * n + 2] = values
    ei[DI_N_PROBES_TODAY] = n + 1
    return True


def _today(
    ei: IntRow, df: FloatRow, extra: Sequence[tuple[float, float, float]]
) -> tuple[list[float], list[float], list[float]]:
    """The day's step values: k_inst, k_eq and residual force, in arrival order."""
    n = int(ei[DI_N_TODAY])
    rows = df[DF_TODAY : DF_TODAY + 3 * n].reshape(n, 3).tolist()
    rows += [list(r) for r in extra]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _probes_today(
    ei: IntRow, df: FloatRow, extra: Sequence[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """The day's lengthening probe values: k_inst and k_eq, in arrival order."""
    n = int(ei[DI_N_PROBES_TODAY])
    rows = df[DF_PROBES_TODAY : DF_PROBES_TODAY + 2 * n].reshape(n, 2).tolist()
    rows += [list(r) for r in extra]
    return [r[0] for r in rows], [r[1] for r in rows]


def _shares(ei: IntRow, df: FloatRow) -> tuple[list[float], list[float], list[float]]:
    """The remembered usable load shares: their times (days), values and standard
    errors, oldest first."""
    n = int(ei[DI_N_SHARES])
    return (
        df[DF_SHARE_DAY : DF_SHARE_DAY + n].tolist(),
        df[DF_SHARE : DF_SHARE + n].tolist(),
        df[DF_SHARE_STD : DF_SHARE_STD + n].tolist(),
    )


def note_readiness(
    ei: IntRow, day: int, share: float, share_std: float, *, removal_share: float
) -> None:
    """Note a usable test for the readiness rule: per UTC day its last test counts."""
    qualified = int(qualifies_for_removal(share, share_std, removal_share=removal_share))
    if ei[DI_READY] != day:
        ei[DI_READY + 2], ei[DI_READY + 3] = ei[DI_READY], ei[DI_READY + 1]
        ei[DI_READY] = day
    ei[DI_READY + 1] = qualified


def removal_criterion_met(ei: IntRow) -> bool:
    """The last usable test of each of the last two days that had one qualified."""
    return bool(ei[DI_READY + 2] >= 0 and ei[DI_READY + 1] and ei[DI_READY + 3])


def day_phase(
    ei: IntRow, df: FloatRow, protocol: Protocol, day_end_ns: int, *, consolidation_after_s: float
) -> Phase:
    """The device's phase at the end of its day (docs/dsp.md, "Phase" and "Readiness")."""
    phase = PHASES[int(ei[DI_PHASE])]
    if phase == "distraction":
        target = protocol.target_mm
        if target is not None:
            done = float(df[DF_GAINED_MM]) >= target - 0.5 * protocol.step_mm
        else:
            quiet_ns = day_end_ns - int(ei[DI_LAST_STEP_NS])
            done = ei[DI_STEPS_TODAY] == 0 and quiet_ns >= consolidation_after_s * 1e9
        if done:
            phase = "consolidation"
    if phase in ("consolidation", "ready"):
        # The readiness rule, as the last test left it (a new step leaves it too).
        phase = "ready" if removal_criterion_met(ei) else "consolidation"
    return phase


def close_day(
    ei: IntRow,
    df: FloatRow,
    *,
    config: EstimatorConfig,
    protocol: Protocol,
    device: str,
    calibration_id: str | None,
    k_track_n_per_mm: float,
    extra_steps: Sequence[tuple[float, float, float]],
    extra_probes: Sequence[tuple[float, float]],
) -> DailyRecord:
    """The record of the device's current day (kern.EI_DAY); its tallies start afresh.

    Args:
        ei, df: the device's rows.
        config: estimator settings.
        protocol: the device's prescription.
        device, calibration_id: the record's provenance.
        k_track_n_per_mm: the stiffness tracker's k_eq now (N/mm).
        extra_steps, extra_probes: the day's values beyond the row's places, in arrival
            order; the caller drops them after this call.
    """
    day_start = int(ei[kern.EI_DAY]) * NS_PER_DAY
    day_end = day_start + NS_PER_DAY
    was = PHASES[int(ei[DI_PHASE])]
    phase = day_phase(ei, df, protocol, day_end, consolidation_after_s=config.consolidation_after_s)
    ei[DI_PHASE] = PHASE_CODE[phase]
    steps_today = int(ei[DI_STEPS_TODAY])
    mm_today = float(df[DF_MM_TODAY])
    gained_mm = float(df[DF_GAINED_MM])
    prescribed = was == "distraction" or steps_today > 0
    if was == "distraction" and phase != "distraction" and steps_today == 0:
        prescribed = False
    adh = daily_adherence(
        steps_today,
        mm_today,
        protocol=protocol,
        prescribed_today=prescribed,
        gained_mm=gained_mm - mm_today,
    )
    flags = flag_names(int(ei[DI_FLAGS]))
    if adh.missed_steps:
        flags.add("missed_steps")
    if adh.extra_steps:
        flags.add("extra_steps")
    if ei[DI_SIGN_BAD]:
        flags.add("sign_inconsistent")
    days, shares, share_stds = _shares(ei, df)
    trend = fit_trend(days, shares, share_stds, config=config.consolidation)
    removal = config.consolidation.removal_share
    if trend is not None and trend.n_days >= config.consolidation.min_days:
        index = consolidation_index(trend.share_now, removal_share=removal)
    else:
        last = shares[-1] if shares else math.nan
        index = consolidation_index(last, removal_share=removal)
    projection = "none"
    if phase in ("latency", "distraction"):
        index = 0.0  # the device carries the load until consolidation begins
        trend = None
    else:
        projection = trend.status if trend is not None else "insufficient_days"
    shown = trend if trend is not None and trend.status == "ok" else None
    k_today, k_eq_today, residual_today = _today(ei, df, extra_steps)
    probe_k_today, probe_k_eq_today = _probes_today(ei, df, extra_probes)
    record = DailyRecord(
        device=device,
        t_ns=day_start,
        kind="daily",
        version=ESTIMATOR_VERSION,
        calibration_id=calibration_id,
        t_start_ns=int(ei[kern.EI_T_FIRST]) if ei[kern.EI_T_FIRST] >= 0 else day_start,
        t_end_ns=int(ei[kern.EI_T_LAST]) if ei[kern.EI_T_LAST] >= 0 else day_start,
        phase=phase,
        steps_done=adh.steps_done,
        steps_prescribed=adh.steps_prescribed,
        missed_steps=adh.missed_steps,
        extra_steps=adh.extra_steps,
        mm_done=adh.mm_done,
        mm_prescribed=adh.mm_prescribed,
        adherence=adh.ratio,
        gained_mm=gained_mm,
        k_inst_n_per_mm=_median(k_today),
        k_eq_n_per_mm=_median(k_eq_today),
        f_residual_n=_median(residual_today),
        probe_k_inst_n_per_mm=_median(probe_k_today),
        probe_k_eq_n_per_mm=_median(probe_k_eq_today),
        k_track_n_per_mm=k_track_n_per_mm,
        load_share=float(df[DF_SHARE_TODAY]),
        load_share_std=float(df[DF_SHARE_STD_TODAY]),
        n_load_tests=int(ei[DI_N_TESTS_TODAY]),
        n_load_tests_usable=int(ei[DI_N_USABLE_TODAY]),
        k_device_n_per_mm=float(df[DF_K_DEVICE_TODAY]),
        consolidation_index=index,
        trend_slope_per_day=trend.slope_per_day if trend is not None else math.nan,
        trend_slope_std_per_day=trend.slope_std_per_day if trend is not None else math.nan,
        projected_ready_ns=_day_ns(shown.projected_day) if shown else -1,
        projected_ready_lo_ns=_day_ns(shown.projected_lo_day) if shown else -1,
        projected_ready_hi_ns=_day_ns(shown.projected_hi_day) if shown else -1,
        projection_status=projection,
        projection_horizon_ns=_day_ns(trend.horizon_day) if trend is not None else -1,
        flags=tuple(sorted(flags)),
    )
    ei[[DI_STEPS_TODAY, DI_FLAGS, DI_N_TODAY, DI_N_PROBES_TODAY]] = 0
    ei[[DI_N_TESTS_TODAY, DI_N_USABLE_TODAY]] = 0
    df[DF_MM_TODAY] = 0.0
    df[[DF_SHARE_TODAY, DF_SHARE_STD_TODAY, DF_K_DEVICE_TODAY]] = math.nan
    ei[kern.EI_T_FIRST] = ei[kern.EI_T_LAST] = -1
    return record
