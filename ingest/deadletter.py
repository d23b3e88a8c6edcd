"""Dead letters: every rejected payload, kept on disk with the rule it broke.

One JSON object per line in `{dir}/dead-letter-YYYYMMDD.jsonl` (UTC day of receipt); the form
is documented in docs/contract.md. Payloads are kept up to `PAYLOAD_KEEP_BYTES` (UTF-8 text as
is, anything else base64) with the size and SHA-256 of the whole, so an oversize payload cannot
fill the disk and can still be matched against a hub's own log.
"""

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

__all__ = ["PAYLOAD_KEEP_BYTES", "DeadLetter", "DeadLetterWriter"]

PAYLOAD_KEEP_BYTES = 65_536


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
