"""Which ingest process owns which hub, and the topic filters that follow from it.

With `--processes N` (docs/ingest.md, "Scaling across processes") a hub belongs to process
BLAKE2b(hub id) mod N: one hub's devices, its status and its credentials stay together, every
process and every restart agree, and a hub added to the registry moves no other hub. (Not
CRC-32: it is linear over GF(2), so ids that differ in one character, HUB-A, HUB-B, HUB-C,
all fell to process 0 of 2.) Each
process subscribes only to the subtrees of the hubs it owns, so the broker sends every message
to one process. A single process subscribes to the wildcards instead, and so also receives
(and rejects, naming the rule) what an unregistered hub publishes.
"""

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from devices.contract import SUBSCRIPTIONS, Rejected, hub_filter, parse_topic

__all__ = ["Subscriptions", "hub_partition", "partition_of", "subscriptions"]


def hub_partition(hub: str, partitions: int) -> int:
    """The process (0..partitions-1) that owns a hub."""
    digest = hashlib.blake2b(hub.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def partition_of(topic: str, partitions: int) -> int:
    """The process that owns a topic's hub; a topic that does not parse belongs to process 0,
    which rejects it once."""
    try:
        parsed = parse_topic(topic)
    except Rejected:
        return 0
    return hub_partition(parsed.hub, partitions)


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """The topic filters one process wants, and those an earlier run of it may have left in its
    persistent session (another process count, a hub that moved): unsubscribed on connect."""

    wanted: tuple[str, ...]
    stale: tuple[str, ...]


def subscriptions(hubs: Iterable[str], partitions: int, partition: int) -> Subscriptions:
    """The filters of process `partition` of `partitions` for the registry's hubs."""
    if partitions == 1:
        return Subscriptions(wanted=SUBSCRIPTIONS, stale=())
    mine: list[str] = []
    others: list[str] = []
    for hub in sorted(hubs):
        (mine if hub_partition(hub, partitions) == partition else others).append(hub_filter(hub))
    return Subscriptions(wanted=tuple(mine), stale=(*SUBSCRIPTIONS, *others))
