"""What ingest writes to InfluxDB for each accepted or rejected message (see docs/schema.md)."""

import functools
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime

import numpy as np
import numpy.typing as npt

from devices.codec import Encoding
from devices.contract import Event as DeviceEvent
from devices.contract import Frame, HubStatus, Rejected
from devices.registry import Registry
from osteotel.store.lineproto import array_lines, escape_tag, point_line, series_lines

__all__ = [
    "device_info_lines",
    "event_lines",
    "frame_lines",
    "frames_lines",
    "rejection_lines",
    "status_lines",
    "summary_lines",
    "warm_up",
]

# Keys that become the point's tags and timestamp; the rest, `v` included, are its fields, so
# that an event with no data of its own (reboot, load_test_start) is still a point.
_EVENT_ENVELOPE = frozenset({"device", "t_ns", "type"})
_INT64_MAX = 2**63 - 1
_SECOND_NS = 1_000_000_000


@functools.lru_cache(maxsize=256)
def _sample_offsets_ns(n: int, rate_hz: float) -> npt.NDArray[np.int64]:
    # The same arithmetic as Frame.timestamps_ns, done once per (n, rate) instead of per
    # frame: a device's frames all have the same length and rate.
    offsets = np.round(np.arange(n, dtype=np.float64) * 1e9 / rate_hz).astype(np.int64)
    offsets.flags.writeable = False
    return offsets


def frame_lines(hub: str, frame: Frame, encoding: Encoding) -> bytes:
    """Raw samples at full rate (`raw`) and the frame's own metadata (`frame`)."""
    tags = {"hub": hub, "device": frame.device}
    fields = {"force_n": frame.force_n, "disp_mm": frame.disp_mm}
    if frame.ref_load_n is not None:
        fields["ref_load_n"] = frame.ref_load_n
    timestamps_ns = np.int64(frame.t0_ns) + _sample_offsets_ns(frame.n, frame.rate_hz)
    raw = array_lines("raw", tags, fields, timestamps_ns)
    return raw + _frame_point(hub, frame, encoding)


def frames_lines(
    frames: Sequence[tuple[str, Frame, Encoding]],
) -> list[tuple[memoryview, bytes]]:
    """`frame_lines` of many frames (hub, frame, encoding), one kernel call for all the frames
    with the same fields: each frame's `raw` lines, a slice of one buffer (not copied), and
    its `frame` line. The two one after the other are `frame_lines`' bytes."""
    parts: list[tuple[memoryview, bytes] | None] = [None] * len(frames)
    # The fields make a line's layout: frames with a reference load go in a call of their own.
    groups: dict[bool, list[int]] = {}
    for index, (_, frame, _) in enumerate(frames):
        groups.setdefault(frame.ref_load_n is not None, []).append(index)
    for with_ref, indices in groups.items():
        chosen = [frames[index][1] for index in indices]
        fields = {
            "force_n": np.concatenate([frame.force_n for frame in chosen]),
            "disp_mm": np.concatenate([frame.disp_mm for frame in chosen]),
        }
        if with_ref:
            fields["ref_load_n"] = np.concatenate(
                [frame.ref_load_n for frame in chosen if frame.ref_load_n is not None]
            )
        counts = [frame.n for frame in chosen]
        timestamps_ns = np.concatenate(
            [_sample_offsets_ns(frame.n, frame.rate_hz) for frame in chosen]
        )
        timestamps_ns += np.repeat(np.array([frame.t0_ns for frame in chosen], np.int64), counts)
        tags = [
            (("device", frame.device), ("hub", frames[index][0]))
            for index, frame in zip(indices, chosen, strict=True)
        ]
        lines, line_ends = series_lines(
            "raw", tags, fields, timestamps_ns, np.cumsum(counts, dtype=np.int64)
        )
        view = lines.data  # a memoryview: its slices share the buffer
        start = 0
        for index, end in zip(indices, line_ends.tolist(), strict=True):
            hub, frame, encoding = frames[index]
            parts[index] = (view[start:end], _meta_line(hub, frame, encoding))
            start = end
    return [part for part in parts if part is not None]


