"""InfluxDB line protocol, built from whole numpy arrays at once.

A frame of 10,000 samples becomes 10,000 lines without one Python object per sample: the
columns are stacked by kind (float, int, bool) and one numba kernel (`osteotel._floatfmt_kernels`)
writes every line straight into a preallocated byte buffer, which leaves as one `bytes`.

Floats are written in the shortest round-trip notation, laid out as Python's `repr` writes them
(`0.1`, `1e+20`, `5e-324`, see `osteotel.floatfmt`), so the server parses back the exact
float64 that was sent. InfluxDB 1.6 and VictoriaMetrics both accept
that notation, exponent and `-0.0` included.

Names and tag values may hold spaces, commas and equals signs (they are escaped), but not
backslashes: InfluxDB 1.x keeps `\\\\` as two characters while 2.x and VictoriaMetrics read it as
one, so no escaping reads back the same everywhere. Control characters are refused too, since a
newline ends a line and a NUL would be lost with the array padding.
"""

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from osteotel._floatfmt_kernels import (
    BOOL_WIDTH,
    FLOAT_WIDTH,
    INT_WIDTH,
    KIND_BOOL,
    KIND_FLOAT,
    KIND_INT,
    _array_lines,
)

__all__ = [
    "array_lines",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "point_line",
    "series_lines",
]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_TAG_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})
_STRING_FIELD_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")


def _check_name(kind: str, text: str) -> None:
    if not text:
        raise ValueError(f"{kind} must not be empty")
    bad = _FORBIDDEN.search(text)
    if bad is not None and bad.group() == "\\":
        raise ValueError(f"{kind} must not contain a backslash: {text!r}")
    if bad is not None:
        raise ValueError(f"{kind} must not contain control characters: {text!r}")


def escape_measurement(name: str) -> str:
    """Escape a measurement name for line protocol (commas and spaces).

    Args:
        name: the measurement name, e.g. `raw`.

    Returns:
        The name as it appears at the start of a line.

    Raises:
        ValueError: the name is empty, starts with `#` (a comment line), or holds a backslash
            or a control character.
    """
    _check_name("measurement", name)
    if name.startswith("#"):
        raise ValueError(f"measurement must not start with '#' (a comment line): {name!r}")
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_tag(value: str) -> str:
    """Escape a tag key, tag value or field key for line protocol (commas, spaces, equals).

    Args:
        value: the key or value, e.g. `P-7F3A`.

    Returns:
        The escaped text.

    Raises:
        ValueError: the text is empty (InfluxDB drops empty tags) or holds a backslash or a
            control character.
    """
    _check_name("tag key, tag value or field key", value)
    return value.translate(_TAG_ESCAPES)


def escape_string_field(v: str) -> str:
    """Escape a string field value (backslashes and double quotes), without the quotes.

    Args:
        v: the field's text; newlines are allowed inside a quoted string field.

    Returns:
        The escaped text, to be wrapped in double quotes.
    """
    return v.translate(_STRING_FIELD_ESCAPES)


# Field keys repeat on every line of a measurement: escape each once.
_field_key = functools.lru_cache(maxsize=4096)(escape_tag)


def _line_prefix(measurement: str, tags: Mapping[str, str]) -> str:
    return _cached_prefix(measurement, tuple(sorted(tags.items())))


@functools.lru_cache(maxsize=65_536)
def _cached_prefix(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    # A device's series prefix repeats on every frame: escape it once. InfluxDB sorts tags by
    # key before indexing; sending them sorted saves it the work.
    parts = [escape_measurement(measurement)]
    parts.extend(f"{escape_tag(key)}={escape_tag(value)}" for key, value in tags)
    return ",".join(parts)


def _is_int64_compatible(dtype: np.dtype[np.generic]) -> bool:
    # uint64 is refused: values above 2**63 - 1 have no int64 field to go to.
    return bool(
        np.issubdtype(dtype, np.signedinteger)
        or (np.issubdtype(dtype, np.unsignedinteger) and dtype.itemsize < 8)
    )


@dataclass(frozen=True, slots=True)
class _Column:
    """Where one field goes: its kind's matrix and row, or why it cannot go anywhere."""

    key: bytes
    kind: int
    row: int
    error: str | None


@dataclass(frozen=True, slots=True)
class _Layout:
    """Everything about a set of fields that does not depend on their values."""

    columns: tuple[_Column, ...]
    keys: npt.NDArray[np.uint8]
    key_starts: npt.NDArray[np.int64]
    kinds: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int64]
    counts: tuple[int, int, int]  # rows of the float, int and bool matrices
    fields_width: int


