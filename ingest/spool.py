"""The outage spool: batches InfluxDB could not take, kept on disk until it can.

Each batch is one file `{number:016d}.lp` holding its line protocol, written to a temporary
name, fsync'd, renamed, and the directory fsync'd, so a batch is either whole on disk or not
there at all, even after a power cut. Numbers grow, so the directory lists batches in the order
they were spooled, and that is the order they are replayed in. A batch leaves the spool only
after InfluxDB has taken it.

Size policy: the spool holds at most `max_bytes`. It never drops a batch: when the next one
does not fit, `append` raises `SpoolFull` and ingest stops acknowledging messages, so the
broker keeps them queued for ingest's persistent session until the spool drains. From
`warn_fraction` of `max_bytes` on, every append logs a `spool_near_full` warning.
"""

import logging
import os
import threading
from pathlib import Path

from osteotel.logs import kv

__all__ = ["Spool", "SpoolFull"]

log = logging.getLogger("osteotel.ingest.spool")

_SUFFIX = ".lp"


class SpoolFull(Exception):  # noqa: N818 - a state the caller handles, not a fault
    """The batch does not fit in the spool's size limit."""


class Spool:
    """A bounded, durable FIFO of line-protocol batches in one directory.

    Args:
        directory: where the batch files live; created if missing.
        max_bytes: the most the spool may hold.
        warn_fraction: from this fill level on, appends log a loud warning.
    """

    def __init__(self, directory: Path, *, max_bytes: int, warn_fraction: float = 0.8) -> None:
        self._directory = directory
        self._max_bytes = max_bytes
        self._warn_bytes = int(max_bytes * warn_fraction)
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.tmp"):  # a crash between write and rename
            leftover.unlink()
        self._files = sorted(directory.glob(f"*{_SUFFIX}"))
        self._bytes = sum(path.stat().st_size for path in self._files)
        self._next = int(self._files[-1].stem) + 1 if self._files else 0
        # Appends and removals run in worker threads (fsync blocks); one at a time.
        self._lock = threading.Lock()
        if self._files:
            log.warning(kv("spool_found", batches=len(self._files), bytes=self._bytes))

    @property
    def batches(self) -> int:
        """Batches waiting."""
        return len(self._files)

    @property
    def size_bytes(self) -> int:
        """Bytes waiting."""
        return self._bytes

    @property
    def max_bytes(self) -> int:
        """The size limit, bytes."""
        return self._max_bytes

    def append(self, body: bytes) -> None:
        """Store one batch durably at the end of the spool.

        Raises:
            SpoolFull: the batch would take the spool over `max_bytes`.
        """
        with self._lock:
            if self._bytes + len(body) > self._max_bytes:
                raise SpoolFull(f"spool holds {self._bytes} of {self._max_bytes} bytes")
            path = self._directory / f"{self._next:016d}{_SUFFIX}"
            temporary = path.with_suffix(".tmp")
            with temporary.open("wb") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            temporary.rename(path)
            self._sync_directory()
            self._next += 1
            self._files.append(path)
            self._bytes += len(body)
        if self._bytes >= self._warn_bytes:
            log.warning(
                kv("spool_near_full", bytes=self._bytes, max_bytes=self._max_bytes,
                   batches=len(self._files))
            )  # fmt: skip

    def oldest(self) -> bytes | None:
        """The batch spooled first, or None when the spool is empty."""
        with self._lock:
            return self._files[0].read_bytes() if self._files else None

    def pop_oldest(self) -> None:
        """Remove the batch spooled first, once InfluxDB has taken it."""
        with self._lock:
            path = self._files.pop(0)
            self._bytes -= path.stat().st_size
            path.unlink()
            self._sync_directory()

    def _sync_directory(self) -> None:
        descriptor = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
