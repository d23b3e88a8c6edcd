"""A signal-quality problem in the estimator rows of its device (`dsp.layout`): each channel's
open stretch of bad frames and, when it ends or has lasted `quality_every_s`, its
`QualityRecord` (`quality_record`; docs/dsp.md).

The function takes the device's int row `ei` (a view into the fleet's array, changed in
place) and the channel monitor's rows as arguments; `dsp.estimator` owns the rows and calls it.
"""

import math

from dsp import _kernels as kern
from dsp.layout import (
    DI_FLAGS,
    DI_Q,
    FLAG_BITS,
    Q_COUNTS,
    Q_LEN,
    Q_N_FRAMES,
    Q_N_SAMPLES,
    Q_T_END,
    Q_T_START,
    FloatRow,
    IntRow,
)
from dsp.quality import QUALITY_VERSION, QualityConfig
from dsp.records import QualityRecord

__all__ = ["quality_record"]


def quality_record(
    ei: IntRow,
    monitor_float_row: FloatRow,
    monitor_int_row: IntRow,
    *,
    monitor_config: QualityConfig,
    row: int,
    channel: str,
    counts: list[int],
    n_samples: int,
    t0_ns: int,
    t_end_ns: int,
    quality_every_s: float,
    device: str,
    calibration_id: str | None,
) -> QualityRecord | None:
    """Note a frame of one channel in its quality stretch; the stretch's record once it ends
    (a good frame) or has lasted quality_every_s (s), else None.

    Args:
        ei: the device's int row.
        monitor_float_row, monitor_int_row: the channel's quality monitor rows, after the frame.
        monitor_config: that monitor's settings.
        row: the channel's place (0 force, 1 displacement) in ei's stretches.
        channel: its name in the record ("force" or "disp").
        counts: the frame's increments of flat, saturated, spike and non-finite samples.
        n_samples: the frame's samples.
        t0_ns, t_end_ns: its first and last sample's times (UTC epoch ns).
        quality_every_s: while a problem lasts, one record per this many s.
        device, calibration_id: the record's provenance.
    """
    flat = bool(monitor_int_row[kern.QI_RUN] > monitor_config.flat_samples)
    bad = flat or any(counts)
    bit = 1 << row
    at = DI_Q + row * Q_LEN  # the channel's open stretch, if bit is set in EI_Q_PENDING
    pending = bool(ei[kern.EI_Q_PENDING] & bit)
    if bad:
        ei[DI_FLAGS] |= FLAG_BITS["signal_quality"]
        if not pending:
            pending = True
            ei[at : at + Q_LEN] = 0
            ei[at + Q_T_START] = t0_ns
            ei[kern.EI_Q_PENDING] |= bit
        ei[at + Q_COUNTS : at + Q_COUNTS + 4] += counts
        ei[at + Q_T_END] = t_end_ns
        ei[at + Q_N_SAMPLES] += n_samples
        ei[at + Q_N_FRAMES] += 1
    if not pending:
        return None
    t_start_ns = int(ei[at + Q_T_START])
    if bad and t_end_ns - t_start_ns < quality_every_s * 1e9:
        return None
    ei[kern.EI_Q_PENDING] &= ~bit
    var = float(monitor_float_row[kern.QF_NOISE_VAR])
    n_flat, n_sat, n_spikes, n_nonfinite = (int(v) for v in ei[at + Q_COUNTS : at + Q_COUNTS + 4])
    return QualityRecord(
        device=device,
        t_ns=t_start_ns,
        kind="quality",
        version=QUALITY_VERSION,
        calibration_id=calibration_id,
        t_start_ns=t_start_ns,
        t_end_ns=int(ei[at + Q_T_END]),
        channel=channel,
        noise_rms=math.sqrt(var / 2.0) if math.isfinite(var) else math.nan,
        flatline=flat,
        n_flat=n_flat,
        n_saturated=n_sat,
        n_spikes=n_spikes,
        n_nonfinite=n_nonfinite,
        n_samples=int(ei[at + Q_N_SAMPLES]),
        n_frames=int(ei[at + Q_N_FRAMES]),
    )
