"""Catch-up's source under the storage tier: a device's messages read back from capture files.

With `raw_tier = "windows"` the store keeps full-rate samples only in windows, so catch-up
(ingest/catchup.py) reads what ingest accepted from its capture files (ingest/capture.py,
`{capture_dir}/{hub}/{YYYY-MM-DD}.jsonl`, or `.jsonl.gz` for a compressed day) instead:

- the files of the device's registry hub only, oldest day first, each line in file order (the
  order ingest received them), from the file of the UTC day before `since_ns` on: a frame
  received just after midnight may hold samples from before it, and a hub's clock may run a
  little ahead of ingest's;
- a day with both a `.jsonl` and a `.jsonl.gz` is read from the `.jsonl` (the plain file is
  the one ingest appends to; a compressed copy may still be being written);
- each line of the device's telemetry or events topic decoded by the wire codec
  (devices/codec.py) and its frames calibrated with the registry's calibration, as live ingest
  does; hub statuses and other devices' lines are passed over unparsed (`read_capture`'s
  `topics`), so each device's pass over its hub's files costs little per line not its own.

What was fed already is not skipped here but where it is fed (catch-up's position moves with
every item), so a line a file holds twice (a redelivery after a crash) is harmless.
Reading blocks: the caller runs it in a worker thread, a chunk at a time.
"""

import logging
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from devices.codec import decode_event, decode_frame
from devices.contract import Event, Frame, Rejected, events_topic, telemetry_topic
from devices.emulator.capture import CaptureError, read_capture
from devices.registry import Device
from osteotel.logs import kv

from .calibration import calibrate
from .capture import day_of

__all__ = ["CaptureDays", "Unreadable", "capture_days", "device_messages"]

log = logging.getLogger("osteotel.ingest.catchup")

_FILE_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})\.jsonl(\.gz)?")


@dataclass(frozen=True, slots=True)
class CaptureDays:
    """A hub directory's capture files, one per UTC day, oldest first."""

    files: tuple[tuple[date, Path], ...]

    @property
    def first_day(self) -> date | None:
        """The earliest day a file holds, or None when there is none."""
        return self.files[0][0] if self.files else None

    def since(self, t_ns: int) -> list[Path]:
        """The files to read for what came after `t_ns`: from the day before its UTC day on."""
        start = day_of(t_ns) - timedelta(days=1)
        return [path for day, path in self.files if day >= start]


def capture_days(hub_dir: Path) -> CaptureDays:
    """The capture files of one hub (`{capture_dir}/{hub}`); none when it does not exist.

    Other names in the directory are left alone (an operator's notes, a copy in progress).
    """
    by_day: dict[date, Path] = {}
    if hub_dir.is_dir():
        for path in hub_dir.iterdir():
            match = _FILE_NAME.fullmatch(path.name)
            if match is None or not path.is_file():
                continue
            day = date.fromisoformat(match.group(1))
            # The plain file is the one ingest appends to: it wins over a compressed copy.
            if day not in by_day or match.group(2) is None:
                by_day[day] = path
    return CaptureDays(tuple(sorted(by_day.items())))


@dataclass
class Unreadable:
    """What a device's files held that could not be fed, for catch-up's counters."""

    frames: int = 0
    events: int = 0
    lines: int = 0


def device_messages(
    files: list[Path], device: Device, unreadable: Unreadable
) -> Iterator[Frame | Event]:
    """The device's calibrated frames and events in the files, in file order.

    Args:
        files: capture files of the device's hub, oldest first.
        device: the registry's device (its hub, id and calibration).
        unreadable: counts what did not decode; each is logged at ERROR too.

    Yields:
        Each frame (calibrated) and event of the device, as ingest received them.
    """
    telemetry, events = telemetry_topic(device.hub, device.id), events_topic(device.hub, device.id)
    for path in files:
        messages = read_capture(path, topics=(telemetry, events))
        try:
            for message in messages:
                if message.topic == telemetry:
                    frame = _frame(message.payload, device, path, message.t_ns, unreadable)
                    if frame is not None:
                        yield frame
                else:  # its events topic: the only other one read
                    event = _event(message.payload, device, path, message.t_ns, unreadable)
                    if event is not None:
                        yield event
        except CaptureError as exc:
            # The writer cuts a torn tail when it next opens the file, so this is a crash's
            # last line not cut yet (its messages were not acknowledged and come again) or a
            # damaged file: the rest of this file cannot be read line by line.
            unreadable.lines += 1
            log.error(kv("catchup_capture_unreadable", device=device.id, file=str(path),
                         line=exc.line, detail=str(exc)))  # fmt: skip
        finally:
            if isinstance(messages, Generator):
                messages.close()  # closes the file now, not when the generator is collected


def _frame(
    payload: bytes, device: Device, path: Path, received_ns: int, unreadable: Unreadable
) -> Frame | None:
    try:
        frame, _ = decode_frame(payload, topic_device=device.id)
    except Rejected as exc:
        unreadable.frames += 1
        log.error(kv("catchup_capture_frame_unreadable", device=device.id, file=str(path),
                     t_ns=received_ns, reason=exc.reason, detail=str(exc)))  # fmt: skip
        return None
    return calibrate(frame, device.calibration)


def _event(
    payload: bytes, device: Device, path: Path, received_ns: int, unreadable: Unreadable
) -> Event | None:
    try:
        return decode_event(payload, topic_device=device.id)
    except Rejected as exc:
        unreadable.events += 1
        log.error(kv("catchup_capture_event_unreadable", device=device.id, file=str(path),
                     t_ns=received_ns, reason=exc.reason, detail=str(exc)))  # fmt: skip
        return None
