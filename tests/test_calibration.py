"""Ingest's calibration step: gain x raw + offset on force and displacement, nothing else."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from devices.contract import Frame
from devices.registry import Calibration
from ingest.calibration import calibrate

FRAME = Frame(
    device="DX-0001",
    seq=7,
    t0_ns=1_764_000_000_000_000_000,
    rate_hz=100.0,
    force_n=np.array([-100.0, -50.5, 0.0, 12.25]),
    disp_mm=np.array([10.0, 10.125, 10.25, 10.5]),
    ref_load_n=np.array([0.0, 100.0, 200.0, 300.0]),
    temp_c=35.5,
    battery_pct=88.0,
)


def test_identity_returns_the_frame_itself() -> None:
    """The identity calibration returns the very same frame: no work on the hot path."""
    identity = Calibration(id="CAL-1")
    assert identity.is_identity
    assert calibrate(FRAME, identity) is FRAME


@pytest.mark.parametrize(
    ("force_gain", "force_offset_n", "disp_gain", "disp_offset_mm"),
    [(2.0, 0.0, 1.0, 0.0), (1.0, -3.5, 1.0, 0.0), (1.0, 0.0, 0.5, 1.25), (-1.0, 4.0, 1.0, 0.0)],
    ids=["force-gain", "force-offset", "disp", "reversed"],
)
def test_calibration_maps_raw_to_gain_times_raw_plus_offset(
    force_gain: float, force_offset_n: float, disp_gain: float, disp_offset_mm: float
) -> None:
    """force and disp become gain x raw + offset; ref_load_n and metadata are unchanged."""
    calibration = Calibration(
        id="CAL-2",
        force_gain=force_gain,
        force_offset_n=force_offset_n,
        disp_gain=disp_gain,
        disp_offset_mm=disp_offset_mm,
    )
    assert not calibration.is_identity
    out = calibrate(FRAME, calibration)
    assert_array_equal(out.force_n, force_gain * FRAME.force_n + force_offset_n)
    assert_array_equal(out.disp_mm, disp_gain * FRAME.disp_mm + disp_offset_mm)
    assert out.ref_load_n is FRAME.ref_load_n
    assert (out.device, out.seq, out.t0_ns, out.rate_hz, out.temp_c, out.battery_pct) == (
        FRAME.device,
        FRAME.seq,
        FRAME.t0_ns,
        FRAME.rate_hz,
        FRAME.temp_c,
        FRAME.battery_pct,
    )
    assert_array_equal(FRAME.force_n, [-100.0, -50.5, 0.0, 12.25])  # the raw frame is untouched


def test_a_negative_force_gain_turns_a_reversed_reading_into_compression() -> None:
    """A sensor mounted the other way reads -F; force_gain -1 gives +F back."""
    raw = Frame("DX-0001", 0, 0, 10.0, np.array([-5.0, -120.0]), np.array([1.0, 1.0]))
    out = calibrate(raw, Calibration(id="CAL-3", force_gain=-1.0))
    assert_array_equal(out.force_n, [5.0, 120.0])
