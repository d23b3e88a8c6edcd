"""Rejected messages the broker delivers again after a crash, recognised by their identity.

A rejected message is acknowledged only after its dead letter is fsync'd and its `rejection`
point is written. If ingest dies in between, the message is unacknowledged and the broker
delivers it again to the next ingest process. Without this module the copy got a second dead
letter, a second count and a second point at its new arrival time.

A message's identity is its topic and the SHA-256 of its payload: what a dead-letter record
already holds (`topic`, `payload_sha256`). When the previous process did not stop cleanly,
ingest reads back the last `limit` dead letters at start (`recall`), and it remembers each new
rejection until it is acknowledged (`remember`, a reconnect to the broker in between). A
rejected message the broker marks DUP (sent again: it was in flight, unacknowledged) whose
identity is among them is that rejection again: no dead letter and no count, and its point is
written once more at the first receipt time, which overwrites it. Once that copy is
acknowledged its identity is forgotten. The same bytes sent again by the hub come without DUP
and are a new rejection.

A clean stop (everything received stored and acknowledged) leaves a mark in the state
directory (`mark_all_acknowledged`); the next start takes it away (`take_all_acknowledged`)
and then recalls nothing, since nothing can come back. The rule and its limits are in
docs/ingest.md, "Rejections delivered again".
"""

import hashlib
import os
from pathlib import Path

from .deadletter import recent_records

__all__ = [
    "Identity",
    "Redeliveries",
    "identity_of",
    "mark_all_acknowledged",
    "take_all_acknowledged",
]

Identity = tuple[str, str]
"""(topic, SHA-256 of the payload in hex)."""

_MARK = "all-acknowledged"


def identity_of(topic: str, payload: bytes) -> Identity:
    """The identity of a message: its topic and the SHA-256 of its whole payload."""
    return topic, hashlib.sha256(payload).hexdigest()


def mark_all_acknowledged(state_dir: Path) -> None:
    """Record that this process stopped with every received message acknowledged."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / _MARK).write_bytes(b"")
    _sync_directory(state_dir)


def take_all_acknowledged(state_dir: Path) -> bool:
    """Whether the previous process stopped cleanly; the mark is removed (durably) either way,
    so that a crash of this process is not taken for a clean stop."""
    mark = state_dir / _MARK
    if not mark.exists():
        return False
    mark.unlink()
    _sync_directory(state_dir)
    return True


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Redeliveries:
    """Rejections that may come back from the broker: identity -> first `received_ns`.

    Args:
        limit: the most dead letters `recall` reads back; 0 recalls none.
    """

    def __init__(self, *, limit: int) -> None:
        self._limit = limit
        self._received_ns: dict[Identity, int] = {}

    def __len__(self) -> int:
        return len(self._received_ns)

    def recall(self, dead_letter_dir: Path) -> None:
        """Read back the last `limit` dead letters (blocking file reads)."""
        if self._limit == 0:
            return
        for record in recent_records(dead_letter_dir, self._limit):  # newest first
            topic = record.get("topic")
            digest = record.get("payload_sha256")
            received_ns = record.get("received_ns")
            if isinstance(topic, str) and isinstance(digest, str) and isinstance(received_ns, int):
                # The latest record wins: messages are acknowledged in the order received, so
                # of two with the same bytes only the later can still be unacknowledged.
                self._received_ns.setdefault((topic, digest), received_ns)

    def remember(self, identity: Identity, received_ns: int) -> None:
        """A new rejection, unacknowledged until `forget`: a reconnect to the broker before then
        brings it back marked DUP."""
        self._received_ns[identity] = received_ns

    def first_received_ns(self, identity: Identity) -> int | None:
        """When a recalled rejection was received (UTC epoch ns), else None."""
        return self._received_ns.get(identity)

    def forget(self, identity: Identity) -> None:
        """Its copy is acknowledged: the broker will not deliver it again."""
        self._received_ns.pop(identity, None)
