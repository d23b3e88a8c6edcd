"""Numbers to ASCII, fast and exact: whole numpy arrays in, one `bytes` out.

Every float64 is written as the shortest decimal that parses back to the same bits, laid out
as Python's `repr` lays it out (`0.1`, `2.0`, `-0.0`, `1e+20`, `5e-324`), so the text is valid
in InfluxDB line protocol and in JSON and is at most 24 bytes long. The digits come from the
Schubfach algorithm in `osteotel._floatfmt_kernels`, compiled by numba; no Python object is
made per value.

NaN and infinities have no place in line protocol or in strict JSON: they are refused unless
the caller asks for JSON's extensions (`NaN`, `Infinity`, `-Infinity`), which the emulator uses
to fake a faulty device.
"""

import numpy as np
import numpy.typing as npt

from osteotel._floatfmt_kernels import (
    FLOAT_WIDTH,
    INT_WIDTH,
    _format_floats,
    _format_ints,
)

__all__ = ["FLOAT_WIDTH", "INT_WIDTH", "format_floats", "format_ints", "warm_up"]


def _separator_bytes(separator: bytes) -> npt.NDArray[np.uint8]:
    return np.frombuffer(separator, dtype=np.uint8).copy()


def format_floats(
    values: npt.ArrayLike, *, separator: bytes = b",", allow_non_finite: bool = False
) -> bytes:
    """Write float values as exact round-trip decimal text, joined by `separator`.

    Args:
        values: a 1-D array of floats (any float dtype, widened to float64 exactly) or
            anything numpy turns into one.
        separator: bytes written between two values, e.g. `b","` for the inside of a JSON array.
        allow_non_finite: write NaN and infinities as `NaN`, `Infinity` and `-Infinity`
            instead of refusing them.

    Returns:
        The text, ASCII; `b""` for no values.

    Raises:
        ValueError: the values are not 1-D or not floats, or one is NaN or infinite and
            `allow_non_finite` is false.
    """
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected a 1-D float array, got {array.dtype} with {array.ndim} dims")
    as_float64 = np.ascontiguousarray(array, dtype=np.float64)
    if not allow_non_finite:
        finite = np.isfinite(as_float64)
        if not finite.all():
            index = int(np.argmin(finite))
            raise ValueError(f"value at index {index} is not finite: {as_float64[index]!r}")
    out = np.empty(as_float64.size * (FLOAT_WIDTH + len(separator)), dtype=np.uint8)
    used = _format_floats(as_float64.view(np.int64), _separator_bytes(separator), out)
    return out[:used].tobytes()


def format_ints(values: npt.ArrayLike, *, separator: bytes = b",") -> bytes:
    """Write integer values in decimal, joined by `separator`.

    Args:
        values: a 1-D array of signed integers, or unsigned ones narrower than 64 bits
            (every value must fit int64).
        separator: bytes written between two values.

    Returns:
        The text, ASCII; `b""` for no values.

    Raises:
        ValueError: the values are not 1-D, not integers, or uint64.
    """
    array = np.asarray(values)
    if array.ndim != 1 or not (
        np.issubdtype(array.dtype, np.signedinteger)
        or (np.issubdtype(array.dtype, np.unsignedinteger) and array.dtype.itemsize < 8)
    ):
        raise ValueError(
            f"expected a 1-D int64-compatible array, got {array.dtype} with {array.ndim} dims"
        )
    as_int64 = np.ascontiguousarray(array, dtype=np.int64)
    out = np.empty(as_int64.size * (INT_WIDTH + len(separator)), dtype=np.uint8)
    used = _format_ints(as_int64, _separator_bytes(separator), out)
    return out[:used].tobytes()


def warm_up() -> None:
    """Compile (or load from numba's cache) every formatting kernel now, with tiny arrays, so
    the first real frame does not pay for it."""
    # Imported here: the store imports this module, not the other way round.
    from osteotel.store.lineproto import array_lines, series_lines  # noqa: PLC0415

    format_floats(np.array([0.1, -2.0, np.nan]), allow_non_finite=True)
    format_ints(np.array([-1, 2]))
    array_lines(
        "m",
        {"t": "v"},
        {"f": np.array([1.5]), "i": np.array([3]), "b": np.array([True])},
        np.array([1]),
    )
    series_lines("m", [(("t", "v"),)], {"f": np.array([1.5])}, np.array([1]), np.array([1]))
