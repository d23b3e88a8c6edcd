"""Exact float and int formatting kernels, the line protocol and JSON built from them."""

import argparse
import itertools
import json
import re
import struct
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from apps.bench import lineproto as lineproto_bench
from apps.services import InfluxDB
from devices.codec import encode_frame_json
from devices.contract import Frame
from osteotel.floatfmt import FLOAT_WIDTH, format_floats, format_ints, warm_up
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore
from osteotel.store.lineproto import array_lines

# What InfluxDB line protocol and JSON both accept as a number.
_NUMBER = re.compile(rb"-?(0|[1-9][0-9]*)(\.[0-9]+)?(e[+-][0-9]+)?")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_DOUBLE_MAX = 1.7976931348623157e308
_DOUBLE_MIN_NORMAL = 2.2250738585072014e-308


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _texts(values: np.ndarray) -> list[bytes]:
    return format_floats(values).split(b",") if values.size else []


def _from_bit_patterns(patterns: list[int]) -> np.ndarray:
    values = np.array(patterns, dtype=np.uint64).view(np.float64)
    return values[np.isfinite(values)]


def _families() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    powers_of_two = np.ldexp(1.0, np.arange(-1074, 1024))
    neighbours = np.concatenate(
        [powers_of_two.view(np.uint64) - 1, powers_of_two.view(np.uint64) + 1]
    ).view(np.float64)
    return {
        "subnormals": np.concatenate(
            [
                np.arange(1, 2000, dtype=np.uint64),
                rng.integers(1, 2**52, 2000, dtype=np.uint64),
                np.array([2**52 - 1], dtype=np.uint64),
            ]
        ).view(np.float64),
        "powers-of-two": powers_of_two,
        "power-of-two-neighbours": neighbours[np.isfinite(neighbours)],
        "powers-of-ten": np.array([float(f"1e{e}") for e in range(-323, 309)]),
        "extremes": np.array(
            [_DOUBLE_MAX, -_DOUBLE_MAX, _DOUBLE_MIN_NORMAL, 5e-324, -5e-324, 0.0, -0.0]
        ),
        "integers-to-2**53": np.concatenate(
            [
                np.arange(-1000, 1000),
                rng.integers(-(2**53), 2**53, 2000),
                np.array([2**53, -(2**53), 2**53 - 1]),
            ]
        ).astype(np.float64),
        "float32-cast": np.concatenate(
            [
                (rng.standard_normal(2000) * 10.0 ** rng.integers(-30, 30, 2000)).astype(
                    np.float32
                ),
                _from_bit_patterns(rng.integers(0, 2**32, 2000).tolist())
                .astype(np.uint64)
                .astype(np.uint32)
                .view(np.float32),
            ]
        ).astype(np.float64),
        "notation-boundaries": np.array(
            [1e-4, 1e-5, 1.5e-4, 9.999e-5, 1e15, 1e16, 9999999999999998.0, 1.2345e16, 0.1, 2.0]
        ),
    }


_FAMILIES = _families()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=64))
def test_any_finite_bit_pattern_parses_back_bitwise(patterns: list[int]) -> None:
    """Every finite float64 bit pattern is written as text that parses back to the same bits."""
    values = _from_bit_patterns(patterns)
    texts = _texts(values)
    assert [_bits(float(text)) for text in texts] == [_bits(v) for v in values.tolist()]
    assert all(len(text) <= FLOAT_WIDTH and _NUMBER.fullmatch(text) for text in texts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=64))
def test_text_is_python_repr(values: list[float]) -> None:
    """The text is exactly Python's repr: the shortest round-trip digits, laid out the same way."""
    assert _texts(np.array(values)) == [repr(v).encode() for v in values]