def summary_lines(
    frames: Sequence[tuple[str, Frame, Encoding]],
) -> list[tuple[memoryview, bytes, int]]:
    """The storage tier's lines of frames kept out of `raw` (docs/schema.md, `raw_1s`), one
    kernel call for them all: per frame, its `raw_1s` points (a slice of one buffer), its
    `frame` line, and how many `raw_1s` points the slice holds.

    A frame gets one `raw_1s` point per second of its own, counted from its first sample
    (`t0_ns + k s` up to `t0_ns + (k + 1) s`), timestamped at its first sample in that second:
    the mean, min and max of `force_n` and `disp_mm` over those samples (float64; the mean is
    their sum over `n`) and their count `n`. A frame of 1 s or less is one point, wherever it
    starts (cut at UTC seconds, a 1 s frame not on a whole second made two: influxd's cost of
    the tier is per point). Only the frame's own samples go into its points, so a frame sent
    again gives the same points, and two frames are never merged.
    """
    if not frames:
        return []
    chosen = [frame for _, frame, _ in frames]
    counts = np.array([frame.n for frame in chosen], dtype=np.int64)
    frame_ends = np.cumsum(counts)
    offsets_ns = np.concatenate([_sample_offsets_ns(frame.n, frame.rate_hz) for frame in chosen])
    timestamps_ns = offsets_ns + np.repeat(
        np.array([frame.t0_ns for frame in chosen], np.int64), counts
    )
    force_n = np.concatenate([frame.force_n for frame in chosen], dtype=np.float64)
    disp_mm = np.concatenate([frame.disp_mm for frame in chosen], dtype=np.float64)
    # A point starts where a frame starts or its own second changes.
    second = offsets_ns // _SECOND_NS
    first = np.empty(second.size, dtype=np.bool_)
    first[0] = True
    np.not_equal(second[1:], second[:-1], out=first[1:])
    first[frame_ends[:-1]] = True
    starts = np.flatnonzero(first)
    n = np.diff(starts, append=second.size)
    fields = {
        "force_n_mean": _means(force_n, starts, n),
        "force_n_min": np.minimum.reduceat(force_n, starts),
        "force_n_max": np.maximum.reduceat(force_n, starts),
        "disp_mm_mean": _means(disp_mm, starts, n),
        "disp_mm_min": np.minimum.reduceat(disp_mm, starts),
        "disp_mm_max": np.maximum.reduceat(disp_mm, starts),
        "n": n,
    }
    # Each frame's points end where its samples end.
    point_ends = np.searchsorted(starts, frame_ends)
    tags = [(("device", frame.device), ("hub", hub)) for hub, frame, _ in frames]
    lines, line_ends = series_lines(
        "raw_1s", tags, fields, timestamps_ns[starts], point_ends.astype(np.int64)
    )
    view = lines.data  # a memoryview: its slices share the buffer
    parts: list[tuple[memoryview, bytes, int]] = []
    start, points_before = 0, 0
    for (hub, frame, encoding), end, points_end in zip(
        frames, line_ends.tolist(), point_ends.tolist(), strict=True
    ):
        parts.append(
            (view[start:end], _meta_line(hub, frame, encoding), points_end - points_before)
        )
        start, points_before = end, points_end
    return parts


