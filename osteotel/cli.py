"""The `osteotel` command: one entry point with a subcommand per job."""

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence

from osteotel import __version__
from osteotel.errors import OsteotelError
from osteotel.logs import configure, kv
from osteotel.settings import Settings

__all__ = ["main"]

log = logging.getLogger("osteotel")


def _version(args: argparse.Namespace) -> int:
    print(f"osteotel {__version__}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    # Imported on use: `osteotel --help` and `version` should not load numpy and numba.
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


def _demo(args: argparse.Namespace) -> int:
    from osteotel.demo import run_demo  # noqa: PLC0415

    configure("WARNING")
    return run_demo(duration_s=args.duration, workdir=args.workdir)


def _emulate(args: argparse.Namespace) -> int:
    # Imported on use, like ingest: the emulator loads numpy.
    from devices.emulator.fleet import (  # noqa: PLC0415
        FleetPlan,
        hub_encodings,
        plan_devices,
        run_fleet,
    )

    settings = Settings()
    configure(settings.log_level)
    end_ns = time.time_ns()
    devices = plan_devices(
        devices=args.devices,
        hubs=args.hubs,
        seed=args.seed,
        scenarios=args.scenario.split(","),
        rate_hz=args.rate_hz,
        frame_samples=args.frame_samples,
    )
    hubs = [config.hub for config in devices]
    plan = FleetPlan(
        devices=devices,
        encodings=hub_encodings(hubs, args.encoding),
        start_ns=end_ns - round(args.days * 86_400e9),
        end_ns=end_ns,
        speed=None if args.speed == "max" else float(args.speed),
    )
    published = asyncio.run(run_fleet(plan, mqtt=settings.mqtt, progress=sys.stderr.isatty()))
    print(f"published {published} messages for {len(devices)} devices on {len(set(hubs))} hubs")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from osteotel import bench  # noqa: PLC0415

    configure("WARNING")
    return bench.run(args)


Command = Callable[[argparse.Namespace], int]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osteotel",
        description="Real-time telemetry for sensorized implanted distractors.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        return sub

    add("version", _version, "print the version")
    ingest = add(
        "ingest",
        _ingest,
        "subscribe to the hubs, validate, and store in InfluxDB (settings: OSTEOTEL_* / "
        "OSTEOTEL_CONFIG)",
    )
    ingest.add_argument(
        "--processes", type=int, default=1, help="processes, each owning a share of devices"
    )
    demo = add(
        "demo",
        _demo,
        "start a local Mosquitto and InfluxDB, publish emulated hubs into ingest, show what landed",
    )
    emulate = add(
        "emulate",
        _emulate,
        "publish emulated hubs and devices over MQTT, a whole treatment time-compressed "
        "(broker settings: OSTEOTEL_MQTT__*)",
    )
    emulate.add_argument("--devices", type=int, default=3, help="number of devices")
    emulate.add_argument("--hubs", type=int, default=2, help="number of hubs")
    emulate.add_argument("--days", type=float, default=90.0, help="simulated days, ending now")
    emulate.add_argument(
        "--speed", default="86400", help="simulated seconds per second, or 'max' (default 86400)"
    )
    emulate.add_argument(
        "--scenario", default="normal", help="scenario, or a comma list assigned in turn"
    )
    emulate.add_argument("--seed", type=int, default=0, help="the same seed, the same output")
    emulate.add_argument(
        "--encoding", choices=["json", "binary", "mixed"], default="mixed", help="per hub"
    )
    emulate.add_argument("--rate-hz", type=float, default=100.0, help="sample rate, Hz")
    emulate.add_argument("--frame-samples", type=int, default=100, help="samples per frame")
    from osteotel import bench  # noqa: PLC0415 - the benchmarks' options come from their modules

    bench.add_parsers(add("bench", _bench, "measure speed and accuracy against same-run baselines"))
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    demo.add_argument("--workdir", default=None, help="keep servers' data here (default: temp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `osteotel` command line; returns the process exit status."""
    args = _parser().parse_args(argv)
    run: Command = args.run
    try:
        return run(args)
    except OsteotelError as exc:
        log.error(kv("failed", command=args.command, error=str(exc)))
        print(f"osteotel {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
