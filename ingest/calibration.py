"""The registry's calibration, applied to every accepted frame before anything else sees it.

    force_n = force_gain * raw_force + force_offset_n
    disp_mm = disp_gain * raw_disp + disp_offset_mm

Validation (devices/validation.py) checks the raw frame as it came on the wire, device range
included (docs/registry.md); right after it, ingest calibrates, and storage, the DSP, the
estimates and the alerts only ever see calibrated values. A negative `force_gain` is the
polarity of a force sensor mounted the other way round. `ref_load_n` comes from the clinic's
scale, its own instrument, and is taken as it is.

Whole arrays at a time with numpy; the identity calibration (every registry's default) returns
the frame itself and costs nothing.
"""

import numpy as np

from devices.contract import Frame
from devices.registry import Calibration

__all__ = ["calibrate"]


def calibrate(frame: Frame, calibration: Calibration) -> Frame:
    """Return `frame` with the calibration applied to its force and displacement.

    Args:
        frame: an accepted frame of raw readings.
        calibration: its device's calibration from the registry.

    Returns:
        A new frame with `force_n` in N and `disp_mm` in mm; `frame` itself when the
        calibration is the identity. Every other field is unchanged.
    """
    if calibration.is_identity:
        return frame
    force_n = np.multiply(frame.force_n, calibration.force_gain)
    force_n += calibration.force_offset_n
    disp_mm = np.multiply(frame.disp_mm, calibration.disp_gain)
    disp_mm += calibration.disp_offset_mm
    return Frame(
        frame.device,
        frame.seq,
        frame.t0_ns,
        frame.rate_hz,
        force_n,
        disp_mm,
        frame.ref_load_n,
        frame.temp_c,
        frame.battery_pct,
    )
