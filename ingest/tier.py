"""The storage tier (`ingest.raw_tier = "windows"`): which frames `raw` keeps at full rate.

docs/schema.md, "What is kept where", has the design; this module decides per frame:

- **full rate** (`raw` and `frame`, the lines of `raw_tier = "full"`): a frame with a reference
  load (a load test), or one with a sample inside a *window* of its device, from `before_s`
  before to `after_s` after an accepted `distraction_step` or `probe` (both ends included);
- **otherwise** its `raw_1s` points and its `frame` point (`records.summary_lines`).

The seconds before a step are known to be in a window only once the step arrives, after them.
So each device's frames kept out of `raw` over its last `before_s + _LATE_EVENT_S` of sample
time are held in memory; a step or probe whose window covers held frames adds their `raw`
lines to the event's own work (durable before the event is acknowledged) and releases them.
Their `raw_1s` points stay: `raw_1s` covers what was not written to `raw` when it arrived.
The hold is memory only: after a restart it is empty, and the seconds before a step that
comes right after one are in `raw_1s` and the capture files only.

Everything is decided from the frames and events in the order received, so the same stream
sent again (a redelivery after a restart) gives the same points.
"""

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from devices.codec import Encoding
from devices.contract import Event, Frame

from .accounting import Accounting
from .records import frames_lines, summary_lines
from .work import Work

__all__ = ["WINDOW_EVENTS", "Tier"]

WINDOW_EVENTS = frozenset({"distraction_step", "probe"})
"""Event types that open a full-rate window around their `t_ns`."""

# How much later than its window's first samples a step may arrive and still have them
# written to `raw`: the hold keeps `before_s` plus this much of a device's sample time.
_LATE_EVENT_S = 30.0
# Frames held per device at most, whatever their times: the hold's 60 s at 100 frames a
# second (0.01 s frames, or a device sending many short ones). Past it the oldest is let go
# early and counted (`tier_hold_dropped`).
_HOLD_MAX_FRAMES = 6_000


@dataclass(frozen=True, slots=True)
class _Held:
    """A frame kept out of `raw`, with what writing its `raw` lines later needs."""

    hub: str
    frame: Frame
    encoding: Encoding
    t_last_ns: int


@dataclass(slots=True)
class _Device:
    """One device's windows (start, end; sample time, ns) and held frames, oldest first."""

    windows: list[tuple[int, int]] = field(default_factory=list)
    held: deque[_Held] = field(default_factory=deque)
    newest_ns: int = -(2**63)  # its latest sample seen


class Tier:
    """Window state and held frames per device; writes each frame's lines into its work.

    Args:
        before_s: a window's start before its event, s.
        after_s: a window's end after its event, s.
        accounting: where frames let go of early are counted.
    """

    def __init__(self, *, before_s: float, after_s: float, accounting: Accounting) -> None:
        self._before_ns = round(before_s * 1e9)
        self._after_ns = round(after_s * 1e9)
        self._hold_ns = round((before_s + _LATE_EVENT_S) * 1e9)
        self._accounting = accounting
        self._devices: dict[str, _Device] = {}

    def write(self, unwritten: list[tuple[Work, str, Frame, Encoding]]) -> None:
        """Give each accepted frame's work its lines and counts, and hold the frames kept out
        of `raw`.

        Args:
            unwritten: (work, hub, calibrated frame, encoding) in the order received.
        """
        full: list[tuple[Work, str, Frame, Encoding]] = []
        summarised: list[tuple[Work, str, Frame, Encoding, int]] = []
        for work, hub, frame, encoding in unwritten:
            device = self._devices.get(frame.device)
            if device is None:
                device = self._devices[frame.device] = _Device()
            t_last_ns = frame.t_last_ns
            device.newest_ns = max(device.newest_ns, t_last_ns)
            if frame.ref_load_n is not None or _in_windows(device.windows, frame, t_last_ns):
                full.append((work, hub, frame, encoding))
            else:
                summarised.append((work, hub, frame, encoding, t_last_ns))
        if full:
            lines = frames_lines([(hub, frame, encoding) for _, hub, frame, encoding in full])
            for (work, _, frame, _), (raw, meta) in zip(full, lines, strict=True):
                work.lines += (raw, meta)
                work.points = frame.n + 1
                work.raw_points = frame.n
        if not summarised:
            return
        summaries = summary_lines(
            [(hub, frame, encoding) for _, hub, frame, encoding, _ in summarised]
        )
        for (work, hub, frame, encoding, t_last_ns), (points, meta, count) in zip(
            summarised, summaries, strict=True
        ):
            work.lines += (points, meta)
            work.points = count + 1
            work.raw_points = 0
            work.summary_points = count
            work.summarised = frame.n
            self._hold(self._devices[frame.device], _Held(hub, frame, encoding, t_last_ns))

    def event(self, work: Work, event: Event) -> None:
        """Open the window of an accepted step or probe (other events change nothing) and add
        the `raw` lines of the held frames it covers to the event's work."""
        if event.type not in WINDOW_EVENTS:
            return
        device = self._devices.get(event.device)
        if device is None:
            device = self._devices[event.device] = _Device()
        window = (event.t_ns - self._before_ns, event.t_ns + self._after_ns)
        if window not in device.windows:  # the same event again opens nothing new
            device.windows.append(window)
        # Exactly the last hold_ns of sample time: a frame that arrived out of order may still
        # sit in the queue behind a newer one, older than that.
        oldest_ns = device.newest_ns - self._hold_ns
        covered = [
            held
            for held in device.held
            if held.t_last_ns >= oldest_ns and _in_windows([window], held.frame, held.t_last_ns)
        ]
        # Windows whose end lies more than after_s behind the device's latest sample can no
        # longer take a frame, but one very late: memory stays bounded per device.
        oldest_end_ns = device.newest_ns - self._after_ns
        device.windows = [w for w in device.windows if w[1] >= oldest_end_ns]
        if not covered:
            return
        released = {id(held) for held in covered}
        device.held = deque(held for held in device.held if id(held) not in released)
        lines = frames_lines([(held.hub, held.frame, held.encoding) for held in covered])
        for held, (raw, _) in zip(covered, lines, strict=True):
            work.lines.append(raw)  # its `frame` point was written when it arrived
            work.points += held.frame.n
            work.raw_points += held.frame.n
        self._accounting.tier_frames_released += len(covered)

    def _hold(self, device: _Device, held: _Held) -> None:
        """Keep a frame while an event may still claim it; let go of what is too old."""
        oldest_ns = device.newest_ns - self._hold_ns
        if held.t_last_ns < oldest_ns:
            return  # arrived too late for the hold: no step can claim it any more
        queue = device.held
        queue.append(held)
        while queue[0].t_last_ns < oldest_ns:
            queue.popleft()
        if len(queue) > _HOLD_MAX_FRAMES:
            queue.popleft()
            self._accounting.tier_hold_dropped += 1


def _in_windows(windows: list[tuple[int, int]], frame: Frame, t_last_ns: int) -> bool:
    """Whether any sample of the frame (t0_ns to t_last_ns) lies in one of the windows."""
    t0_ns = frame.t0_ns
    for start_ns, end_ns in windows:
        if t0_ns > end_ns or t_last_ns < start_ns:
            continue
        if start_ns <= t0_ns or t_last_ns <= end_ns:
            return True  # the first or the last sample is inside
        # The window lies between two samples or more: look for one inside it.
        timestamps_ns = frame.timestamps_ns()
        index = int(np.searchsorted(timestamps_ns, start_ns))
        if index < timestamps_ns.size and timestamps_ns[index] <= end_ns:
            return True
    return False