def _column_kind(dtype: np.dtype[Any]) -> int | None:
    if dtype == np.bool_:
        return KIND_BOOL
    if np.issubdtype(dtype, np.floating):
        return KIND_FLOAT
    if _is_int64_compatible(dtype):
        return KIND_INT
    return None


@functools.lru_cache(maxsize=1024)
def _layout(fields: tuple[tuple[str, np.dtype[Any]], ...]) -> _Layout:
    # Frames of the same device type repeat the same fields and dtypes: work their layout out
    # once. An error is not raised here but kept at its column, so that the caller raises the
    # first problem in field order, exactly where a column-by-column pass would.
    columns: list[_Column] = []
    counts = {KIND_FLOAT: 0, KIND_INT: 0, KIND_BOOL: 0}
    widths = {KIND_FLOAT: FLOAT_WIDTH, KIND_INT: INT_WIDTH + 1, KIND_BOOL: BOOL_WIDTH}
    fields_width = 0
    for position, (name, dtype) in enumerate(fields):
        try:
            key = (("," if position else "") + escape_tag(name) + "=").encode()
        except ValueError as exc:
            columns.append(_Column(b"", -1, -1, str(exc)))
            continue
        kind = _column_kind(dtype)
        if kind is None:
            columns.append(_Column(key, -1, -1, f"field {name!r} has unsupported dtype {dtype}"))
            continue
        columns.append(_Column(key, kind, counts[kind], None))
        counts[kind] += 1
        fields_width += len(key) + widths[kind]
    usable = [column for column in columns if column.error is None]
    return _Layout(
        columns=tuple(columns),
        keys=np.frombuffer(b"".join(column.key for column in usable), dtype=np.uint8),
        key_starts=np.cumsum([0, *(len(column.key) for column in usable)], dtype=np.int64),
        kinds=np.array([column.kind for column in usable], dtype=np.int64),
        rows=np.array([column.row for column in usable], dtype=np.int64),
        counts=(counts[KIND_FLOAT], counts[KIND_INT], counts[KIND_BOOL]),
        fields_width=fields_width,
    )


@functools.lru_cache(maxsize=65_536)
def _prefix_bytes(measurement: str, tags: tuple[tuple[str, str], ...]) -> npt.NDArray[np.uint8]:
    return np.frombuffer((_cached_prefix(measurement, tags) + " ").encode(), dtype=np.uint8)


@functools.lru_cache(maxsize=65_536)
def _series_prefix(measurement: str, tags: tuple[tuple[str, str], ...]) -> npt.NDArray[np.uint8]:
    # A series' tags as its caller gives them, in any order: sorted once per series, not per call.
    return _prefix_bytes(measurement, tuple(sorted(tags)))


def _check_finite_rows(names: Sequence[str], floats: npt.NDArray[np.float64], filled: int) -> None:
    """Raise for the first non-finite value of the first `filled` float rows, in row order."""
    finite = np.isfinite(floats[:filled])
    if finite.all():
        return
    for row in range(filled):
        if not finite[row].all():
            index = int(np.argmin(finite[row]))
            raise ValueError(f"field {names[row]!r} is not finite at index {index}")


@dataclass(frozen=True, slots=True)
class _Columns:
    """Fields checked and stacked by kind, as the kernel reads them."""

    layout: _Layout
    floats: npt.NDArray[np.float64]
    ints: npt.NDArray[np.int64]
    bools: npt.NDArray[np.bool_]
    ts_ns: npt.NDArray[np.int64]


