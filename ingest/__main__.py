"""`python -m ingest`: the ingest service, as `osteotel ingest` runs it, without the CLI.

Settings come from OSTEOTEL_* or OSTEOTEL_CONFIG (osteotel.settings); `--processes N` runs N
partitions under a supervisor (ingest.supervisor), whose children are this module again.
"""

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from osteotel.logs import configure
from osteotel.settings import Settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ingest until SIGINT or SIGTERM; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    parser.add_argument(
        "--processes", type=int, default=1, help="processes, each owning a share of devices"
    )
    args = parser.parse_args(argv)
    # Imported on use: the help text should not load numpy and numba.
    from ingest.service import IngestService  # noqa: PLC0415
    from ingest.supervisor import supervise  # noqa: PLC0415

    settings = Settings()
    configure(settings.log_level)
    if args.processes > 1:
        return supervise(settings, args.processes)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await IngestService(settings=settings).run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
