"""A batch's frames written in one kernel call give the bytes each frame alone gives."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from devices.codec import Encoding
from devices.contract import Frame
from ingest.records import frame_lines, frames_lines, summary_lines, warm_up
from osteotel._floatfmt_kernels import _array_lines
from osteotel.store.lineproto import array_lines, series_lines

_T0_NS = 1_780_000_000_123_456_789


def _frame(device: str, seq: int, n: int, rate_hz: float, *, ref: bool, seed: int) -> Frame:
    rng = np.random.default_rng(seed)
    force_n = rng.normal(150.0, 40.0, n)
    force_n[::7] = np.round(force_n[::7], 2)  # sensor resolution, as the JSON hubs send
    # Binary hubs send float32: their values widened to float64.
    disp_mm = rng.normal(20.0, 0.002, n).astype(np.float32).astype(np.float64)
    ref_load_n = rng.normal(300.0, 5.0, n) if ref else None
    return Frame(
        device,
        seq,
        _T0_NS + seq * 1_000_000_007,
        rate_hz,
        force_n,
        disp_mm,
        ref_load_n,
        temp_c=36.5 if seq % 2 else None,
        battery_pct=81.0 if seq % 3 == 0 else None,
    )


def _varied_frames() -> list[tuple[str, Frame, Encoding]]:
    frames: list[tuple[str, Frame, Encoding]] = []
    rates_hz = [100.0, 1.0, 333.3, 10_000.0, 25.0]
    for number in range(15):
        frame = _frame(
            f"DX-{number % 4:04d}",
            number,
            n=[100, 1, 7, 300, 100][number % 5],
            rate_hz=rates_hz[number % 5],
            ref=number % 3 == 1,
            seed=number,
        )
        frames.append((f"HUB-{number % 2 + 1:03d}", frame, "binary" if number % 2 else "json"))
    # The extremes a float can take, in force and reference load.
    specials = np.array([0.0, -0.0, -1.5, 1e300, -1e-300, 5e-324, 1.7976931348623157e308, 1e16])
    frames.append(
        ("HUB-001", Frame("DX-0009", 99, 0, 100.0, specials, specials[::-1], specials), "json")
    )
    # Metadata of other types than a decoder gives (written by point_line's general rules):
    # an int temperature, a numpy rate, the largest sequence number, tags to escape.
    ones = np.ones(3)
    frames += [
        ("HUB-002", Frame("DX-0001", 2**32 - 1, _T0_NS, 50.0, ones, ones, temp_c=36), "binary"),
        ("HUB-002", Frame("DX-0001", 5, _T0_NS, np.float64(50.0), ones, ones), "binary"),
        ("HUB 3,x", Frame("DX=0001", 6, _T0_NS, 0.5, ones, ones, battery_pct=1e-5), "json"),
    ]
    return frames


def test_frames_lines_give_frame_lines_bytes_for_varied_frames() -> None:
    """Devices, hubs, rates, lengths, reference loads present or not, negative, zero, huge and
    tiny values: each frame's parts are its frame_lines bytes, in the order given."""
    frames = _varied_frames()
    parts = frames_lines(frames)
    assert len(parts) == len(frames)
    for (hub, frame, encoding), (raw, meta) in zip(frames, parts, strict=True):
        assert bytes(raw) + meta == frame_lines(hub, frame, encoding)
        assert bytes(raw).count(b"\n") == frame.n
    whole = b"".join(part for pair in parts for part in pair)
    assert whole == b"".join(frame_lines(*frame) for frame in frames)


