"""The DSP estimator's state across restarts: saved at a graceful stop, restored at start.

Each device's trends — step stiffness history, load share, consolidation index and the
readiness projection — take days to weeks to build. A graceful stop (SIGTERM, after every
received message has been stored and acknowledged) writes the whole `FleetEstimator` to
`{state_dir}/estimator.npz` (numpy arrays and a JSON header; no pickle), fsync'd and renamed
into place; the next start restores it and deletes the file, so a snapshot is used once and
never after the messages it already reflects. After a crash (or a stop that could not drain)
there is no snapshot and the estimator starts afresh, as before this module: the broker
redelivers what was not acknowledged, and a snapshot taken mid-stream would count it twice.
"""

import contextlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from dsp.estimator import FleetEstimator
from osteotel.logs import kv

__all__ = ["STATE_FILE", "load_estimator", "save_estimator"]

log = logging.getLogger("osteotel.ingest.state")

STATE_FILE = "estimator.npz"


def save_estimator(fleet: FleetEstimator, directory: Path) -> bool:
    """Write the fleet's state durably to `directory/estimator.npz`; logs either way.

    Returns:
        Whether it was written. A failure (disk full, no permission) is logged, not raised:
        the stop goes on, and the next start begins with a fresh estimator.
    """
    path = directory / STATE_FILE
    temporary = directory / f"{STATE_FILE}.tmp"
    # Typed loosely: numpy's stubs would match the arrays against savez's own keywords.
    arrays: dict[str, Any] = fleet.snapshot()
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
        log.error(kv("estimator_state_not_saved", path=path, detail=str(exc)))
        return False
    log.info(kv("estimator_state_saved", devices=len(fleet.devices), path=path))
    return True


def load_estimator(directory: Path) -> FleetEstimator | None:
    """The fleet saved in `directory`, or None when there is none or it cannot be used.

    A snapshot that is unreadable or was made by another build or with other settings is
    kept beside as `estimator.npz.refused` for inspection, and logged; ingest then starts
    with a fresh estimator rather than not at all.
    """
    path = directory / STATE_FILE
    if not path.exists():
        return None
    try:
        # The file opened here, not by numpy: numpy leaves it open when the archive is bad.
        with path.open("rb") as file, np.load(file, allow_pickle=False) as saved:
            fleet = FleetEstimator.restore(saved)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        refused = path.with_name(f"{STATE_FILE}.refused")
        with contextlib.suppress(OSError):  # if it stays, it is refused again next time
            path.rename(refused)
        log.warning(kv("estimator_state_refused", path=refused, detail=str(exc)))
        return None
    try:
        path.unlink()  # used once: a later crash must not bring this older state back
    except OSError as exc:
        # Used now but still there, it could be restored again after a crash: start afresh.
        log.error(kv("estimator_state_not_removed", path=path, detail=str(exc)))
        return None
    log.info(kv("estimator_state_restored", devices=len(fleet.devices)))
    return fleet
