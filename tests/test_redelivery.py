"""Recognising a rejected message the broker delivers again: dead letters read back from disk."""

import hashlib
import json
from pathlib import Path

import pytest

from ingest.deadletter import DeadLetter, DeadLetterWriter, recent_records
from ingest.redelivery import (
    Redeliveries,
    identity_of,
    mark_all_acknowledged,
    take_all_acknowledged,
)

TOPIC = "osteotel/v1/HUB-A/DX-0001/telemetry"
DAY_1_NS = 1_764_000_000_000_000_000  # 2025-11-24 UTC
DAY_2_NS = DAY_1_NS + 86_400_000_000_000


def letter(received_ns: int, payload: bytes) -> DeadLetter:
    return DeadLetter(
        received_ns=received_ns, topic=TOPIC, reason="malformed", detail="not JSON",
        payload=payload,
    )  # fmt: skip


def write(directory: Path, letters: list[DeadLetter]) -> None:
    writer = DeadLetterWriter(directory)
    for item in letters:
        writer.append(item)
    writer.close()


def test_identity_is_topic_and_payload_sha256() -> None:
    """A message's identity is what its dead letter records: topic and payload SHA-256."""
    record = json.loads(letter(DAY_1_NS, b"{oops").to_json())
    assert identity_of(TOPIC, b"{oops") == (record["topic"], record["payload_sha256"])
    assert identity_of(TOPIC, b"{oops") == (TOPIC, hashlib.sha256(b"{oops").hexdigest())


@pytest.mark.parametrize("limit", [1, 3, 5, 8], ids=["1", "3", "5", "all"])
def test_recent_records_are_the_last_ones_across_days_newest_first(
    tmp_path: Path, limit: int
) -> None:
    """The last `limit` records come back newest first, across day files."""
    letters = [letter(DAY_1_NS + k, b"a%d" % k) for k in range(3)]
    letters += [letter(DAY_2_NS + k, b"b%d" % k) for k in range(5)]
    write(tmp_path, letters)
    assert len(list(tmp_path.glob("dead-letter-*.jsonl"))) == 2
    records = list(recent_records(tmp_path, limit))
    assert [r["received_ns"] for r in records] == [x.received_ns for x in letters][::-1][:limit]


def test_recent_records_of_a_missing_directory_are_none(tmp_path: Path) -> None:
    """No dead-letter directory yet: nothing to recall."""
    assert list(recent_records(tmp_path / "absent", 10)) == []


def test_a_record_cut_by_a_crash_is_skipped_and_does_not_swallow_the_next(
    tmp_path: Path,
) -> None:
    """A torn last line stays unreadable; the next record starts on a line of its own."""
    write(tmp_path, [letter(DAY_1_NS, b"first")])
    path = next(tmp_path.glob("dead-letter-*.jsonl"))
    with path.open("a", encoding="utf-8") as file:
        file.write('{"v":1,"received_ns":17640')  # the crash
    write(tmp_path, [letter(DAY_1_NS + 2, b"after")])
    records = list(recent_records(tmp_path, 10))
    assert [r["received_ns"] for r in records] == [DAY_1_NS + 2, DAY_1_NS]


def test_recall_maps_each_identity_to_its_receipt(tmp_path: Path) -> None:
    """Identities read back from disk map to their received_ns; others are unknown."""
    write(tmp_path, [letter(DAY_1_NS + k, b"p%d" % k) for k in range(4)])
    memory = Redeliveries(limit=10)
    memory.recall(tmp_path)
    assert len(memory) == 4
    assert memory.first_received_ns(identity_of(TOPIC, b"p2")) == DAY_1_NS + 2
    assert memory.first_received_ns(identity_of(TOPIC, b"p9")) is None
    other_topic = "osteotel/v1/HUB-A/DX-0002/telemetry"
    assert memory.first_received_ns(identity_of(other_topic, b"p2")) is None


def test_of_the_same_bytes_twice_the_later_letter_is_recalled(tmp_path: Path) -> None:
    """Only the later of two rejections of the same bytes can still be unacknowledged."""
    write(tmp_path, [letter(DAY_1_NS, b"same"), letter(DAY_1_NS + 5, b"same")])
    memory = Redeliveries(limit=10)
    memory.recall(tmp_path)
    assert memory.first_received_ns(identity_of(TOPIC, b"same")) == DAY_1_NS + 5


@pytest.mark.parametrize(("limit", "recalled"), [(0, 0), (2, 2), (10, 5)], ids=["0", "2", "10"])
def test_recall_is_bounded_by_the_limit(tmp_path: Path, limit: int, recalled: int) -> None:
    """Only the newest `limit` dead letters are read back; 0 reads none."""
    write(tmp_path, [letter(DAY_1_NS + k, b"p%d" % k) for k in range(5)])
    memory = Redeliveries(limit=limit)
    memory.recall(tmp_path)
    assert len(memory) == recalled
    newest = [memory.first_received_ns(identity_of(TOPIC, b"p%d" % k)) for k in range(5)]
    assert newest == [None] * (5 - recalled) + [DAY_1_NS + k for k in range(5 - recalled, 5)]


def test_an_acknowledged_redelivery_is_forgotten(tmp_path: Path) -> None:
    """Once its copy is acknowledged, the same payload is a new rejection."""
    write(tmp_path, [letter(DAY_1_NS, b"x")])
    memory = Redeliveries(limit=10)
    memory.recall(tmp_path)
    memory.forget(identity_of(TOPIC, b"x"))
    assert memory.first_received_ns(identity_of(TOPIC, b"x")) is None
    assert len(memory) == 0


def test_a_clean_stop_mark_is_taken_once(tmp_path: Path) -> None:
    """The mark a clean stop leaves is seen by the next start only."""
    state_dir = tmp_path / "state"
    assert take_all_acknowledged(state_dir) is False
    mark_all_acknowledged(state_dir)
    assert take_all_acknowledged(state_dir) is True
    assert take_all_acknowledged(state_dir) is False


def test_records_longer_than_a_read_block_come_back_whole(tmp_path: Path) -> None:
    """40 records of 60 kB (2.4 MB, several 1 MiB blocks): the newest 30 parse, in order."""
    letters = [letter(DAY_1_NS + k, bytes([65 + k % 26]) * 60_000) for k in range(40)]
    write(tmp_path, letters)
    records = list(recent_records(tmp_path, 30))
    assert [r["received_ns"] for r in records] == [DAY_1_NS + k for k in range(39, 9, -1)]
    assert all(len(r["payload"]) == 60_000 for r in records)


def test_a_new_rejection_is_remembered_until_acknowledged() -> None:
    """A rejection not yet acknowledged when the connection drops comes back marked DUP to the
    same process: it is remembered with its receipt time until its acknowledgement."""
    redeliveries = Redeliveries(limit=0)
    identity = identity_of("osteotel/v1/HUB-A/DX-0001/telemetry", b"{bad")
    redeliveries.remember(identity, 1_700_000_000_000_000_123)
    assert redeliveries.first_received_ns(identity) == 1_700_000_000_000_000_123
    redeliveries.forget(identity)
    assert redeliveries.first_received_ns(identity) is None
