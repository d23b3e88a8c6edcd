"""Line protocol built from numpy arrays and scalars (no server needed)."""

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from osteotel.store.lineproto import (
    array_lines,
    escape_measurement,
    escape_string_field,
    escape_tag,
    point_line,
)


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def test_array_lines_builds_one_line_per_sample() -> None:
    """Each array element becomes one line with tags sorted by key and ints suffixed with i."""
    lines = array_lines(
        "raw",
        {"hub": "H-01", "device": "D-7F3A"},
        {"force_n": np.array([12.5, 0.1]), "seq": np.array([7, 8], dtype=np.int64)},
        np.array([1_700_000_000_000_000_000, 1_700_000_000_010_000_000]),
    )
    assert lines == (
        b"raw,device=D-7F3A,hub=H-01 force_n=12.5,seq=7i 1700000000000000000\n"
        b"raw,device=D-7F3A,hub=H-01 force_n=0.1,seq=8i 1700000000010000000\n"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, b"0.1"),
        (1e20, b"1e+20"),
        (-0.0, b"-0.0"),
        (5e-324, b"5e-324"),
        (float(np.float32(0.1)), b"0.10000000149011612"),
        (2.0, b"2.0"),
    ],
    ids=["tenth", "huge", "negative-zero", "smallest-subnormal", "float32-cast", "integral"],
)
def test_float_fields_use_shortest_round_trip_text(value: float, text: bytes) -> None:
    """A float64 field is written as the shortest text that parses back to the same bits."""
    lines = array_lines("m", {}, {"f": np.array([value])}, np.array([1]))
    assert lines == b"m f=" + text + b" 1\n"


def test_float32_arrays_are_written_as_their_float64_values() -> None:
    """A float32 array is widened to float64, so the stored value is the float32's exact value."""
    lines = array_lines("m", {}, {"f": np.array([0.1], dtype=np.float32)}, np.array([1]))
    assert lines == b"m f=0.10000000149011612 1\n"


@given(
    hnp.arrays(
        np.float64,
        st.integers(1, 50),
        elements=st.floats(allow_nan=False, allow_infinity=False),
    )
)
def test_float_text_parses_back_bitwise(values: np.ndarray) -> None:
    """Every finite float64 survives formatting and parsing bit for bit."""
    lines = array_lines("m", {}, {"f": values}, np.arange(values.size)).decode().splitlines()
    parsed = [float(line.split(" ")[1].removeprefix("f=")) for line in lines]
    assert [_bits(v) for v in parsed] == [_bits(float(v)) for v in values]


def test_bool_fields_are_written_as_true_and_false() -> None:
    """Boolean arrays become the line protocol words true and false."""
    lines = array_lines("m", {}, {"ok": np.array([True, False])}, np.array([1, 2]))
    assert lines == b"m ok=true 1\nm ok=false 2\n"


def test_empty_arrays_give_no_bytes() -> None:
    """Zero samples give zero bytes, not a blank line."""
    assert array_lines("m", {"a": "b"}, {"f": np.array([])}, np.array([], dtype=np.int64)) == b""


@pytest.mark.parametrize(
    "bad", [np.nan, np.inf, -np.inf], ids=["nan", "positive-infinity", "negative-infinity"]
)
def test_non_finite_floats_are_refused_with_their_index(bad: float) -> None:
    """A NaN or infinite value raises ValueError naming the field and the index."""
    with pytest.raises(ValueError, match=r"'force_n' is not finite at index 2"):
        array_lines("m", {}, {"force_n": np.array([1.0, 2.0, bad])}, np.array([1, 2, 3]))