def _columns(fields: Mapping[str, np.ndarray], ts_ns: np.ndarray) -> _Columns:
    """Check the fields and timestamps (array_lines' Raises) and stack the fields by kind."""
    if not fields:
        raise ValueError("a line needs at least one field")
    ts = np.asarray(ts_ns)
    if ts.ndim != 1 or ts.dtype.kind not in "iu":  # numpy's signed and unsigned integers
        raise ValueError(f"ts_ns must be a 1-D integer array, got {ts.dtype} with {ts.ndim} dims")
    arrays = [np.asarray(values) for values in fields.values()]
    names = list(fields)
    for name, values in zip(names, arrays, strict=True):
        if values.shape != ts.shape:
            raise ValueError(f"field {name!r} has shape {values.shape}, ts_ns has {ts.shape}")

    layout = _layout(tuple(zip(names, (values.dtype for values in arrays), strict=True)))
    n = ts.size
    n_floats, n_ints, n_bools = layout.counts
    # Each field goes to one matrix by kind; the kernel reads it back through (kind, row).
    floats = np.empty((n_floats, n), dtype=np.float64)
    ints = np.empty((n_ints, n), dtype=np.int64)
    bools = np.empty((n_bools, n), dtype=np.bool_)
    float_names: list[str] = []
    for name, values, column in zip(names, arrays, layout.columns, strict=True):
        if column.error is not None:
            _check_finite_rows(float_names, floats, len(float_names))
            raise ValueError(column.error)
        if column.kind == KIND_FLOAT:
            floats[column.row] = values
            float_names.append(name)
        elif column.kind == KIND_INT:
            ints[column.row] = values
        else:
            bools[column.row] = values
    _check_finite_rows(float_names, floats, n_floats)
    return _Columns(layout, floats, ints, bools, np.ascontiguousarray(ts, dtype=np.int64))


def _write_lines(
    columns: _Columns,
    prefixes: npt.NDArray[np.uint8],
    prefix_starts: npt.NDArray[np.int64],
    segment_ends: npt.NDArray[np.int64],
    widest_prefix: int,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The kernel's output, trimmed to what it wrote, and the byte end of each segment."""
    layout = columns.layout
    # Prefix, fields, space, timestamp, newline: an upper bound on every line's length.
    line_width = layout.fields_width + widest_prefix + 1 + INT_WIDTH + 1
    out = np.empty(columns.ts_ns.size * line_width, dtype=np.uint8)
    line_ends = np.empty(segment_ends.size, dtype=np.int64)
    used = _array_lines(
        prefixes,
        prefix_starts,
        segment_ends,
        layout.keys,
        layout.key_starts,
        layout.kinds,
        layout.rows,
        columns.floats.view(np.int64),
        columns.ints,
        columns.bools,
        columns.ts_ns,
        out,
        line_ends,
    )
    return out[:used], line_ends


def array_lines(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, np.ndarray],
    ts_ns: np.ndarray,
) -> bytes:
    """Build one line per array element: `m,tag=v f1=<float>,f2=<int>i <ts_ns>\\n`.

    Args:
        measurement: the measurement name.
        tags: tags shared by every line (e.g. hub and device); written sorted by key.
        fields: field name to a 1-D array as long as `ts_ns`. Floating arrays are written as
            float64 in exact round-trip notation, integer arrays with the `i` suffix, booleans
            as `true`/`false`.
        ts_ns: 1-D integer array of timestamps, UTC epoch nanoseconds.

    Returns:
        The lines, each ending in a newline; `b""` when `ts_ns` is empty.

    Raises:
        ValueError: no fields, lengths differ, a float is NaN or infinite, a dtype is not
            supported, or a name cannot be escaped.
    """
    columns = _columns(fields, ts_ns)
    if columns.ts_ns.size == 0:
        return b""
    prefix = _prefix_bytes(measurement, tuple(sorted(tags.items())))
    lines, _ = _write_lines(
        columns,
        prefix,
        np.array([0, prefix.size], dtype=np.int64),
        np.array([columns.ts_ns.size], dtype=np.int64),
        prefix.size,
    )
    return lines.tobytes()