@pytest.mark.parametrize("family", list(_FAMILIES), ids=list(_FAMILIES))
def test_special_families_parse_back_bitwise(family: str) -> None:
    """Subnormals, powers of two and ten, extremes, -0.0, integers and float32 values round-trip."""
    values = _FAMILIES[family]
    texts = _texts(values)
    assert [_bits(float(text)) for text in texts] == [_bits(v) for v in values.tolist()]
    assert texts == [repr(v).encode() for v in values.tolist()]
    assert max(len(text) for text in texts) <= FLOAT_WIDTH


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (-0.0, b"-0.0"),
        (0.0, b"0.0"),
        (5e-324, b"5e-324"),
        (1e-4, b"0.0001"),
        (1e-5, b"1e-05"),
        (1e16, b"1e+16"),
        (1e15, b"1000000000000000.0"),
        (_DOUBLE_MAX, b"1.7976931348623157e+308"),
        (-2.2250738585072014e-308, b"-2.2250738585072014e-308"),
        (123.456, b"123.456"),
    ],
    ids=[
        "negative-zero",
        "zero",
        "smallest-subnormal",
        "last-positional-small",
        "first-exponent-small",
        "first-exponent-large",
        "last-positional-large",
        "largest",
        "longest-text",
        "ordinary",
    ],
)
def test_known_texts(value: float, text: bytes) -> None:
    """Landmark values are written in the expected notation."""
    assert format_floats(np.array([value])) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(np.nan, b"NaN"), (np.inf, b"Infinity"), (-np.inf, b"-Infinity")],
    ids=["nan", "infinity", "negative-infinity"],
)
def test_non_finite_values_use_json_words_only_when_allowed(value: float, text: bytes) -> None:
    """NaN and infinities raise ValueError with their index unless JSON's words are asked for."""
    values = np.array([1.0, value])
    with pytest.raises(ValueError, match="index 1 is not finite"):
        format_floats(values)
    assert format_floats(values, allow_non_finite=True) == b"1.0," + text


def test_separator_and_empty_input() -> None:
    """Values are joined by the separator given, and no values give no bytes."""
    assert format_floats(np.array([0.5, 2.0], dtype=np.float32), separator=b", ") == b"0.5, 2.0"
    assert format_floats(np.array([], dtype=np.float64)) == b""
    assert format_ints(np.array([], dtype=np.int64)) == b""


@pytest.mark.parametrize(
    ("call", "values"),
    [
        (format_floats, np.array([1, 2])),
        (format_floats, np.ones((2, 2))),
        (format_ints, np.array([1.0])),
        (format_ints, np.array([1], dtype=np.uint64)),
    ],
    ids=["floats-given-ints", "floats-2d", "ints-given-floats", "ints-given-uint64"],
)
def test_wrong_arrays_are_refused(call: object, values: np.ndarray) -> None:
    """An array of the wrong dtype or shape raises ValueError."""
    assert callable(call)
    with pytest.raises(ValueError, match="expected a 1-D"):
        call(values)


@settings(deadline=None)
@given(st.lists(st.integers(_INT64_MIN, _INT64_MAX), min_size=1, max_size=64))
def test_int64_text_is_python_str(values: list[int]) -> None:
    """Every int64 is written as Python writes it."""
    assert format_ints(np.array(values, dtype=np.int64)) == ",".join(map(str, values)).encode()


@pytest.mark.parametrize(
    "value",
    [_INT64_MIN, _INT64_MIN + 1, -10, -9, -1, 0, 9, 10, 99, 100, _INT64_MAX],
    ids=["min", "min-plus-1", "-10", "-9", "-1", "0", "9", "10", "99", "100", "max"],
)
def test_int64_edges(value: int) -> None:
    """Digit-count and sign edges of int64 are written as Python writes them."""
    assert format_ints(np.array([value], dtype=np.int64)) == str(value).encode()


def _reference_lines(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, np.ndarray],
    ts_ns: np.ndarray,
) -> bytes:
    """Plain Python line protocol: f-strings with repr, for names that need no escaping."""
    head = ",".join([measurement, *(f"{key}={tags[key]}" for key in sorted(tags))])

    def text(value: float | int | bool) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return f"{value}i"
        return repr(value)

    columns = {name: values.tolist() for name, values in fields.items()}
    lines = []
    for i, t in enumerate(ts_ns.tolist()):
        body = ",".join(f"{name}={text(column[i])}" for name, column in columns.items())
        lines.append(f"{head} {body} {t}\n")
    return "".join(lines).encode()


