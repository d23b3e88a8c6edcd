"""The estimator's checkpoint: its state and how far into each device's data it has read.

Each device's trends (step stiffness history, load share, consolidation index, the readiness
projection) take days to weeks to build. Ingest takes a checkpoint every
`checkpoint_interval_s` or `checkpoint_batches` committed batches, at the end of handling a
batch of messages: a copy of `FleetEstimator.snapshot()` and, per device, its position — the
time of the last sample and of the last event the estimator was fed. The checkpoint is
written only once every message handled before it has been stored and acknowledged, so
whatever the estimator saw after it is either at the broker (not acknowledged: delivered
again) or in InfluxDB (read back at the next start, ingest/catchup.py). That makes a crash at
any moment recoverable; docs/ingest.md has the whole argument.

The file, `{state_dir}/checkpoint.npz`, holds numpy arrays and a JSON header (format,
estimator settings fingerprint, positions); no pickle. It is written to a temporary name,
fsync'd, renamed into place and the directory fsync'd, so it is whole or the previous one.
A start reads it and leaves it there; one that cannot be used (unreadable, another format,
other estimator settings) is renamed `checkpoint.npz.refused` and every device is rebuilt
from the store.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsp.estimator import EstimatorConfig, FleetEstimator
from osteotel.logs import kv

__all__ = [
    "CHECKPOINT_FILE",
    "FORMAT",
    "Checkpoint",
    "Checkpointer",
    "Position",
    "fingerprint",
    "read_checkpoint",
    "take_checkpoint",
    "write_checkpoint",
]

log = logging.getLogger("osteotel.ingest.checkpoint")

CHECKPOINT_FILE = "checkpoint.npz"
# Bumped whenever the file's layout changes.
FORMAT = 1
_FLEET = "fleet_"
_OBSOLETE_FILE = "estimator.npz"  # the graceful-stop snapshot of earlier builds


@dataclass(slots=True)
class Position:
    """How far into a device's data the estimator has read (UTC epoch ns; -1: nothing yet).

    Attributes:
        sample_ns: time of the last sample fed.
        event_ns: time of the last event fed.
    """

    sample_ns: int = -1
    event_ns: int = -1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The estimator as it was after handling message number `handled` (a running count).

    Attributes:
        arrays: a copy of `FleetEstimator.snapshot()`.
        positions: each device's position at that moment.
        handled: the sequence number of the last message handled before it was taken.
    """

    arrays: dict[str, NDArray[Any]]
    positions: dict[str, Position]
    handled: int


def fingerprint(config: EstimatorConfig) -> str:
    """A short digest of the estimator settings: a checkpoint is used only with the same."""
    return hashlib.sha256(repr(config).encode()).hexdigest()[:16]


def take_checkpoint(
    fleet: FleetEstimator, positions: Mapping[str, Position], handled: int
) -> Checkpoint:
    """Copy the fleet's state and positions now, so that they can be written later."""
    arrays = {name: np.array(array, copy=True) for name, array in fleet.snapshot().items()}
    copied = {device: Position(p.sample_ns, p.event_ns) for device, p in positions.items()}
    return Checkpoint(arrays, copied, handled)