@pytest.mark.parametrize(
    ("fields", "ts_ns", "message"),
    [
        ({"f": np.array([1.0, 2.0])}, np.array([1]), "shape"),
        ({}, np.array([1]), "at least one field"),
        ({"f": np.array([1.0])}, np.array([1.0]), "integer"),
        ({"f": np.array(["x"])}, np.array([1]), "unsupported dtype"),
        ({"f": np.array([1], dtype=np.uint64)}, np.array([1]), "unsupported dtype"),
    ],
    ids=["length-mismatch", "no-fields", "float-timestamps", "string-array", "uint64"],
)
def test_malformed_arrays_are_refused(
    fields: dict[str, np.ndarray], ts_ns: np.ndarray, message: str
) -> None:
    """Arrays that cannot make valid lines raise ValueError saying why."""
    with pytest.raises(ValueError, match=message):
        array_lines("m", {}, fields, ts_ns)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [("a b", "a\\ b"), ("a,b", "a\\,b"), ("a=b", "a=b"), ('q"q', 'q"q')],
    ids=["space", "comma", "equals-kept", "quote-kept"],
)
def test_measurement_escaping(raw: str, escaped: str) -> None:
    """Measurement names escape spaces and commas only."""
    assert escape_measurement(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [("a b", "a\\ b"), ("a,b", "a\\,b"), ("a=b", "a\\=b"), ("P-7F3A", "P-7F3A")],
    ids=["space", "comma", "equals", "plain"],
)
def test_tag_escaping(raw: str, escaped: str) -> None:
    """Tag keys, tag values and field keys escape spaces, commas and equals signs."""
    assert escape_tag(raw) == escaped


@pytest.mark.parametrize(
    "bad", ["", "a\\b", "a\nb", "a\0b"], ids=["empty", "backslash", "newline", "nul"]
)
def test_unrepresentable_tags_are_refused(bad: str) -> None:
    """Empty tags, backslashes and control characters raise ValueError."""
    with pytest.raises(ValueError, match="must not"):
        escape_tag(bad)


def test_comment_like_measurement_is_refused() -> None:
    """A measurement starting with # would be read as a comment, so it raises ValueError."""
    with pytest.raises(ValueError, match="comment"):
        escape_measurement("#raw")


def test_string_fields_escape_backslashes_and_quotes() -> None:
    """String field text escapes backslashes and double quotes, and keeps newlines."""
    assert escape_string_field('a\\b"c\nd') == 'a\\\\b\\"c\nd'


def test_point_line_formats_each_scalar_type() -> None:
    """Scalars become float, i-suffixed int, true/false and quoted string; None is left out."""
    line = point_line(
        "event",
        {"type": "step", "hub": "H-01"},
        {"delta_mm": 0.25, "code": 3, "ok": True, "detail": 'said "no"', "pct": None},
        1_700_000_000_000_000_000,
    )
    assert line == (
        b'event,hub=H-01,type=step delta_mm=0.25,code=3i,ok=true,detail="said \\"no\\"" '
        b"1700000000000000000\n"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"a": None}, "not None"),
        ({"a": float("nan")}, "not finite"),
        ({"a": 2**63}, "int64"),
    ],
    ids=["all-none", "nan", "int-overflow"],
)
def test_point_line_refuses_unwritable_values(fields: dict[str, object], message: str) -> None:
    """A line with no value, a NaN or an int beyond int64 raises ValueError."""
    with pytest.raises(ValueError, match=message):
        point_line("m", {}, fields, 1)  # type: ignore[arg-type]


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_point_line_and_array_lines_agree_on_floats(value: float) -> None:
    """A float is written with the same digits by point_line and array_lines."""
    assert point_line("m", {}, {"f": value}, 1) == array_lines(
        "m", {}, {"f": np.array([value])}, np.array([1])
    )


def test_timestamps_are_written_whole_around_second_boundaries() -> None:
    """Timestamps in one call, repeating and changing their whole seconds, below one second,
    negative and at the int64 ends, each written as its decimal digits."""
    ts_ns = [
        1_780_000_000_000_000_000,
        1_780_000_000_999_999_999,
        1_780_000_001_000_000_000,
        1_780_000_000_000_000_001,
        0,
        999_999_999,
        1_000_000_000,
        1_000_000_009,
        10_000_000_000,
        2**63 - 1,
        -1,
        -(2**63),
        1_780_000_000_000_000_000,
    ]
    lines = array_lines("m", {}, {"f": np.zeros(len(ts_ns))}, np.array(ts_ns, dtype=np.int64))
    assert lines.decode().splitlines() == [f"m f=0.0 {t_ns}" for t_ns in ts_ns]
