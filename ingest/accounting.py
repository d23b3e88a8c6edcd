"""Per-device accounting: frames received, stored, duplicated, rejected; sequence gaps.

A duplicate is a frame with the same device, `seq` and `t0_ns` as one already seen: it is
stored once and counted. A frame whose `seq` jumps ahead opens a gap; a late frame that fills a
gap is valid and counted as out of order. A frame whose `seq` falls back to one never seen and
not missing means the device restarted its counter (a reboot): the tracker starts over.
"""

from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Accounting", "DeviceCounts", "SeqTracker", "SeqVerdict"]

# Keys kept per device to recognise duplicates: at one frame per second, over 18 hours.
_SEEN_WINDOW = 65_536


class SeqVerdict(StrEnum):
    """How a frame's sequence number relates to the ones before it."""

    NEXT = "next"
    GAP = "gap"
    OUT_OF_ORDER = "out_of_order"
    RESET = "reset"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class SeqTracker:
    """Sequence state of one device, bounded in memory."""

    highest: int | None = None
    missing: set[int] = field(default_factory=set)
    seen: set[tuple[int, int]] = field(default_factory=set)
    order: deque[tuple[int, int]] = field(default_factory=deque)

    def observe(self, seq: int, t0_ns: int) -> tuple[SeqVerdict, int]:
        """Classify a frame and remember it.

        Returns:
            The verdict and the number of sequence numbers this frame showed to be missing.
        """
        key = (seq, t0_ns)
        if key in self.seen:
            return SeqVerdict.DUPLICATE, 0
        self._remember(key)
        if self.highest is None or seq == self.highest + 1:
            self.highest = seq
            return SeqVerdict.NEXT, 0
        if seq > self.highest:
            skipped = range(self.highest + 1, seq)
            if len(skipped) <= _SEEN_WINDOW:
                self.missing.update(skipped)
            self.highest = seq
            return SeqVerdict.GAP, len(skipped)
        if seq in self.missing:
            self.missing.discard(seq)
            return SeqVerdict.OUT_OF_ORDER, 0
        self.highest = seq
        self.missing.clear()
        return SeqVerdict.RESET, 0

    def _remember(self, key: tuple[int, int]) -> None:
        self.seen.add(key)
        self.order.append(key)
        if len(self.order) > _SEEN_WINDOW:
            self.seen.discard(self.order.popleft())
            if len(self.missing) > _SEEN_WINDOW:
                self.missing.discard(min(self.missing))


@dataclass(slots=True)
class DeviceCounts:
    """What ingest did with one device's frames."""

    received: int = 0
    stored: int = 0
    samples_stored: int = 0
    duplicates: int = 0
    seq_gaps: int = 0
    out_of_order: int = 0
    seq_resets: int = 0


class Accounting:
    """Counters for the whole service, per device and per rejection reason."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceCounts] = {}
        self.rejected: Counter[tuple[str, str]] = Counter()  # (hub or "-", reason) -> count
        # Rejected messages delivered again and recognised (ingest/redelivery.py): not counted
        # in `rejected` a second time.
        self.rejected_again: Counter[tuple[str, str]] = Counter()
        self.last_stored_ns = 0  # UTC epoch ns when a frame was last made durable; 0: never
        self.messages_received = 0  # every message the broker delivered, whatever it held
        self.messages_foreign = 0  # ... of which another partition owns the hub (not stored)
        # The event loop's CPU time by stage, ns (docs/ingest.md, "Where ingest's time goes"):
        # handle (a received batch into work: validate, lines, dsp and checkpoint are parts of
        # it; lines is the frames' line protocol),
        # join (a commit's body), acknowledge (accounting, publishing estimates, PUBACKs).
        self.stage_ns: Counter[str] = Counter()
        # Where the pipeline waits (docs/ingest.md, "Writes in flight"), cumulative: `writes`
        # batches committed holding `write_messages` messages and `write_lines` points, the
        # wall time from a batch's write starting to its being durable (`write_ns`); the
        # writer waiting for a free write slot (`writer_slot_wait_ns`, all
        # `write_concurrency` batches in flight); the receive side waiting for room in the queue
        # (`queue_full_waits`, `queue_full_wait_ns`); and, at each received burst
        # (`receipts`), the messages received and not yet acknowledged, summed
        # (`unacked_at_receipt`: over `receipts`, the broker's window in use).
        self.pipeline: Counter[str] = Counter()
        # Points made durable, by measurement (docs/ingest.md, "The storage tier"): `raw`
        # samples, `raw_1s` points and the samples those summarise. The tier's hold: frames
        # whose `raw` lines a step or probe wrote later, and frames let go of before their time.
        self.raw_points_written = 0
        self.raw_1s_points_written = 0
        self.raw_1s_samples_written = 0
        self.tier_frames_released = 0
        self.tier_hold_dropped = 0
        # Capture files (ingest/capture.py): messages and bytes appended and fsync'd.
        self.capture_messages = 0
        self.capture_bytes = 0
        self._trackers: dict[str, SeqTracker] = {}

    def device(self, device: str) -> DeviceCounts:
        """The counters of one device, created on first use."""
        counts = self.devices.get(device)
        if counts is None:
            counts = self.devices[device] = DeviceCounts()
        return counts

    def frame(self, device: str, seq: int, t0_ns: int) -> bool:
        """Count a valid frame; return False when it is a duplicate that must not be stored."""
        counts = self.device(device)
        counts.received += 1
        tracker = self._trackers.get(device)
        if tracker is None:  # not setdefault: that would build a tracker for every frame
            tracker = self._trackers[device] = SeqTracker()
        verdict, skipped = tracker.observe(seq, t0_ns)
        counts.seq_gaps += skipped
        if verdict is SeqVerdict.DUPLICATE:
            counts.duplicates += 1
            return False
        if verdict is SeqVerdict.OUT_OF_ORDER:
            counts.out_of_order += 1
        elif verdict is SeqVerdict.RESET:
            counts.seq_resets += 1
        return True

    def reject(self, hub: str | None, reason: str) -> None:
        """Count one rejected payload."""
        self.rejected[(hub or "-", reason)] += 1

    def reject_again(self, hub: str | None, reason: str) -> None:
        """Count a rejected message that came back from the broker (counted once already)."""
        self.rejected_again[(hub or "-", reason)] += 1
