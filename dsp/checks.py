"""The input checks every tracker's wrapper makes before its kernel runs: arrays one-
dimensional float64, sample rates positive and finite; and the complete estimator's check of
a batch of frames. Kernels never check (docs/dsp.md)."""

import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["as_float_array", "check_batch", "check_rate"]


def as_float_array(name: str, values: NDArray[np.floating] | list[float]) -> NDArray[np.float64]:
    """`values` as a contiguous one-dimensional float64 array.

    Raises:
        ValueError: it has another number of dimensions (`name` says which input).
    """
    arr = np.ascontiguousarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def check_rate(rate_hz: float) -> float:
    """The sample spacing (ns) of a rate (Hz).

    Raises:
        ValueError: the rate is not positive and finite.
    """
    if not (math.isfinite(rate_hz) and rate_hz > 0.0):
        raise ValueError(f"rate_hz={rate_hz} must be positive and finite")
    return 1e9 / rate_hz


def check_batch(  # noqa: PLR0917 - the columns of a batch
    n_frames: int,
    offsets: NDArray[np.int64],
    force: NDArray[np.float64],
    disp: NDArray[np.float64],
    ref: NDArray[np.float64] | None,
    t0_ns: NDArray[np.int64],
    rate_hz: NDArray[np.float64],
) -> None:
    """Check a batch of frames (`FleetEstimator.frames`) before any state changes.

    Raises:
        ValueError: its columns disagree in length, its offsets do not rise from 0 to the
            sample count, or a rate is not positive and finite.
    """
    if force.shape != disp.shape or (ref is not None and ref.shape != force.shape):
        raise ValueError("force_n, disp_mm and ref_load_n must have the same length")
    if offsets.shape != (n_frames + 1,) or t0_ns.shape != (n_frames,):
        raise ValueError(f"{n_frames} frames need {n_frames + 1} offsets and {n_frames} t0_ns")
    if rate_hz.shape != (n_frames,):
        raise ValueError(f"{n_frames} frames need {n_frames} rate_hz")
    if offsets[0] != 0 or offsets[-1] != force.size or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must rise from 0 to the sample count")
    bad = ~(np.isfinite(rate_hz) & (rate_hz > 0.0))
    if np.any(bad):
        j = int(np.argmax(bad))
        raise ValueError(f"rate_hz[{j}]={rate_hz[j]} must be positive and finite")