def _parse(lines: bytes) -> list[tuple[str, list[tuple[str, bytes]], int]]:
    parsed = []
    for line in lines.decode().splitlines():
        head, body, ts = line.split(" ")
        fields = []
        for pair in body.split(","):
            name, text = pair.split("=")
            if text.endswith("i"):
                fields.append((name, struct.pack("<q", int(text[:-1]))))
            elif text in {"true", "false"}:
                fields.append((name, text.encode()))
            else:
                fields.append((name, _bits(float(text))))
        parsed.append((head, fields, int(ts)))
    return parsed


_finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, n, elements=_finite),
            hnp.arrays(
                np.float32,
                n,
                elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
            ),
            hnp.arrays(np.int64, n),
            hnp.arrays(np.bool_, n),
            hnp.arrays(np.int64, n, elements=st.integers(0, _INT64_MAX)),
        )
    )
)
def test_array_lines_match_a_plain_python_reference(
    columns: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """array_lines gives the lines f-strings with repr give, value for value and byte for byte."""
    force_n, disp_mm, seq, ok, ts_ns = columns
    tags = {"hub": "H-01", "device": "P-7F3A"}
    fields = {"force_n": force_n, "disp_mm": disp_mm, "seq": seq, "ok": ok}
    expected = _reference_lines("raw", tags, {**fields, "disp_mm": disp_mm.astype(float)}, ts_ns)
    lines = array_lines("raw", tags, fields, ts_ns)
    assert _parse(lines) == _parse(expected)
    assert lines == expected


def test_encode_frame_json_matches_json_dumps() -> None:
    """A JSON frame is the text json.dumps writes for the same document, NaN included."""
    rng = np.random.default_rng(3)
    force_n = rng.standard_normal(300) * 10.0 ** rng.integers(-300, 300, 300)
    force_n[7] = np.nan
    frame = Frame(
        "P-7F3A", 9, 1_700_000_000_000_000_001, 100.0, force_n, rng.random(300), temp_c=36.5
    )
    document = {
        "v": 1,
        "device": "P-7F3A",
        "seq": 9,
        "t0_ns": 1_700_000_000_000_000_001,
        "rate_hz": 100.0,
        "force_n": force_n.tolist(),
        "disp_mm": frame.disp_mm.tolist(),
        "temp_c": 36.5,
    }
    assert encode_frame_json(frame) == json.dumps(document, separators=(",", ":")).encode()


@pytest.fixture
def store(influxdb: InfluxDB) -> Iterator[InfluxStore]:
    """A v1 store on a fresh database of the session's influxd."""
    settings_ = InfluxSettings(url=influxdb.url, database=f"floatfmt_{next(_databases)}")
    with InfluxStore(settings_) as store_:
        store_.ensure_database()
        yield store_


_databases = itertools.count()


def test_special_families_read_back_bitwise_from_influxd(store: InfluxStore) -> None:
    """Every special family, written by array_lines, reads back from influxd bit for bit."""
    values = np.concatenate(list(_FAMILIES.values()))
    ts_ns = 1_700_000_000 * 10**9 + np.arange(values.size, dtype=np.int64) * 1_000_003
    seq = np.arange(values.size, dtype=np.int64) * (2**40) - 2**62
    store.write(
        array_lines("raw", {"hub": "H-01", "device": "P-7F3A"}, {"f": values, "s": seq}, ts_ns)
    )
    [series] = store.query('SELECT "f", "s" FROM "raw"')
    assert [row[0] for row in series.values] == ts_ns.tolist()
    assert [_bits(float(row[1])) for row in series.values] == [_bits(v) for v in values.tolist()]
    assert [row[2] for row in series.values] == seq.tolist()


def test_warm_up_compiles_every_kernel() -> None:
    """warm_up runs every formatting kernel once without error."""
    warm_up()
    assert format_floats(np.array([0.25])) == b"0.25"


def test_benchmark_runs_on_a_tiny_input() -> None:
    """`osteotel bench lineproto` on a few samples reports identical outputs from all builders."""
    parser = argparse.ArgumentParser()
    lineproto_bench.configure(parser)
    args = parser.parse_args(
        ["--samples", "50", "--repeat", "1", "--frame-samples", "20", "--frames", "2"]
    )
    figures = lineproto_bench.run(args)
    assert figures["lines_identical"] is True
    assert figures["json_identical"] is True
    assert figures["samples"] == 50
