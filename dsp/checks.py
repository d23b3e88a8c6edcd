"""The input checks every tracker's wrapper makes before its kernel runs: arrays one-
dimensional float64, sample rates positive and finite. Kernels never check (docs/dsp.md)."""

import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["as_float_array", "check_rate"]


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
