"""A rejected message becomes its dead letter, its `rejection` point and a count, once.

Once even when the broker delivers it again: a message marked DUP whose identity is a
rejection not yet acknowledged, or one read back from the dead letters after a crash
(ingest/redelivery.py), keeps its first receipt time and is counted as delivered again.
"""

import contextlib
import logging
from dataclasses import dataclass

from devices.contract import Rejected, parse_topic
from osteotel.logs import kv
from osteotel.mqtt import Received

from .accounting import Accounting
from .deadletter import DeadLetter
from .records import rejection_lines
from .redelivery import Identity, Redeliveries, identity_of

__all__ = ["Rejection", "Rejections"]

log = logging.getLogger("osteotel.ingest")


@dataclass(frozen=True, slots=True)
class Rejection:
    """What a rejected message leaves: its `rejection` point, its dead letter (None when it is
    one delivered again, whose letter is on disk), and its identity, forgotten once the message
    is acknowledged."""

    lines: bytes
    dead_letter: DeadLetter | None
    identity: Identity


class Rejections:
    """Judges each rejected message new or delivered again, and counts it once.

    Args:
        accounting: the counters of rejections (`rejected`, `rejected_again`).
        redeliveries: the rejections that may come back.
    """

    def __init__(self, *, accounting: Accounting, redeliveries: Redeliveries) -> None:
        self._accounting = accounting
        self.redeliveries = redeliveries
        self._last_ns = 0

    def reject(self, message: Received, rejected: Rejected) -> Rejection:
        """The point, dead letter and identity of a rejected message; counted and logged."""
        hub = device = None
        with contextlib.suppress(Rejected):
            topic = parse_topic(message.topic)
            hub, device = topic.hub, topic.device
        identity = identity_of(message.topic, message.payload)
        first_ns = self.redeliveries.first_received_ns(identity) if message.dup else None
        if first_ns is None:
            # Two rejections in the same nanosecond must stay two points.
            received_ns = max(message.received_ns, self._last_ns + 1)
            self._last_ns = received_ns
            self.redeliveries.remember(identity, received_ns)
            self._accounting.reject(hub, rejected.reason)
            log.warning(
                kv("rejected", reason=rejected.reason, topic=message.topic, field=rejected.field,
                   index=rejected.index, detail=rejected.detail,
                   payload_bytes=len(message.payload))
            )  # fmt: skip
            letter: DeadLetter | None = DeadLetter(
                received_ns=received_ns, topic=message.topic, reason=rejected.reason,
                detail=rejected.detail, payload=message.payload, hub=hub, device=device,
                field=rejected.field, index=rejected.index,
            )  # fmt: skip
        else:
            # Delivered again (after a crash or a reconnect) before its acknowledgement: its
            # dead letter is on disk, and its point is written again at the first receipt time.
            received_ns, letter = first_ns, None
            self._accounting.reject_again(hub, rejected.reason)
            log.info(
                kv("rejected_again", reason=rejected.reason, topic=message.topic,
                   received_ns=first_ns)
            )  # fmt: skip
        lines = rejection_lines(
            rejected,
            hub=hub,
            topic=message.topic,
            payload_bytes=len(message.payload),
            received_ns=received_ns,
        )
        return Rejection(lines, letter, identity)
