"""What ingest makes of received messages on their way to the store and the acknowledgement.

`IngestService` (ingest/service.py) turns each batch of received messages into `Work`, runs the
accepted frames through the DSP together (`PendingFrames`), and commits work in `Batch`es.
"""

from dataclasses import dataclass, field

from devices.codec import Encoding
from devices.contract import Frame
from osteotel.mqtt import Received

from .deadletter import DeadLetter
from .redelivery import Identity

__all__ = ["Batch", "PendingFrames", "Work"]


@dataclass(slots=True)
class Work:
    """One received message turned into what must be stored before it is acknowledged."""

    message: Received
    # Its line protocol in parts, joined into the batch's body at commit without a copy of
    # their own (a frame's raw lines are a slice of its batch's buffer, ingest/records.py).
    lines: list[bytes | memoryview]
    # How many lines (points) `lines` holds: what a batch counts against `batch_max_lines`.
    points: int
    device: str | None = None
    samples: int = 0
    # What `lines` writes where (ingest/tier.py): `raw` points (samples), `raw_1s` points, and
    # the samples those `raw_1s` points summarise.
    raw_points: int = 0
    summary_points: int = 0
    summarised: int = 0
    t_last_ns: int = 0
    dead_letter: DeadLetter | None = None
    # A recognised redelivery's identity: forgotten by `Redeliveries` once acknowledged.
    rejection: Identity | None = None
    estimates: list[tuple[str, bytes]] = field(default_factory=list)
    # Running number of the work in the order made (ingest/checkpoint.py).
    seq: int = 0
    # Kept in the capture files (ingest/capture.py): the message's hub, and whether its payload
    # is known to be a strict JSON object (an accepted JSON frame) or is to be looked at (None).
    capture: tuple[str, bool | None] | None = None


@dataclass(slots=True)
class PendingFrames:
    """Accepted frames of a batch not yet through the DSP, and the work each belongs to; and
    those whose lines are not written yet (with their hub and encoding)."""

    frames: list[Frame] = field(default_factory=list)
    works: list[Work] = field(default_factory=list)
    unwritten: list[tuple[Work, str, Frame, Encoding]] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """Work committed together: one write to the store, then the acknowledgements in order."""

    items: list[Work] = field(default_factory=list)
    lines: int = 0
