"""`osteotel ingest --processes N`: one ingest process per core, each owning a share of hubs.

Child k subscribes, with its own persistent session (`{client_id}-{k}`), only to the subtrees of
the hubs whose BLAKE2b hash modulo N is k (ingest/partition.py), so the broker sends each
message to one child and each device's state — sequence tracking, and the DSP estimators —
lives in exactly one process. On a site that outgrows one broker, a clustered broker's shared
subscription hashed by the publishing hub (EMQX: `$share/osteotel/...` with
`shared_subscription_strategy = hash_clientid`) would do the same across machines
(docs/ingest.md).
"""

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from types import FrameType

from osteotel.settings import Settings

__all__ = ["child_environment", "partitions_here", "supervise"]


def partitions_here(settings: Settings, processes: int) -> range:
    """The partitions this machine's `processes` children own, of the site's total.

    One machine (the default settings): 0..processes-1 of `processes`. Several machines share
    the site's hubs by setting, on each, `partitions` to the site's total and `partition` to
    this machine's first: machine A `partitions=4, partition=0`, machine B `partitions=4,
    partition=2`, each with `--processes 2` (docs/ingest.md, "Across machines").

    Raises:
        ValueError: the children would run past the site's last partition.
    """
    first, total = settings.ingest.partition, max(settings.ingest.partitions, processes)
    if first + processes > total:
        raise ValueError(
            f"partitions {first}..{first + processes - 1} do not exist: the site has {total}"
        )
    return range(first, first + processes)


def child_environment(
    settings: Settings, partition: int, partitions: int, local: int
) -> dict[str, str]:
    """The environment of the child owning `partition` of the site's `partitions`, the `local`-th
    on this machine (its HTTP port is `http_port + local`)."""
    ingest = settings.ingest
    env = {
        **os.environ,
        "OSTEOTEL_INGEST__PARTITIONS": str(partitions),
        "OSTEOTEL_INGEST__PARTITION": str(partition),
        "OSTEOTEL_MQTT__CLIENT_ID": f"{settings.mqtt.client_id}-{partition}",
        "OSTEOTEL_INGEST__SPOOL_DIR": str(ingest.spool_dir / f"partition-{partition}"),
        "OSTEOTEL_INGEST__STATE_DIR": str(ingest.state_dir / f"partition-{partition}"),
        # Each child appends to its own files: two processes' flushes to one file could
        # interleave their lines, and a child reads back only the letters it wrote.
        "OSTEOTEL_INGEST__DEAD_LETTER_DIR": str(ingest.dead_letter_dir / f"partition-{partition}"),
    }
    if ingest.http_port:
        env["OSTEOTEL_INGEST__HTTP_PORT"] = str(ingest.http_port + local)
    return env


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with(supervisor: int) -> None:
    """In a child, before it runs ingest: ask Linux for a SIGTERM (a graceful stop) when the
    supervisor dies, however it dies — a SIGKILLed supervisor otherwise left its children
    running, still subscribed, beside the next supervisor's. Elsewhere nothing happens."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(settings: Settings, processes: int) -> int:
    """Run `processes` ingest children until a signal stops them; returns the worst exit code."""
    here = partitions_here(settings, processes)
    total = max(settings.ingest.partitions, processes)
    supervisor = os.getpid()
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "ingest"],
            env=child_environment(settings, partition, total, local),
            preexec_fn=lambda: _stop_with(supervisor),  # noqa: PLW1509 - no threads here yet
        )
        for local, partition in enumerate(here)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs)
