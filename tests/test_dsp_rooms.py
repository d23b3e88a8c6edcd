"""The estimator's rooms on their own: the snapshot's layout they share, the histories, the
day's held values and the readiness rule, as functions of one device's rows."""

import math

import numpy as np

from dsp.config import EstimatorConfig
from dsp.daily import close_day, hold_step_values, note_readiness, removal_criterion_met
from dsp.estimator import FleetEstimator
from dsp.layout import DI_N_TODAY, TODAY_STEPS, new_rows, ring_push

DAY = 20_000  # a UTC day number

# What a snapshot of two devices holds: a file written before the rooms were split restores
# only while these stay as they are (a change bumps the snapshot format).
SNAPSHOT_LAYOUT = {
    "step_bins": ("float64", (1, 360)),
    "step_slot_owner": ("int64", (1,)),
    "step_free": ("int64", (1,)),
    "ei": ("int64", (2, 50)),
    "df": ("float64", (2, 193)),
    "steps_float": ("float64", (2, 106)),
    "steps_int": ("int64", (2, 29)),
    "tracking_float": ("float64", (2, 28)),
    "tracking_int": ("int64", (2, 7)),
    "share_float": ("float64", (2, 8)),
    "share_int": ("int64", (2, 2)),
    "share_begin_ns": ("int64", (2,)),
    "share_end_ns": ("int64", (2,)),
    "k_device_float": ("float64", (2, 8)),
    "k_device_int": ("int64", (2, 2)),
    "k_device_begin_ns": ("int64", (2,)),
    "k_device_end_ns": ("int64", (2,)),
    "force_q_float": ("float64", (2, 4)),
    "force_q_int": ("int64", (2, 8)),
    "disp_q_float": ("float64", (2, 4)),
    "disp_q_int": ("int64", (2, 8)),
}


def test_a_snapshot_keeps_its_layout() -> None:
    """A fresh fleet's snapshot has the pinned arrays, in order, and a new device's rows hold
    -1 in its day, input times, last step and readiness days and NaN in today's share, share
    SE and device stiffness, zeros elsewhere."""
    snap = FleetEstimator(capacity=2).snapshot()
    layout = {name: (str(a.dtype), a.shape) for name, a in snap.items() if name != "meta"}
    assert list(layout.items()) == list(SNAPSHOT_LAYOUT.items())
    ei, df = snap["ei"], snap["df"]
    assert np.flatnonzero(ei[1]).tolist() == [0, 1, 2, 7, 46, 48]
    assert set(ei[1][[0, 1, 2, 7, 46, 48]].tolist()) == {-1}
    assert np.flatnonzero(np.isnan(df[1])).tolist() == [2, 3, 152]
    assert np.count_nonzero(np.nan_to_num(df)) == 0


def test_a_full_history_drops_its_oldest_entry() -> None:
    """ring_push appends until the history is full, then shifts the oldest out."""
    row = np.zeros(5)
    n = 0
    for value in (1.0, 2.0, 3.0, 4.0):
        n = ring_push(row, 1, 3, n, value)
    assert n == 3
    assert row.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]


def test_the_days_values_beyond_the_row_count_in_its_medians() -> None:
    """The row holds TODAY_STEPS steps' values; the rest, passed to close_day, count in the
    day's medians, and the next day starts with none held."""
    ei, df = (rows[0] for rows in new_rows(1))
    ei[0] = DAY
    held = [hold_step_values(ei, df, (float(k), 10.0 * k, -1.0)) for k in range(TODAY_STEPS + 1)]
    assert held == [True] * TODAY_STEPS + [False]
    extra = [(float(k), 10.0 * k, -1.0) for k in range(TODAY_STEPS, TODAY_STEPS + 3)]
    record = close_day(
        ei, df, config=EstimatorConfig(), protocol=EstimatorConfig().protocol, device="DX-0001",
        calibration_id=None, k_track_n_per_mm=math.nan, extra_steps=extra, extra_probes=(),
    )  # fmt: skip
    assert record.k_inst_n_per_mm == 5.0  # median of 0..10
    assert record.k_eq_n_per_mm == 50.0
    assert record.f_residual_n == -1.0
    assert math.isnan(record.probe_k_inst_n_per_mm)
    assert record.t_ns == DAY * 86_400 * 10**9
    assert ei[DI_N_TODAY] == 0


def test_readiness_takes_the_last_test_of_each_of_two_days() -> None:
    """Two days whose last usable test qualifies meet the removal criterion; a later test of
    the same day that does not qualify takes it back, and one day alone never meets it."""
    ei, _ = (rows[0] for rows in new_rows(1))
    note_readiness(ei, DAY, 0.02, 0.01, removal_share=0.10)
    note_readiness(ei, DAY, 0.02, 0.01, removal_share=0.10)
    assert not removal_criterion_met(ei)
    note_readiness(ei, DAY + 1, 0.03, 0.01, removal_share=0.10)
    assert removal_criterion_met(ei)
    note_readiness(ei, DAY + 1, 0.5, 0.01, removal_share=0.10)
    assert not removal_criterion_met(ei)
    note_readiness(ei, DAY + 2, -0.01, 0.02, removal_share=0.10)
    assert not removal_criterion_met(ei)  # the day before it no longer qualifies
