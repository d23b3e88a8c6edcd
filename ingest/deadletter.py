"""Dead letters: every rejected payload, kept on disk with the rule it broke.

One JSON object per line in `{dir}/dead-letter-YYYYMMDD.jsonl` (UTC day of receipt); the form
is documented in docs/contract.md. Payloads are kept up to `PAYLOAD_KEEP_BYTES` (UTF-8 text as
is, anything else base64) with the size and SHA-256 of the whole, so an oversize payload cannot
fill the disk and can still be matched against a hub's own log.

`recent_records` reads the last records back, from the ends of the newest files, so that a
restarted ingest recognises a rejected message the broker delivers again (ingest/redelivery.py).
"""

import base64
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from osteotel.logs import kv

__all__ = ["PAYLOAD_KEEP_BYTES", "DeadLetter", "DeadLetterWriter", "recent_records"]

log = logging.getLogger("osteotel.ingest.deadletter")

PAYLOAD_KEEP_BYTES = 65_536
_FILES = "dead-letter-*.jsonl"  # the day in the name sorts them oldest first
_TAIL_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected message and why."""

    received_ns: int
    topic: str
    reason: str
    detail: str
    payload: bytes
    hub: str | None = None
    device: str | None = None
    field: str | None = None
    index: int | None = None

    def to_json(self) -> str:
        """The dead-letter record as one line of JSON."""
        kept = self.payload[:PAYLOAD_KEEP_BYTES]
        try:
            text, encoding = kept.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
        record = {
            "v": 1,
            "received_ns": self.received_ns,
            "topic": self.topic,
            "hub": self.hub,
            "device": self.device,
            "reason": self.reason,
            "field": self.field,
            "index": self.index,
            "detail": self.detail,
            "payload_bytes": len(self.payload),
            "payload_sha256": hashlib.sha256(self.payload).hexdigest(),
            "payload_encoding": encoding,
            "payload_truncated": len(kept) < len(self.payload),
            "payload": text,
        }
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


class DeadLetterWriter:
    """Appends dead letters to the day's file; `flush()` makes them durable (fsync)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._day: str | None = None
        self._file: IO[str] | None = None

    def append(self, letter: DeadLetter) -> None:
        """Write one record (buffered until `flush()`)."""
        day = datetime.fromtimestamp(letter.received_ns / 1e9, UTC).strftime("%Y%m%d")
        if day != self._day or self._file is None:
            self.close()
            self._directory.mkdir(parents=True, exist_ok=True)
            path = self._directory / f"dead-letter-{day}.jsonl"
            self._file = path.open("a", encoding="utf-8")
            self._day = day
            if _ends_without_newline(path):
                # A record cut short by a crash: it must not swallow the next one.
                self._file.write("\n")
        self._file.write(letter.to_json() + "\n")

    def keep_refused_batch(self, body: bytes) -> Path:
        """Keep a spooled batch that the server refused, as is, beside the dead letters."""
        self._directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(body).hexdigest()[:16]
        path = self._directory / f"refused-batch-{digest}.lp"
        path.write_bytes(body)
        return path

    def flush(self) -> None:
        """Push written records to disk."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush and close the current file."""
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None


def _ends_without_newline(path: Path) -> bool:
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return False
        file.seek(-1, os.SEEK_END)
        return file.read(1) != b"\n"


def _lines_backwards(path: Path) -> Iterator[bytes]:
    """A file's non-empty lines, last first, read backwards one block at a time."""
    with path.open("rb") as file:
        position = file.seek(0, os.SEEK_END)
        rest = b""  # the start of a line whose beginning is in an earlier block
        while position > 0:
            step = min(_TAIL_BLOCK_BYTES, position)
            position -= step
            file.seek(position)
            lines = (file.read(step) + rest).split(b"\n")
            rest = lines[0]
            yield from (line for line in reversed(lines[1:]) if line)
        if rest:
            yield rest


def recent_records(directory: Path, limit: int) -> Iterator[dict[str, Any]]:
    """The last `limit` dead-letter lines on disk as records, newest first.

    Files are read from their ends, newest day first, one block at a time, so time and memory
    are bounded by `limit` records whatever the files hold. A line that is not a JSON object
    (cut short by a crash) counts toward `limit`, is skipped, and is logged once
    (`dead_letters_unreadable`).
    """
    lines = (
        line
        for path in sorted(directory.glob(_FILES), reverse=True)
        for line in _lines_backwards(path)
    )
    unreadable = 0
    for line in itertools.islice(lines, limit):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            yield record
        else:
            unreadable += 1
    if unreadable:
        log.warning(kv("dead_letters_unreadable", lines=unreadable, directory=str(directory)))
