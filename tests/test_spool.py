"""The outage spool keeps batches durably and in order, within its size limit."""

from pathlib import Path

import pytest

from ingest.spool import Spool, SpoolFull


def test_batches_come_back_in_order_after_a_restart(tmp_path: Path) -> None:
    """What was spooled is replayed oldest first, also by a new Spool on the same directory."""
    spool = Spool(tmp_path, max_bytes=1_000)
    for number in range(5):
        spool.append(f"raw f={number} {number}\n".encode())
    spool.pop_oldest()
    reopened = Spool(tmp_path, max_bytes=1_000)
    assert reopened.batches == 4
    assert reopened.size_bytes == sum(len(f"raw f={n} {n}\n") for n in range(1, 5))
    seen = []
    while (body := reopened.oldest()) is not None:
        seen.append(body)
        reopened.pop_oldest()
    assert seen == [f"raw f={n} {n}\n".encode() for n in range(1, 5)]
    reopened.append(b"raw f=9 9\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["0000000000000005.lp"]


def test_a_full_spool_refuses_instead_of_dropping(tmp_path: Path) -> None:
    """A batch that does not fit raises SpoolFull and leaves the spool as it was."""
    spool = Spool(tmp_path, max_bytes=100)
    spool.append(b"x" * 60)
    with pytest.raises(SpoolFull):
        spool.append(b"y" * 60)
    assert spool.batches == 1
    assert spool.oldest() == b"x" * 60


def test_a_half_written_batch_is_not_replayed(tmp_path: Path) -> None:
    """A temporary file left by a crash before the rename is discarded on start."""
    (tmp_path / "0000000000000000.tmp").write_bytes(b"raw f=1 1\nraw f=")
    spool = Spool(tmp_path, max_bytes=1_000)
    assert spool.batches == 0
    assert list(tmp_path.iterdir()) == []