def write_checkpoint(checkpoint: Checkpoint, directory: Path, config: EstimatorConfig) -> bool:
    """Write a checkpoint durably to `directory/checkpoint.npz`; logs either way.

    Returns:
        Whether it was written. A failure (disk full, no permission) is logged, not raised:
        the previous checkpoint stays in place and is still consistent.
    """
    path = directory / CHECKPOINT_FILE
    temporary = directory / f"{CHECKPOINT_FILE}.tmp"
    devices = sorted(checkpoint.positions)
    header = {"format": FORMAT, "settings": fingerprint(config), "devices": devices}
    # Typed loosely: numpy's stubs would match the arrays against savez's own keywords.
    arrays: dict[str, Any] = {f"{_FLEET}{name}": a for name, a in checkpoint.arrays.items()}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    arrays["sample_ns"] = np.array(
        [checkpoint.positions[d].sample_ns for d in devices], dtype=np.int64
    )
    arrays["event_ns"] = np.array(
        [checkpoint.positions[d].event_ns for d in devices], dtype=np.int64
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        temporary.rename(path)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as exc:
        log.error(kv("checkpoint_not_written", path=path, detail=str(exc)))
        return False
    log.info(kv("checkpoint_written", devices=len(devices), handled=checkpoint.handled))
    return True


def _header(raw: NDArray[Any], config: EstimatorConfig) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(bytes(raw).decode())
    if header.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {header.get('format')!r}, not {FORMAT}")
    if header.get("settings") != fingerprint(config):
        raise ValueError("the checkpoint was made with other estimator settings")
    return header


def read_checkpoint(
    directory: Path, config: EstimatorConfig
) -> tuple[FleetEstimator, dict[str, Position]] | None:
    """The fleet and positions of `directory`'s checkpoint, or None when there is none usable.

    The file stays where it is: until a newer one replaces it, it is still the consistent
    point to start from after another crash. One that is unreadable or was made by another
    format or with other estimator settings is renamed `checkpoint.npz.refused` and logged.
    """
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        obsolete = directory / _OBSOLETE_FILE
        if obsolete.exists():
            # Written by builds before the checkpoint, without positions: it cannot say what
            # to catch up on, so every device is rebuilt; the file is left for the operator.
            log.warning(kv("estimator_state_obsolete", path=obsolete, action="rebuild"))
        return None
    try:
        # The file opened here, not by numpy: numpy leaves it open when the archive is bad.
        with path.open("rb") as file, np.load(file, allow_pickle=False) as saved:
            header = _header(saved["header"], config)
            fleet_arrays = {
                name.removeprefix(_FLEET): saved[name]
                for name in saved.files
                if name.startswith(_FLEET)
            }
            fleet = FleetEstimator.restore(fleet_arrays, config)
            positions = {
                device: Position(int(sample_ns), int(event_ns))
                for device, sample_ns, event_ns in zip(
                    header["devices"], saved["sample_ns"], saved["event_ns"], strict=True
                )
            }
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        refused = path.with_name(f"{CHECKPOINT_FILE}.refused")
        with contextlib.suppress(OSError):  # if it stays, it is refused again next time
            path.rename(refused)
        log.warning(kv("checkpoint_refused", path=refused, detail=str(exc)))
        return None
    log.info(kv("checkpoint_restored", devices=len(fleet.devices)))
    return fleet, positions


class Checkpointer:
    """When ingest takes a checkpoint and when it may write it (ingest/service.py calls it).

    Args:
        directory: where `checkpoint.npz` goes.
        config: the estimator's settings (their fingerprint goes into the file).
        interval_s: a checkpoint is due this long after the last one ...
        batches: ... or after this many committed batches, whichever comes first.
    """

    def __init__(
        self, *, directory: Path, config: EstimatorConfig, interval_s: float, batches: int
    ) -> None:
        self._directory = directory
        self._config = config
        self._interval_s = interval_s
        self._batches = batches
        self._batches_since = 0
        self._taken_at = time.monotonic()
        self._committed = 0
        self._taken_seq = -1  # the message number the last checkpoint taken reflects
        # One taken and waiting for its messages to be committed, and one being written.
        self._waiting: Checkpoint | None = None
        self._writing: asyncio.Task[bool] | None = None

    def handled(self, fleet: FleetEstimator, positions: Mapping[str, Position], seq: int) -> None:
        """Call after handling messages up to number `seq`: copies the state if one is due."""
        if self._waiting is not None or (self._writing is not None and not self._writing.done()):
            return
        if (
            self._batches_since < self._batches
            and time.monotonic() - self._taken_at < self._interval_s
        ):
            return
        self._waiting = take_checkpoint(fleet, positions, seq)
        self._batches_since = 0
        self._taken_at = time.monotonic()
        self._taken_seq = seq

    def quiet(
        self,
        fleet: FleetEstimator,
        positions: Mapping[str, Position],
        seq: int,
        published: Callable[[], Awaitable[bool]],
    ) -> None:
        """Call on a timer while live: a stream gone quiet after a burst is checkpointed too,
        not only once the next message comes. Takes a checkpoint of what was handled since
        the last one (when one is due) and writes it at once if it is all committed."""
        if seq != self._taken_seq:
            self.handled(fleet, positions, seq)
        self._write_committed(published)

    def committed(self, seq: int, published: Callable[[], Awaitable[bool]]) -> None:
        """Call once a batch up to message number `seq` is stored and acknowledged: writes
        the waiting checkpoint when all it reflects is committed and the estimates published
        before it are acknowledged by the broker (`published`): a record published but still
        in this process's send queue would be lost to the alert service by a crash after the
        write, as catch-up starts after the checkpoint."""
        self._committed = seq
        self._batches_since += 1
        self._write_committed(published)

    def _write_committed(self, published: Callable[[], Awaitable[bool]]) -> None:
        waiting = self._waiting
        if waiting is None or self._committed < waiting.handled:
            return
        if self._writing is not None and not self._writing.done():
            return  # one write at a time: the next commit or quiet tick writes it
        self._waiting = None
        self._writing = asyncio.create_task(
            self._write(waiting, published), name="ingest.checkpoint"
        )

    async def write_now(
        self,
        fleet: FleetEstimator,
        positions: Mapping[str, Position],
        seq: int,
        published: Callable[[], Awaitable[bool]],
    ) -> None:
        """Write the state now: only when everything handled is committed (after catch-up,
        whose records are stored before it returns, and after a complete drain)."""
        await self.written()
        self._waiting = None
        self._taken_seq = seq
        await self._write(take_checkpoint(fleet, positions, seq), published)

    async def _write(
        self, checkpoint: Checkpoint, published: Callable[[], Awaitable[bool]]
    ) -> bool:
        if not await published():
            # The broker is away: the next checkpoint is taken and tried again.
            log.warning(kv("checkpoint_deferred", reason="estimates_not_acknowledged"))
            return False
        return await asyncio.to_thread(write_checkpoint, checkpoint, self._directory, self._config)

    async def written(self) -> None:
        """Wait for a write in progress, if any."""
        if self._writing is not None:
            await self._writing