def series_lines(
    measurement: str,
    tags: Sequence[tuple[tuple[str, str], ...]],
    fields: Mapping[str, np.ndarray],
    ts_ns: np.ndarray,
    ends: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """`array_lines` for several series at once, in one kernel call: series k is elements
    ends[k - 1]:ends[k] of the arrays (from 0 for the first) and has the tags tags[k].

    Args:
        measurement: the measurement name.
        tags: each series' tags as (key, value) pairs, e.g.
            `(("device", "P-7F3A"), ("hub", "H-01"))`; written sorted by key.
        fields: field name to a 1-D array as long as `ts_ns`, every series one after the other
            (as in `array_lines`).
        ts_ns: 1-D integer array of timestamps, UTC epoch nanoseconds.
        ends: 1-D int64 array, each series' end in `ts_ns`, one per series, not decreasing,
            the last equal to `ts_ns.size`.

    Returns:
        The lines of every series one after the other, each ending in a newline, as a uint8
        array (`.tobytes()`, or slice it: no copy is made), and each series' end in it, in
        bytes: series k's lines are what `array_lines` gives for its tags and elements.

    Raises:
        ValueError: as `array_lines`, or `ends` does not match the arrays and `tags`.
    """
    columns = _columns(fields, ts_ns)
    ends = np.asarray(ends)
    if (
        ends.ndim != 1
        or ends.size != len(tags)
        or (np.diff(ends, prepend=0) < 0).any()
        or (int(ends[-1]) if ends.size else 0) != columns.ts_ns.size
    ):
        raise ValueError(
            f"ends {ends.tolist()} do not split {columns.ts_ns.size} elements into "
            f"{len(tags)} series"
        )
    if not tags:
        return np.empty(0, dtype=np.uint8), np.empty(0, dtype=np.int64)
    prefixes = [_series_prefix(measurement, series) for series in tags]
    sizes = [prefix.size for prefix in prefixes]
    prefix_starts = np.zeros(len(prefixes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=prefix_starts[1:])
    return _write_lines(
        columns,
        np.concatenate(prefixes),
        prefix_starts,
        np.ascontiguousarray(ends, np.int64),
        max(sizes),
    )


def _scalar_text(name: str, value: float | int | bool | str | np.generic) -> str:
    # Plain Python floats and ints are nearly every field: take them before the general checks.
    if type(value) is float and math.isfinite(value):
        return repr(value)
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return f"{value}i"
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        number = int(value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise ValueError(f"field {name!r} does not fit in int64: {number}")
        return f"{number}i"
    if isinstance(value, float | np.floating):
        real = float(value)
        if not np.isfinite(real):
            raise ValueError(f"field {name!r} is not finite: {real}")
        # repr() is Python's shortest round-trip text, the same digits numpy writes.
        return repr(real)
    if isinstance(value, str):
        return '"' + escape_string_field(value) + '"'
    raise ValueError(f"field {name!r} has unsupported type {type(value).__name__}")


def point_line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, float | int | bool | str | None],
    ts_ns: int,
) -> bytes:
    """Build one line from scalar fields (events, status changes, rejections).

    Args:
        measurement: the measurement name.
        tags: the line's tags; written sorted by key.
        fields: field name to value; `None` values are left out, `bool` becomes
            `true`/`false`, `int` gets the `i` suffix, `str` is quoted.
        ts_ns: the timestamp, UTC epoch nanoseconds.

    Returns:
        One line ending in a newline.

    Raises:
        ValueError: every field is `None`, a float is NaN or infinite, an int does not fit
            int64, or a name cannot be escaped.
    """
    parts = [
        f"{_field_key(name)}={_scalar_text(name, value)}"
        for name, value in fields.items()
        if value is not None
    ]
    if not parts:
        raise ValueError("a line needs at least one field that is not None")
    return f"{_line_prefix(measurement, tags)} {','.join(parts)} {int(ts_ns)}\n".encode()
