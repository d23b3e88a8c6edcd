"""A weight-bearing test's end in the estimator rows of its device (`dsp.layout`): the
device's own stiffness (`device_stiffness`), and the `LoadShareRecord` with what the test
feeds (`load_share_record`: the loosening rule, the share's usability and sign check, the
day's tallies, readiness and the phase; docs/dsp.md).

Every function takes the device's int row `ei` and float row `df` (views into the fleet's
arrays, changed in place) and whatever else it needs as arguments; `dsp.estimator` owns the
rows and calls these.
"""

import math

from dsp import _kernels as kern
from dsp.config import EstimatorConfig
from dsp.daily import note_readiness, removal_criterion_met
from dsp.layout import (
    DF_K_DEVICE,
    DF_K_DEVICE_TODAY,
    DF_SHARE,
    DF_SHARE_DAY,
    DF_SHARE_STD,
    DF_SHARE_STD_TODAY,
    DF_SHARE_TODAY,
    DI_FLAGS,
    DI_N_K_DEVICE,
    DI_N_SHARES,
    DI_N_TESTS_TODAY,
    DI_N_USABLE_TODAY,
    DI_PHASE,
    DI_SIGN_BAD,
    FLAG_BITS,
    KDEV_HISTORY,
    NS_PER_DAY,
    PHASE_CODE,
    PHASES,
    SHARE_HISTORY,
    FloatRow,
    IntRow,
    ring_push,
)
from dsp.loadshare import LoadShareEstimate
from dsp.records import LoadShareRecord
from dsp.rules import is_loosening, share_flags
from dsp.steprecord import recent_steps_sign

__all__ = ["device_stiffness", "load_share_record"]

# The load-share record restates these fields of its estimate as they are.
_SHARE_FIELDS = (
    "share", "share_std", "f_offset_n", "r2", "resid_sd_n", "ref_range_n", "status", "n_samples",
)  # fmt: skip


def device_stiffness(k_device_row: FloatRow, disp_noise_var: float) -> float:
    """Minus the slope of force on displacement over the test (N/mm): the load raises the
    force and shortens the device. Corrected for the noise on the displacement, which
    would bias it towards 0 by var(noise) / var(displacement): late in consolidation the
    device moves only hundredths of a mm under the test load.

    Args:
        k_device_row: the device's float row of the force-on-displacement co-moment tracker.
        disp_noise_var: the displacement monitor's noise variance (`QF_NOISE_VAR`, of first
            differences: twice the samples', mm^2).
    """
    n = float(k_device_row[kern.LF_N])
    noise_var = disp_noise_var / 2.0
    c_xx = float(k_device_row[kern.LF_C_RR])
    if math.isfinite(noise_var):
        c_xx -= n * noise_var
    return -float(k_device_row[kern.LF_C_RF]) / c_xx if c_xx > 0.0 else math.nan


def _loosening_rule(ei: IntRow, df: FloatRow, k_dev: float, config: EstimatorConfig) -> None:
    n = int(ei[DI_N_K_DEVICE])
    history = df[DF_K_DEVICE : DF_K_DEVICE + n].tolist()
    if is_loosening(k_dev, history, drop=config.loosening_drop):
        ei[DI_FLAGS] |= FLAG_BITS["loosening"]


def _share_flags(
    ei: IntRow, df: FloatRow, est: LoadShareEstimate, config: EstimatorConfig
) -> set[str]:
    """Why a test's share may not be used (empty: it may), and the sign check it feeds."""
    if est.status != "ok":
        return set()
    flags = share_flags(
        est.share, est.share_std, est.resid_sd_n, est.ref_range_n, margin=config.share_margin,
        max_resid_fraction=config.share_max_resid_fraction,
        min_load_range_n=config.share_min_load_range_n,
    )  # fmt: skip
    # Loading that lowers the force (an implausible share below 0) while the steps raise
    # it: the two disagree in sign.
    lowers = "implausible" in flags and est.share < 0.0
    if lowers and recent_steps_sign(ei, df, min_steps=config.sign_min_steps) > 0:
        ei[DI_SIGN_BAD] = 1
    if ei[DI_SIGN_BAD]:
        flags.add("sign_inconsistent")
    return flags


def load_share_record(
    ei: IntRow,
    df: FloatRow,
    est: LoadShareEstimate,
    *,
    t_ns: int,
    k_device_n_per_mm: float,
    config: EstimatorConfig,
    device: str,
    calibration_id: str | None,
) -> LoadShareRecord:
    """The record of a test that ended at t_ns (ns), after what it feeds.

    Args:
        ei, df: the device's rows.
        est: the test's load-share estimate.
        t_ns: the end of the test (UTC epoch ns).
        k_device_n_per_mm: the device's stiffness over the test (`device_stiffness`), NaN
            if the test gave none.
        config: estimator settings.
        device, calibration_id: the record's provenance.
    """
    k_dev = k_device_n_per_mm
    if math.isfinite(k_dev) and k_dev > 0.0:
        _loosening_rule(ei, df, k_dev, config)
        df[DF_K_DEVICE_TODAY] = k_dev
        n = int(ei[DI_N_K_DEVICE])
        ei[DI_N_K_DEVICE] = ring_push(df, DF_K_DEVICE, KDEV_HISTORY, n, k_dev)
    flags = _share_flags(ei, df, est, config)
    usable = est.status == "ok" and not flags
    ei[DI_N_TESTS_TODAY] += 1
    if usable:
        ei[DI_N_USABLE_TODAY] += 1
        df[DF_SHARE_TODAY] = est.share
        df[DF_SHARE_STD_TODAY] = est.share_std
        n = int(ei[DI_N_SHARES])
        ring_push(df, DF_SHARE_DAY, SHARE_HISTORY, n, t_ns / NS_PER_DAY)
        ring_push(df, DF_SHARE_STD, SHARE_HISTORY, n, est.share_std)
        ei[DI_N_SHARES] = ring_push(df, DF_SHARE, SHARE_HISTORY, n, est.share)
        removal = config.consolidation.removal_share
        note_readiness(ei, t_ns // NS_PER_DAY, est.share, est.share_std, removal_share=removal)
    else:
        ei[DI_FLAGS] |= FLAG_BITS["unusable_share"]
    in_consolidation = PHASES[int(ei[DI_PHASE])] in ("consolidation", "ready")
    met = in_consolidation and removal_criterion_met(ei)
    if in_consolidation:  # re-evaluated on every test: readiness can be lost again
        ei[DI_PHASE] = PHASE_CODE["ready" if met else "consolidation"]
    return LoadShareRecord(
        device=device,
        t_ns=t_ns,
        kind="load_share",
        version=est.version,
        calibration_id=calibration_id,
        t_start_ns=est.t_start_ns,
        t_end_ns=est.t_end_ns,
        **{name: getattr(est, name) for name in _SHARE_FIELDS},
        k_device_n_per_mm=k_dev,
        flags=tuple(sorted(flags)),
        usable=usable,
        removal_criterion_met=met,
    )
