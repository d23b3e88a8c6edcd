"""The storage tier (ingest/tier.py, `records.summary_lines`) against plain-Python references:
which frames keep `raw`, the `raw_1s` points of the others, and the hold a late step claims."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from devices.codec import Encoding
from devices.contract import DistractionStep, Frame, LoadTestStart, Probe
from ingest.accounting import Accounting
from ingest.records import frames_lines, summary_lines, warm_up
from ingest.tier import Tier
from ingest.work import Work
from osteotel._floatfmt_kernels import _array_lines
from osteotel.mqtt import Received

HUB, DEVICE = "HUB-A", "DX-0001"
S_NS = 1_000_000_000
T0_NS = 1_780_000_000_123_456_789  # not on a whole second


def _frame(t0_ns: int, rate_hz: float, n: int, seed: int = 0, **extra: object) -> Frame:
    rng = np.random.default_rng(seed)
    force_n = rng.normal(0.0, 300.0, n)  # both signs: tension and compression
    disp_mm = np.cumsum(rng.uniform(0.0, 0.01, n)) + 12.5
    return Frame(DEVICE, seed, t0_ns, rate_hz, force_n, disp_mm, **extra)  # type: ignore[arg-type]


def _work() -> Work:
    return Work(Received("t", b"", 0, 1, 0), [], 1)


def _reference_points(frame: Frame) -> list[dict[str, float]]:
    """One point per second of the frame's own (from its first sample), sample by sample."""
    seconds: dict[int, list[int]] = {}
    for i in range(frame.n):
        t_ns = frame.t0_ns + round(i * 1e9 / frame.rate_hz)
        seconds.setdefault((t_ns - frame.t0_ns) // S_NS, []).append(i)
    points = []
    for indices in seconds.values():
        force = [float(frame.force_n[i]) for i in indices]
        disp = [float(frame.disp_mm[i]) for i in indices]
        points.append(
            {
                "time": frame.t0_ns + round(indices[0] * 1e9 / frame.rate_hz),
                "force_n_mean": math.fsum(force) / len(force),
                "force_n_min": min(force),
                "force_n_max": max(force),
                "disp_mm_mean": math.fsum(disp) / len(disp),
                "disp_mm_min": min(disp),
                "disp_mm_max": max(disp),
                "n": len(indices),
            }
        )
    return points


def _parse(lines: bytes) -> list[dict[str, float]]:
    """raw_1s lines back into values; each float's text must be its shortest repr."""
    points = []
    for line in lines.decode().splitlines():
        head, fields, t_ns = line.split(" ")
        assert head == f"raw_1s,device={DEVICE},hub={HUB}"
        point: dict[str, float] = {"time": int(t_ns)}
        for item in fields.split(","):
            key, text = item.split("=")
            if key == "n":
                assert text.endswith("i")
                point[key] = int(text[:-1])
            else:
                assert repr(float(text)) == text, text  # as raw writes the same value
                point[key] = float(text)
        points.append(point)
    return points


def _assert_points(got: list[dict[str, float]], expected: list[dict[str, float]]) -> None:
    assert [(p["time"], p["n"]) for p in got] == [(p["time"], p["n"]) for p in expected]
    for key in ("force_n_min", "force_n_max", "disp_mm_min", "disp_mm_max"):
        assert [p[key] for p in got] == [p[key] for p in expected], key
    for key in ("force_n_mean", "disp_mm_mean"):
        np.testing.assert_allclose(
            [p[key] for p in got], [p[key] for p in expected], rtol=1e-13, atol=1e-12
        )


SHAPES = {
    "10hz_shorter_than_1s": (10.0, 7),
    "10hz_longer": (10.0, 35),
    "100hz_1s": (100.0, 100),
    "100hz_longer": (100.0, 250),
    "200hz_shorter": (200.0, 90),
    "200hz_longer": (200.0, 1000),
}


@pytest.mark.parametrize(("rate_hz", "n"), SHAPES.values(), ids=list(SHAPES))
def test_raw_1s_points_match_a_per_sample_reference(rate_hz: float, n: int) -> None:
    """Per second of a frame: first sample's time, exact min, max and n, mean of the samples."""
    frame = _frame(T0_NS, rate_hz, n, seed=n)
    ((points, meta, count),) = summary_lines([(HUB, frame, "json")])
    expected = _reference_points(frame)
    assert count == len(expected)
    _assert_points(_parse(bytes(points)), expected)
    assert meta == bytes(frames_lines([(HUB, frame, "json")])[0][1])


@pytest.mark.parametrize("rate_hz", [10.0, 100.0, 200.0])
def test_a_frame_of_one_second_is_one_point_wherever_it_starts(rate_hz: float) -> None:
    """A frame of 1 s of samples starting off a whole second is one `raw_1s` point, not two:
    what influxd pays for the tier is per point."""
    frame = _frame(T0_NS, rate_hz, int(rate_hz), seed=3)
    assert T0_NS % S_NS != 0
    ((_, _, count),) = summary_lines([(HUB, frame, "json")])
    assert count == 1


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([10.0, 100.0, 200.0, 33.3]),
            st.integers(1, 400),
            st.integers(0, 3 * S_NS),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_batch_gives_each_frame_its_own_points(specs: list[tuple[float, int, int]]) -> None:
    """Frames summarised together give what each gives alone: nothing merged across frames."""
    frames = [
        _frame(T0_NS + offset_ns, rate_hz, n, seed=k)
        for k, (rate_hz, n, offset_ns) in enumerate(specs)
    ]
    parts = summary_lines([(HUB, frame, "binary") for frame in frames])
    for frame, (points, _, count) in zip(frames, parts, strict=True):
        expected = _reference_points(frame)
        assert count == len(expected)
        _assert_points(_parse(bytes(points)), expected)


def test_warm_up_compiles_what_the_tier_runs() -> None:
    """After the warm-up, summarising frames compiles nothing more."""
    warm_up()
    compiled = list(_array_lines.signatures)
    summary_lines([(HUB, _frame(T0_NS, rate, 150, seed=3), "json") for rate in (10.0, 200.0)])
    assert _array_lines.signatures == compiled


def _tier(before_s: float = 30.0, after_s: float = 600.0) -> tuple[Tier, Accounting]:
    accounting = Accounting()
    return Tier(before_s=before_s, after_s=after_s, accounting=accounting), accounting


def _write(tier: Tier, *frames: Frame) -> list[Work]:
    works = [_work() for _ in frames]
    tier.write([(work, HUB, frame, "json") for work, frame in zip(works, frames, strict=True)])
    return works


def _is_full_rate(work: Work, frame: Frame) -> bool:
    """Whether the frame's work holds exactly today's lines (raw + frame)."""
    raw, meta = frames_lines([(HUB, frame, "json")])[0]
    return b"".join(work.lines) == bytes(raw) + meta


STEP_NS = T0_NS + 3_600 * S_NS
WINDOW_START_NS, WINDOW_END_NS = STEP_NS - 30 * S_NS, STEP_NS + 600 * S_NS

# name: (t0_ns, full rate) for a 100 Hz frame of 100 samples (last sample 990 ms after t0).
EDGES = {
    "ends_1ns_before_start": (WINDOW_START_NS - 990_000_001, False),
    "ends_at_start": (WINDOW_START_NS - 990_000_000, True),
    "straddles_start": (WINDOW_START_NS - 500_000_000, True),
    "inside": (STEP_NS, True),
    "straddles_end": (WINDOW_END_NS - 500_000_000, True),
    "starts_at_end": (WINDOW_END_NS, True),
    "starts_1ns_after_end": (WINDOW_END_NS + 1, False),
}


@pytest.mark.parametrize(("t0_ns", "full_rate"), EDGES.values(), ids=list(EDGES))
def test_window_includes_both_ends(t0_ns: int, full_rate: bool) -> None:
    """A frame with any sample in [step - 30 s, step + 600 s] keeps raw; one just outside not."""
    tier, _ = _tier()
    tier.event(_work(), DistractionStep(device=DEVICE, t_ns=STEP_NS, delta_mm=0.25, source="motor"))
    frame = _frame(t0_ns, 100.0, 100)
    (work,) = _write(tier, frame)
    assert _is_full_rate(work, frame) is full_rate
    assert work.raw_points == (100 if full_rate else 0)
    assert work.summary_points == (0 if full_rate else len(_reference_points(frame)))
    assert work.points == work.raw_points + work.summary_points + 1


@pytest.mark.parametrize(
    ("offset_ns", "full_rate"),
    [(0, True), (50_000_000, False), (100_000_000, True)],
    ids=["on_a_sample", "between_samples", "on_the_next"],
)
def test_a_window_between_two_samples_takes_no_sample(offset_ns: int, full_rate: bool) -> None:
    """With a zero-width window, a frame is full-rate only if a sample lies exactly on it."""
    tier, _ = _tier(before_s=0.0, after_s=0.0)
    tier.event(_work(), Probe(device=DEVICE, t_ns=T0_NS + 500_000_000 + offset_ns, delta_mm=0.1))
    frame = _frame(T0_NS, 10.0, 20)  # samples every 100 ms; the window is past its first
    (work,) = _write(tier, frame)
    assert _is_full_rate(work, frame) is full_rate


def test_a_load_test_frame_keeps_raw_with_its_reference_load() -> None:
    """A frame carrying ref_load_n is full-rate, outside any window."""
    tier, _ = _tier()
    frame = _frame(T0_NS, 100.0, 100, ref_load_n=np.linspace(0.0, 600.0, 100))
    (work,) = _write(tier, frame)
    assert _is_full_rate(work, frame)


def test_other_events_open_no_window() -> None:
    """A load test's start is not a step: the frames after it are summarised."""
    tier, _ = _tier()
    event_work = _work()
    tier.event(event_work, LoadTestStart(device=DEVICE, t_ns=T0_NS))
    frame = _frame(T0_NS, 100.0, 100)
    (work,) = _write(tier, frame)
    assert not _is_full_rate(work, frame)
    assert event_work.lines == []


def test_a_step_arriving_after_its_frames_writes_the_held_ones_with_the_event() -> None:
    """The frames of the step's 30 s before, summarised on arrival, get their raw lines in the
    event's work; older frames and the held frames outside the window do not."""
    tier, accounting = _tier()
    # 1 s frames from 90 s before the step to 5 s after it, then the step arrives.
    frames = [_frame(STEP_NS + k * S_NS, 100.0, 100, seed=90 + k) for k in range(-90, 5)]
    works = _write(tier, *frames)
    assert not any(_is_full_rate(work, frame) for work, frame in zip(works, frames, strict=True))
    event_work = _work()
    tier.event(
        event_work, DistractionStep(device=DEVICE, t_ns=STEP_NS, delta_mm=0.25, source="motor")
    )
    # The hold keeps 60 s of sample time behind the newest (STEP + 4.99 s): frames -55..4; of
    # those the window takes the ones with a sample at or after STEP - 30 s: frames -30..4.
    claimed = [frame for frame in frames if frame.t0_ns >= STEP_NS - 30 * S_NS]
    raw = [bytes(raw) for raw, _ in frames_lines([(HUB, frame, "json") for frame in claimed])]
    assert [bytes(part) for part in event_work.lines] == raw
    assert event_work.raw_points == event_work.points - 1 == 100 * len(claimed)
    assert accounting.tier_frames_released == len(claimed)
    # Their raw_1s points stay with their own work; the same step again releases nothing.
    again = _work()
    tier.event(again, DistractionStep(device=DEVICE, t_ns=STEP_NS, delta_mm=0.25, source="motor"))
    assert again.lines == []


def test_a_step_older_than_the_hold_finds_nothing() -> None:
    """Frames more than 60 s of sample time behind the newest are no longer held."""
    tier, accounting = _tier()
    _write(tier, _frame(STEP_NS - 10 * S_NS, 100.0, 100), _frame(STEP_NS + 61 * S_NS, 100.0, 100))
    event_work = _work()
    tier.event(event_work, Probe(device=DEVICE, t_ns=STEP_NS, delta_mm=0.1))
    assert len(event_work.lines) == 1  # only the frame at +61 s, inside the window
    assert accounting.tier_frames_released == 1


def test_windows_long_past_are_let_go() -> None:
    """A window whose end is more than after_s behind the newest sample no longer counts."""
    tier, _ = _tier(before_s=1.0, after_s=10.0)
    tier.event(_work(), Probe(device=DEVICE, t_ns=STEP_NS, delta_mm=0.1))
    late = _frame(STEP_NS + 5 * S_NS, 10.0, 5)
    (work,) = _write(tier, late)
    assert _is_full_rate(work, late)
    _write(tier, _frame(STEP_NS + 21 * S_NS, 10.0, 5))  # newest now 21 s: the window ends at 10 s
    tier.event(_work(), Probe(device=DEVICE, t_ns=STEP_NS + 21 * S_NS, delta_mm=0.1))
    (again,) = _write(tier, late)  # a late copy of the same frame
    assert not _is_full_rate(again, late)


def test_a_full_hold_lets_the_oldest_go_and_counts_it() -> None:
    """More than the hold's frames in its 60 s: the oldest leave early, counted."""
    tier, accounting = _tier()
    frames = [_frame(T0_NS + k * 5_000_000, 1000.0, 1, seed=k) for k in range(6_003)]
    _write(tier, *frames)
    assert accounting.tier_hold_dropped == 3


def test_means_near_the_float_limit_stay_finite() -> None:
    """A second whose sum would overflow float64 still gets its mean, not an infinity."""
    big = 1.5e308
    frame = Frame(DEVICE, 0, T0_NS, 10.0, np.array([big, big, -big]), np.array([1.0, 2.0, 3.0]))
    ((points, _, _),) = summary_lines([(HUB, frame, "json")])
    (point,) = _parse(bytes(points))
    assert point["force_n_mean"] == pytest.approx(big / 3, rel=1e-15)
    assert (point["force_n_min"], point["force_n_max"], point["n"]) == (-big, big, 3)


def _replay(items: list[Frame | Probe], *, batched: bool) -> list[bytes]:
    """Each message's lines after a fresh tier reads the items in order, the frames between
    two events in one `write` call (as a batch) or one call each."""
    tier, _ = _tier(before_s=3.0, after_s=20.0)
    out: list[Work] = []
    pending: list[tuple[Work, str, Frame, Encoding]] = []

    def flush() -> None:
        if batched and pending:
            tier.write(pending)
        pending.clear()

    for item in items:
        work = _work()
        out.append(work)
        if isinstance(item, Frame):
            pending.append((work, HUB, item, "json"))
            if not batched:
                tier.write(pending)
                pending.clear()
        else:
            flush()  # as ingest writes a batch's frames before an event is handled
            tier.event(work, item)
    flush()
    return [b"".join(work.lines) for work in out]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("frame"), st.integers(-60, 120), st.sampled_from([10.0, 100.0])),
            st.tuples(st.just("probe"), st.integers(-60, 120), st.just(0.0)),
        ),
        min_size=1,
        max_size=40,
    )
)
# A frame that came out of order sits behind a newer one until it is older than the hold.
@example([("frame", 20, 10.0), ("frame", -20, 10.0), ("frame", 80, 10.0), ("probe", -20, 0.0)])
def test_a_batch_decides_as_frame_by_frame(specs: list[tuple[str, int, float]]) -> None:
    """Frames written together get the lines they get one at a time, and a step claims the
    same held frames: out of order, overlapping windows and all (streaming equals batch)."""
    items: list[Frame | Probe] = [
        _frame(T0_NS + offset_s * S_NS // 2, rate_hz, 30, seed=k)
        if kind == "frame"
        else Probe(device=DEVICE, t_ns=T0_NS + offset_s * S_NS // 2, delta_mm=0.1)
        for k, (kind, offset_s, rate_hz) in enumerate(specs)
    ]
    assert _replay(items, batched=True) == _replay(items, batched=False)