def _means(
    values: npt.NDArray[np.float64], starts: npt.NDArray[np.intp], n: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """Each point's mean: its sum over n, or, where the sum overflows (values near the float64
    limit), the sum of each value over n."""
    with np.errstate(over="ignore"):
        means = np.add.reduceat(values, starts) / n
    overflowed = ~np.isfinite(means)
    if overflowed.any():
        scaled = np.add.reduceat(values / np.repeat(n, n), starts)
        means[overflowed] = scaled[overflowed]
    return means


def warm_up() -> None:
    """Compile (or load from numba's cache) the line protocol kernel for the argument types the
    frame path gives it (`frames_lines`, and `summary_lines` of the storage tier), so that the
    first live frame does not pay for it."""
    frame = Frame("warm-up", 0, 0, 100.0, np.zeros(2), np.zeros(2))
    frames_lines([("warm-up", frame, "json")])
    summary_lines([("warm-up", frame, "json")])


def _meta_line(hub: str, frame: Frame, encoding: Encoding) -> bytes:
    # Every accepted frame has these types and finite values: its `frame` line is written here
    # as point_line writes them (repr of a float, `i` after an int), without its per-field
    # dispatch; anything else goes through point_line (_frame_point).
    rate_hz, temp_c, battery_pct = frame.rate_hz, frame.temp_c, frame.battery_pct
    if (
        type(frame.seq) is int
        and 0 <= frame.seq <= _INT64_MAX
        and type(rate_hz) is float
        and math.isfinite(rate_hz)
        and (temp_c is None or (type(temp_c) is float and math.isfinite(temp_c)))
        and (battery_pct is None or (type(battery_pct) is float and math.isfinite(battery_pct)))
    ):
        prefix = _meta_prefix(hub, frame.device, encoding)
        line = f"{prefix} seq={frame.seq}i,n={frame.n}i,rate_hz={rate_hz!r}"
        if temp_c is not None:
            line += f",temp_c={temp_c!r}"
        if battery_pct is not None:
            line += f",battery_pct={battery_pct!r}"
        return f"{line} {int(frame.t0_ns)}\n".encode()
    return _frame_point(hub, frame, encoding)


def _frame_point(hub: str, frame: Frame, encoding: Encoding) -> bytes:
    return point_line(
        "frame",
        {"hub": hub, "device": frame.device, "encoding": encoding},
        {
            "seq": frame.seq,
            "n": frame.n,
            "rate_hz": frame.rate_hz,
            "temp_c": frame.temp_c,
            "battery_pct": frame.battery_pct,
        },
        frame.t0_ns,
    )


@functools.lru_cache(maxsize=65_536)
def _meta_prefix(hub: str, device: str, encoding: str) -> str:
    # Tags sorted by key, as point_line writes them.
    return (
        f"frame,device={escape_tag(device)},encoding={escape_tag(encoding)},hub={escape_tag(hub)}"
    )


def event_lines(hub: str, event: DeviceEvent) -> bytes:
    """One `event` point at the event's own time."""
    fields = {k: v for k, v in event.model_dump().items() if k not in _EVENT_ENVELOPE}
    return point_line(
        "event", {"hub": hub, "device": event.device, "type": event.type}, fields, event.t_ns
    )


def status_lines(status: HubStatus) -> bytes:
    """One `hub_status` point at the status's own time."""
    return point_line("hub_status", {"hub": status.hub}, {"online": status.online}, status.t_ns)


def rejection_lines(
    rejected: Rejected, *, hub: str | None, topic: str, payload_bytes: int, received_ns: int
) -> bytes:
    """One `rejection` point at the time of receipt (unique per process, see the caller)."""
    return point_line(
        "rejection",
        {"reason": str(rejected.reason), "hub": hub or "-"},
        {
            "topic": topic,
            "field": rejected.field,
            "index": rejected.index,
            "detail": rejected.detail,
            "payload_bytes": payload_bytes,
        },
        received_ns,
    )


def _midnight_ns(day: date | None) -> int | None:
    if day is None:
        return None
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    # Whole seconds times 1e9 in integers: a float product would round the nanoseconds.
    return int(midnight.timestamp()) * 1_000_000_000


def device_info_lines(registry: Registry, *, retired: set[str], now_ns: int) -> bytes:
    """`device_info` points: the registry as the boards need it (patient pseudonym, site, plan).

    `osteotomy_ns` (UTC midnight of the registry's osteotomy date, epoch ns) is written only
    for devices that have one. Devices in `retired` (gone from the registry since the last
    version) get `active=false`.
    """
    lines = [
        point_line(
            "device_info",
            {"hub": d.hub, "device": d.id, "patient": d.patient, "site": d.site},
            {
                "active": True,
                "target_mm": d.protocol.target_mm,
                "rate_mm_per_day": d.protocol.rate_mm_per_day,
                "steps_per_day": d.protocol.steps_per_day,
                "latency_days": d.protocol.latency_days,
                "osteotomy_ns": _midnight_ns(d.osteotomy),
            },
            now_ns,
        )
        for d in registry.devices.values()
    ]
    lines.extend(
        point_line("device_info", {"device": device}, {"active": False}, now_ns)
        for device in sorted(retired)
    )
    return b"".join(lines)
