"""Capture files ingest writes (`ingest.capture_dir`): every message it accepts and stores.

With the storage tier (`raw_tier = "windows"`, docs/schema.md) the store keeps summaries
outside the full-rate windows, so these files are the full stream's only copy: what catch-up
rebuilds estimates from, and what an engineer replays (`osteotel replay FILE`) into a broker.

- One file per hub and UTC day of receipt: `{capture_dir}/{hub}/{YYYY-MM-DD}.jsonl`, in
  docs/capture.md's format (`t_ns` is ingest's receive time), lines in the order received.
- Written: every accepted telemetry frame (not one ingest drops as a duplicate), event and hub
  status; a rejection is not (it is dead-lettered), nor a message of a hub another process
  owns. `retain` is what the contract has hubs publish: true for a hub status, false else (a
  subscriber cannot see the publisher's flag on a live message).
- Durable before acknowledged: a batch's lines are appended (one `write` per file, O_APPEND)
  and fsync'd, a new file's directory entry too, before its store write starts
  (ingest/writer.py, `Writer._prepare`). A crash after the fsync and before the
  acknowledgement makes the broker deliver the messages again: a file may then hold a message
  twice (catch-up skips what it fed).
- A crash in the middle of a write leaves a torn last line; it is cut off when the file is
  next opened for appending (its messages were not acknowledged: they come again).
"""

import os
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from devices.emulator.capture import capture_line

from .accounting import Accounting
from .work import Work

__all__ = ["Captures", "capture_path", "day_of"]

_NS_PER_S = 1_000_000_000
_TAIL_BLOCK = 65_536


def day_of(t_ns: int) -> date:
    """The UTC day of a time (UTC epoch ns): the day a capture file is named for."""
    return datetime.fromtimestamp(t_ns // _NS_PER_S, tz=UTC).date()


def capture_path(directory: Path, hub: str, received_ns: int) -> Path:
    """The file a message of `hub` received at `received_ns` (UTC epoch ns) goes to."""
    return directory / hub / f"{day_of(received_ns).isoformat()}.jsonl"


class Captures:
    """Appends works' messages to the capture files, keeping one file open per hub.

    Args:
        directory: `ingest.capture_dir`.
        accounting: where the messages and bytes made durable are counted.
    """

    def __init__(self, directory: Path, *, accounting: Accounting) -> None:
        self._directory = directory
        self._accounting = accounting
        self._open: dict[str, tuple[Path, int]] = {}  # hub -> (today's path, descriptor)

    def append(self, works: Sequence[Work]) -> None:
        """Append the messages of `works` that are captured, and make them durable (blocking:
        call it from a worker thread)."""
        by_file: dict[tuple[str, Path], list[bytes]] = {}
        for work in works:
            if work.capture is None:
                continue
            hub, strict_json_object = work.capture
            message = work.message
            path = capture_path(self._directory, hub, message.received_ns)
            by_file.setdefault((hub, path), []).append(
                capture_line(
                    message.topic,
                    message.payload,
                    message.received_ns,
                    message.qos,
                    message.topic.endswith("/status"),
                    strict_json_object=strict_json_object,
                )
            )
        for (hub, path), lines in by_file.items():
            # Synced before the next file is opened: a batch across midnight closes the hub's
            # earlier file when it opens the next, and a closed descriptor's number is reused.
            fd = self._descriptor(hub, path)
            data = b"".join(lines)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            self._accounting.capture_messages += len(lines)
            self._accounting.capture_bytes += len(data)

    def close(self) -> None:
        """Close every open file (what was appended is already durable)."""
        for _, fd in self._open.values():
            os.close(fd)
        self._open.clear()

    def _descriptor(self, hub: str, path: Path) -> int:
        """The open file for `path`, opened (and a torn tail cut) on first use; a hub's file of
        an earlier day is closed."""
        current = self._open.get(hub)
        if current is not None and current[0] == path:
            return current[1]
        if current is not None:
            os.close(current[1])
            del self._open[hub]
        created = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            if created:
                _sync_directory(path.parent)
                _sync_directory(path.parent.parent)
            else:
                _cut_torn_tail(fd)
        except BaseException:
            os.close(fd)
            raise
        self._open[hub] = (path, fd)
        return fd


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_torn_tail(fd: int) -> None:
    """Truncate the file after its last newline (a write cut by a crash), and sync if cut."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - _TAIL_BLOCK)
        block = os.pread(fd, end - start, start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        os.ftruncate(fd, end)
        os.fsync(fd)
