"""The batched estimator path: the same records as frame-by-frame calls."""

from typing import Literal

import numpy as np
import pytest
from numpy.typing import NDArray

from apps.analyze import record_json
from dsp.estimator import EstimateRecord, FleetEstimator
from dsp.records import StepKind

NS_PER_S = 1_000_000_000
START_NS = 1_699_920_000_000_000_000 + 23 * 3600 * NS_PER_S  # an hour before a UTC midnight
RATE_HZ = 20.0

# ("step", device, delta_mm, kind) or ("start" | "end", device) of a load test.
_Event = tuple[Literal["step"], int, float, StepKind] | tuple[Literal["start", "end"], int]


def _signals(
    rng: np.random.Generator, n_devices: int, n_frames: int, n: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Force and displacement per device and frame, with steps, NaNs, spikes and flatlines."""
    force = 100.0 + rng.standard_normal((n_devices, n_frames, n))
    disp = 5.0 + 0.002 * rng.standard_normal((n_devices, n_frames, n))
    for d in range(n_devices):
        for f in rng.choice(n_frames, size=3, replace=False):
            force[d, f, rng.integers(n)] = np.nan
        f = rng.integers(n_frames)
        force[d, f, rng.integers(1, n - 1)] += 80.0
        if d % 3 == 0:  # a flatline on the displacement channel
            f = rng.integers(n_frames - 8)
            disp[d, f : f + 8] = 5.0
    return force, disp


def _events(rng: np.random.Generator, n_devices: int, n_frames: int) -> dict[int, list[_Event]]:
    """Events before frame k: steps, probes and load tests on some devices."""
    events: dict[int, list[_Event]] = {}
    for d in range(n_devices):
        for k in rng.choice(n_frames, size=4, replace=False):
            kind: StepKind = "step" if rng.random() < 0.7 else "probe"
            events.setdefault(int(k), []).append(("step", d, 0.25, kind))
        k = int(rng.integers(n_frames - 10))
        events.setdefault(k, []).append(("start", d))
        events.setdefault(k + 6, []).append(("end", d))
    return events


def _run(*, mode: str, seed: int, gap_frame: int) -> list[str]:
    rng = np.random.default_rng(seed)
    n_devices, n_frames, n = 7, 120, 40
    frame_ns = round(n * NS_PER_S / RATE_HZ)
    force, disp = _signals(rng, n_devices, n_frames, n)
    ref = 300.0 + 50.0 * np.sin(np.arange(n_frames * n) / 7.0).reshape(n_frames, n)
    events = _events(rng, n_devices, n_frames)
    ids = [f"DX-{d:04d}" for d in range(n_devices)]
    fleet = FleetEstimator(capacity=2)
    out: list[EstimateRecord] = []
    pending: list[tuple[int, int]] = []  # (device, frame) queued for the batch

    def t0(d: int, k: int) -> int:
        late = 40 * 60 * NS_PER_S if k >= gap_frame and d % 2 else 0  # a gap on odd devices
        return START_NS + k * frame_ns + d * 7_000_000 + late

    def drain() -> None:
        if not pending:
            return
        devs = [ids[d] for d, _ in pending]
        offsets = np.arange(len(pending) + 1) * n
        out.extend(
            fleet.frames(
                devs,
                offsets,
                np.concatenate([force[d, k] for d, k in pending]),
                np.concatenate([disp[d, k] for d, k in pending]),
                np.concatenate([ref[k] for _, k in pending]),
                np.array([t0(d, k) for d, k in pending]),
                np.full(len(pending), RATE_HZ),
            )
        )
        pending.clear()

    for k in range(n_frames):
        for event in events.get(k, []):
            drain()
            d = event[1]
            t_ns = t0(d, k) + 3 * NS_PER_S
            if event[0] == "step":
                out.extend(fleet.step(ids[d], t_ns, event[2], kind=event[3]))
            elif event[0] == "start":
                out.extend(fleet.load_test_start(ids[d], t_ns))
            else:
                out.extend(fleet.load_test_end(ids[d], t_ns))
        for d in map(int, rng.permutation(n_devices)):
            if mode == "batched":
                pending.append((d, k))
            elif mode == "per_tracker":  # the path without the fused kernel
                dev = fleet._device(ids[d])
                out.extend(
                    fleet._frame_slow(dev, force[d, k], disp[d, k], ref[k], t0(d, k), RATE_HZ)
                )
            else:
                out.extend(fleet.frame(ids[d], force[d, k], disp[d, k], ref[k], t0(d, k), RATE_HZ))
    drain()
    out.extend(fleet.flush())
    return [record_json(r) for r in out]


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_batched_frames_give_the_same_records_as_single_frames(seed: int) -> None:
    """FleetEstimator.frames returns exactly the records of .frame called on each frame."""
    single = _run(mode="single", seed=seed, gap_frame=70)
    batched = _run(mode="batched", seed=seed, gap_frame=70)
    kinds = {line.split('"kind":"')[1].split('"')[0] for line in single}
    assert {"step", "quality", "daily", "load_share"} <= kinds
    assert batched == single


@pytest.mark.parametrize("seed", [0, 3], ids=["seed0", "seed3"])
def test_the_fused_kernel_gives_the_same_records_as_one_tracker_at_a_time(seed: int) -> None:
    """.frame through the fused kernel returns the records of the tracker-by-tracker path."""
    assert _run(mode="single", seed=seed, gap_frame=50) == _run(
        mode="per_tracker", seed=seed, gap_frame=50
    )


def test_an_empty_batch_returns_no_records() -> None:
    """A batch of no frames changes nothing and returns nothing."""
    fleet = FleetEstimator()
    empty = np.zeros(0)
    got = fleet.frames([], np.zeros(1, np.int64), empty, empty, None, np.zeros(0, np.int64), empty)
    assert got == []
    assert fleet.devices == []


@pytest.mark.parametrize(
    ("offsets", "rate_hz", "message"),
    [
        ([0, 3, 2], [10.0, 10.0], "offsets"),
        ([0, 1, 2], [10.0, 0.0], "rate_hz"),
        ([0, 2], [10.0], "offsets"),
    ],
    ids=["falling_offsets", "zero_rate", "offset_count"],
)
def test_a_bad_batch_is_rejected_before_any_state_changes(
    offsets: list[int], rate_hz: list[float], message: str
) -> None:
    """A batch whose columns disagree raises ValueError naming the column, and adds no device."""
    fleet = FleetEstimator()
    samples = np.ones(2)
    with pytest.raises(ValueError, match=message):
        fleet.frames(
            ["DX-0001", "DX-0002"],
            np.array(offsets),
            samples,
            samples,
            None,
            np.zeros(2, np.int64),
            np.array(rate_hz),
        )
    assert fleet.devices == []
