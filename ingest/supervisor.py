"""`osteotel ingest --processes N`: one ingest process per core, each owning a share of hubs.

Child k subscribes, with its own persistent session (`{client_id}-{k}`), only to the subtrees of
the hubs whose BLAKE2b hash modulo N is k (ingest/partition.py), so the broker sends each
message to one child and each device's state — sequence tracking, and the DSP estimators —
lives in exactly one process. On a site that outgrows one broker, a clustered broker's shared
subscription hashed by the publishing hub (EMQX: `$share/osteotel/...` with
`shared_subscription_strategy = hash_clientid`) would do the same across machines
(docs/ingest.md).
"""

import os
import signal
import subprocess
import sys
from types import FrameType

from osteotel.settings import Settings

__all__ = ["child_environment", "supervise"]


def child_environment(settings: Settings, partition: int, processes: int) -> dict[str, str]:
    """The environment of child `partition` of `processes`."""
    ingest = settings.ingest
    env = {
        **os.environ,
        "OSTEOTEL_INGEST__PARTITIONS": str(processes),
        "OSTEOTEL_INGEST__PARTITION": str(partition),
        "OSTEOTEL_MQTT__CLIENT_ID": f"{settings.mqtt.client_id}-{partition}",
        "OSTEOTEL_INGEST__SPOOL_DIR": str(ingest.spool_dir / f"partition-{partition}"),
        "OSTEOTEL_INGEST__STATE_DIR": str(ingest.state_dir / f"partition-{partition}"),
    }
    if ingest.http_port:
        env["OSTEOTEL_INGEST__HTTP_PORT"] = str(ingest.http_port + partition)
    return env


def supervise(settings: Settings, processes: int) -> int:
    """Run `processes` ingest children until a signal stops them; returns the worst exit code."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "ingest"],
            env=child_environment(settings, partition, processes),
        )
        for partition in range(processes)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs)