def test_frames_lines_of_no_frames_is_empty() -> None:
    """No frames, no parts."""
    assert frames_lines([]) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 30),
            st.sampled_from([1.0, 10.0, 100.0, 333.3, 10_000.0]),
            st.booleans(),
            hnp.arrays(
                np.float64,
                30,
                elements=st.floats(allow_nan=False, allow_infinity=False, width=64),
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_frames_lines_match_frame_lines_for_any_values(
    specs: list[tuple[int, float, bool, np.ndarray]],
) -> None:
    """Any finite values, lengths and rates: the batched bytes are the per-frame bytes."""
    frames: list[tuple[str, Frame, Encoding]] = []
    for seq, (n, rate_hz, ref, values) in enumerate(specs):
        frame = Frame(
            f"DX-{seq % 3:04d}",
            seq,
            _T0_NS + seq,
            rate_hz,
            values[:n],
            values[::-1][:n],
            values[:n] if ref else None,
        )
        frames.append(("HUB-001", frame, "json"))
    whole = b"".join(part for pair in frames_lines(frames) for part in pair)
    assert whole == b"".join(frame_lines(*frame) for frame in frames)


def test_series_lines_give_array_lines_of_each_series() -> None:
    """Each series' slice of the buffer is array_lines of its tags and elements; an empty series
    takes no bytes."""
    force_n = np.array([1.5, -2.0, 0.1, 3e-7, 12.0])
    seq = np.array([1, 2, 3, 4, 5])
    ts_ns = np.arange(5, dtype=np.int64) * 10 + _T0_NS
    tags = [(("device", "DX-1"), ("hub", "H 1")), (("hub", "H-2"), ("device", "DX,2")), ()]
    ends = np.array([2, 2, 5])
    lines, line_ends = series_lines("raw", tags, {"f": force_n, "s": seq}, ts_ns, ends)
    start, begin = 0, 0
    for series, end, line_end in zip(tags, ends, line_ends, strict=True):
        expected = array_lines(
            "raw",
            dict(series),
            {"f": force_n[begin:end], "s": seq[begin:end]},
            ts_ns[begin:end],
        )
        assert lines[start:line_end].tobytes() == expected
        start, begin = line_end, end
    assert start == lines.size


@pytest.mark.parametrize(
    "ends",
    [[1, 2], [3], [2, 1, 3], [1, 2, 4]],
    ids=["short-of-the-end", "fewer-than-tags", "decreasing", "past-the-end"],
)
def test_series_lines_refuse_ends_that_do_not_split_the_arrays(ends: list[int]) -> None:
    """Ends that do not cut the arrays into one series per tag set are refused."""
    tags = [(("d", "1"),), (("d", "2"),), (("d", "3"),)]
    with pytest.raises(ValueError, match="do not split"):
        series_lines("m", tags, {"f": np.ones(3)}, np.arange(3), np.array(ends))


def test_series_lines_refuse_a_non_finite_value() -> None:
    """A NaN is refused as array_lines refuses it, naming the field and index."""
    values = np.array([1.0, np.nan])
    with pytest.raises(ValueError, match="'f' is not finite at index 1"):
        series_lines("m", [(("d", "1"),)], {"f": values}, np.arange(2), np.array([2]))


def test_warm_up_compiles_what_the_frame_path_runs() -> None:
    """After the warm-up ingest runs at start, writing frames compiles nothing more: the
    first live frame does not pay for numba."""
    warm_up()
    compiled = list(_array_lines.signatures)
    frames_lines(_varied_frames())
    summary_lines(_varied_frames())  # the storage tier's raw_1s points (ingest/tier.py)
    assert _array_lines.signatures == compiled


def _plain_frame_lines(hub: str, frame: Frame) -> bytes:
    """A frame's raw lines as plain Python writes them: repr of each float, the contract's
    sample times; tags sorted by key (no escaping needed for these names)."""
    lines = []
    for i in range(frame.n):
        fields = f"force_n={float(frame.force_n[i])!r},disp_mm={float(frame.disp_mm[i])!r}"
        if frame.ref_load_n is not None:
            fields += f",ref_load_n={float(frame.ref_load_n[i])!r}"
        t_ns = frame.t0_ns + round(i * 1e9 / frame.rate_hz)
        lines.append(f"raw,device={frame.device},hub={hub} {fields} {t_ns}\n")
    return "".join(lines).encode()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 20),
            st.floats(0.5, 10_000.0),
            st.booleans(),
            st.integers(0, 2**62),
            hnp.arrays(np.float64, 20, elements=st.floats(allow_nan=False, allow_infinity=False)),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_frames_lines_match_a_plain_python_reference(
    specs: list[tuple[int, float, bool, int, np.ndarray]],
) -> None:
    """The kernel's raw lines for a batch are what plain Python (repr, round) writes."""
    frames: list[tuple[str, Frame, Encoding]] = []
    for seq, (n, rate_hz, ref, t0_ns, values) in enumerate(specs):
        frame = Frame(
            f"DX-{seq:04d}",
            seq,
            t0_ns,
            rate_hz,
            values[:n],
            values[-n:],
            values[:n] if ref else None,
        )
        frames.append((f"HUB-{seq % 2:03d}", frame, "binary"))
    for (hub, frame, _), (raw, _) in zip(frames, frames_lines(frames), strict=True):
        assert bytes(raw) == _plain_frame_lines(hub, frame)
