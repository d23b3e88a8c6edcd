"""The layout of the estimator's per-device state beyond the trackers': the column indices
of its int and float rows, the history lengths, the phase codes and the day's flag bits.

Snapshots store the rows as they are, so a change of meaning here bumps the estimator's
snapshot format (dsp/estimator.py). `new_rows` makes the rows of devices not seen yet;
`ring_push` appends to a history.
"""

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsp import _kernels as kern
from dsp.records import Phase

NS_PER_DAY = kern.NS_PER_DAY  # the day column kern.EI_DAY holds t_ns // NS_PER_DAY: UTC days

# One device's rows, as the estimator's rooms take them: views into the fleet's arrays.
IntRow = NDArray[np.int64]
FloatRow = NDArray[np.float64]

STEP_HISTORY = 12  # distraction steps remembered for the stiffness-growth and residual rules
SHARE_HISTORY = 40  # daily load shares remembered for the trend (more than trend_days)
KDEV_HISTORY = 8  # daily device stiffnesses remembered for the loosening rule

# Per-device estimator state beyond the trackers', in numeric rows instead of Python objects
# (a deque alone costs ~600 bytes): int columns appended to the fused kernel's `_ei` rows (which
# reads only the first kern.EST_INT_LEN) and one float row. Histories are short arrays kept
# oldest first with a length; a full one drops its oldest entry, as a bounded deque would.
STEP_KINDS = 8  # recent step events remembered to tell a step's estimate from a probe's
TODAY_STEPS = 8  # the day's step values held in the row; more go to a per-device list
TODAY_PROBES = 4  # the same for the day's lengthening probes

DI_N_STEPS = kern.EST_INT_LEN
DI_N_PROBES = DI_N_STEPS + 1
DI_LAST_STEP_NS = DI_N_PROBES + 1  # -1 before the first step
DI_PHASE = DI_LAST_STEP_NS + 1  # index into PHASES
DI_STEPS_TODAY = DI_PHASE + 1
DI_FLAGS = DI_STEPS_TODAY + 1  # the day's anomaly flags, one bit each (FLAG_BITS)
DI_N_TODAY = DI_FLAGS + 1  # step values held today (k, k_eq, residual)
DI_N_PROBES_TODAY = DI_N_TODAY + 1  # lengthening probe values held today (k, k_eq)
DI_N_RECENT_K = DI_N_PROBES_TODAY + 1
DI_N_RESIDUAL = DI_N_RECENT_K + 1
DI_N_SHARES = DI_N_RESIDUAL + 1
DI_N_K_DEVICE = DI_N_SHARES + 1
DI_N_KINDS = DI_N_K_DEVICE + 1
DI_KIND_PROBE = DI_N_KINDS + 1  # bit j set: recent step event j is a probe
DI_KIND_T = DI_KIND_PROBE + 1  # STEP_KINDS times of recent step events (ns)
DI_Q = DI_KIND_T + STEP_KINDS  # per channel (force, disp), an open quality stretch:
Q_T_START, Q_T_END, Q_COUNTS, Q_N_SAMPLES, Q_N_FRAMES, Q_LEN = 0, 1, 2, 6, 7, 8
DI_SIGN_BAD = DI_Q + 2 * Q_LEN  # 1 once the device's steps and loading disagree in sign
DI_N_TESTS_TODAY = DI_SIGN_BAD + 1  # the day's weight-bearing tests ...
DI_N_USABLE_TODAY = DI_N_TESTS_TODAY + 1  # ... and those with a usable share
DI_READY = DI_N_USABLE_TODAY + 1  # the last two days with a usable test: (day, qualified) x 2
DI_LEN = DI_READY + 4

DF_GAINED_MM = 0
DF_MM_TODAY = 1
DF_SHARE_TODAY = 2  # the day's last usable share; NaN if none
DF_K_DEVICE_TODAY = 3  # NaN if none today
# The last STEP_HISTORY distraction steps with a fit: their k_peak (N/mm), for the sign check
# (the force observed at the ramp's end, whatever the fit makes of the relaxation) ...
DF_RECENT_KPEAK = 4
# ... and the upper end of their k_inst, k_inst + 2 SE (N/mm), for poor regenerate.
DF_RECENT_K = DF_RECENT_KPEAK + STEP_HISTORY
DF_RESIDUAL = DF_RECENT_K + STEP_HISTORY  # 4 recent residual forces (N)
DF_SHARE_DAY = DF_RESIDUAL + 4  # SHARE_HISTORY load-share times (days) ...
DF_SHARE = DF_SHARE_DAY + SHARE_HISTORY  # ... the shares ...
DF_SHARE_STD = DF_SHARE + SHARE_HISTORY  # ... and their standard errors (usable ones only)
DF_SHARE_STD_TODAY = DF_SHARE_STD + SHARE_HISTORY  # NaN if no usable test today
DF_K_DEVICE = DF_SHARE_STD_TODAY + 1  # KDEV_HISTORY device stiffnesses (N/mm)
DF_TODAY = DF_K_DEVICE + KDEV_HISTORY  # TODAY_STEPS rows of (k_inst, k_eq, residual)
DF_PROBES_TODAY = DF_TODAY + 3 * TODAY_STEPS  # TODAY_PROBES rows of (k_inst, k_eq)
DF_LEN = DF_PROBES_TODAY + 2 * TODAY_PROBES

PHASES: tuple[Phase, ...] = ("latency", "distraction", "consolidation", "ready")
PHASE_CODE = {name: code for code, name in enumerate(PHASES)}
FLAG_BITS = {
    "poor_regenerate": 2,
    "separation": 4,
    "loosening": 8,
    "signal_quality": 16,
    "unusable_share": 32,
}


def flag_names(bits: int) -> set[str]:
    return {name for name, bit in FLAG_BITS.items() if bits & bit}


def new_rows(n_devices: int) -> tuple[IntRow, FloatRow]:
    """The int and float rows of devices before their first item: no day, input time, step or
    readiness day yet (-1), and no share or device stiffness today (NaN)."""
    ei = np.zeros((n_devices, DI_LEN), dtype=np.int64)
    ei[:, [kern.EI_DAY, kern.EI_T_FIRST, kern.EI_T_LAST, DI_LAST_STEP_NS]] = -1
    ei[:, [DI_READY, DI_READY + 2]] = -1
    df = np.zeros((n_devices, DF_LEN))
    df[:, [DF_SHARE_TODAY, DF_SHARE_STD_TODAY, DF_K_DEVICE_TODAY]] = math.nan
    return ei, df


def ring_push(row: NDArray[Any], at: int, cap: int, n: int, value: float) -> int:
    """Append value to the history row[at:at + cap] holding n entries; the new length."""
    if n == cap:
        row[at : at + cap - 1] = row[at + 1 : at + cap]
        n -= 1
    row[at + n] = value
    return n + 1
