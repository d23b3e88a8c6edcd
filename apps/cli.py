"""The `osteotel` command: one entry point with a subcommand per job."""

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from alerts import cli as alerts_cli
from apps import analyze, bench
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
    from ingest.__main__ import main as ingest_main  # noqa: PLC0415

    return ingest_main(["--processes", str(args.processes)])


def _demo(args: argparse.Namespace) -> int:
    from apps.demo import run_demo  # noqa: PLC0415

    configure("WARNING")
    return run_demo(duration_s=args.duration, workdir=args.workdir)


def _emulate(args: argparse.Namespace) -> int:
    # Imported on use, like ingest: the emulator loads numpy.
    from devices.emulator.fleet import (  # noqa: PLC0415
        FleetPlan,
        hub_encodings,
        plan_devices,
        run_fleet,
        write_truth,
    )

    settings = Settings()
    configure(settings.log_level)
    end_ns = args.end_ns if args.end_ns is not None else time.time_ns()
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
    truth_dir = args.truth_dir
    if truth_dir is None:
        truth_dir = Path(f"{args.out}.truth") if args.out else Path(f"var/emulator/{end_ns}")
    print(f"ground truth: {len(write_truth(plan, truth_dir))} files in {truth_dir}")
    if args.out is not None:
        from devices.emulator.capture import capture_fleet  # noqa: PLC0415

        written = asyncio.run(capture_fleet(plan, args.out))
        print(f"wrote {written} messages to {args.out}")
        return 0
    published = asyncio.run(run_fleet(plan, mqtt=settings.mqtt, progress=sys.stderr.isatty()))
    print(f"published {published} messages for {len(devices)} devices on {len(set(hubs))} hubs")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from apps import bench  # noqa: PLC0415

    configure("WARNING")
    return bench.run(args)


def _record(args: argparse.Namespace) -> int:
    from devices.contract import SUBSCRIPTIONS  # noqa: PLC0415
    from devices.emulator.capture import record  # noqa: PLC0415

    settings = Settings()
    configure(settings.log_level)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await record(
            settings.mqtt,
            args.file,
            topics=tuple(args.topic) if args.topic else SUBSCRIPTIONS,
            duration_s=args.duration,
            max_messages=args.max_messages,
            client_id=args.client_id,
            include_retained=args.include_retained,
            stop=stop,
        )

    print(f"recorded {asyncio.run(run())} messages to {args.file}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from devices.emulator.capture import replay  # noqa: PLC0415

    settings = Settings()
    configure(settings.log_level)
    speed = None if args.speed == "max" else float(args.speed)
    window = {} if args.window is None else {"window": args.window}
    count = asyncio.run(
        replay(args.file, settings.mqtt, speed=speed, client_id=args.client_id, **window)
    )
    print(f"replayed {count} messages")
    return 0


def _alerts(args: argparse.Namespace) -> int:
    from alerts.cli import run_command  # noqa: PLC0415

    settings = Settings()
    configure(settings.log_level)
    return run_command(args, settings.alerts, mqtt=settings.mqtt, influx=settings.influx)


def _grafana(args: argparse.Namespace) -> int:
    from apps import grafana  # noqa: PLC0415

    settings = Settings()
    configure(settings.log_level)
    if args.grafana_command == "build":
        out = Path(args.out)
        if args.check:
            stale = grafana.stale_files(out)
            for name in stale:
                print(f"stale: {name}")
            return 1 if stale else 0
        for path in grafana.write_provisioning(out):
            print(path)
        return 0
    board = settings.grafana
    datasource = grafana.datasource_model(
        influx_url=board.influx_url,
        database=board.influx_database,
        token=board.influx_token.get_secret_value() if board.influx_token else None,
    )
    actions = grafana.push(
        url=board.url,
        token=board.token.get_secret_value() if board.token else None,
        datasource=datasource,
        timeout_s=board.timeout_s,
    )
    for action in actions:
        print(f"{action.kind} {action.uid} {action.action}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from apps.analyze import main as analyze  # noqa: PLC0415

    configure("WARNING")
    return analyze(args)


def _report(args: argparse.Namespace) -> int:
    from apps.report import DeviceInfo, render_report  # noqa: PLC0415
    from devices.registry import Registry  # noqa: PLC0415
    from osteotel.store.influx import InfluxStore  # noqa: PLC0415

    settings = Settings()
    configure(settings.log_level)
    registry = Registry.load(settings.ingest.registry)
    unknown = [device for device in args.devices if device not in registry.devices]
    if unknown:
        print(f"osteotel report: not in the registry: {', '.join(unknown)}", file=sys.stderr)
        return 2
    infos = [
        DeviceInfo(d.id, d.patient, d.site, d.protocol.steps_per_day)
        for d in (registry.devices[device] for device in args.devices)
    ]
    end_ns = _utc_ns(args.to) if args.to else time.time_ns()
    start_ns = _utc_ns(args.start) if args.start else end_ns - 90 * 86_400 * 10**9
    try:
        with InfluxStore(settings.influx) as store:
            pages = render_report(store, infos, start_ns=start_ns, end_ns=end_ns, out=args.out)
    except ValueError as exc:
        print(f"osteotel report: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(pages)} page(s)")
    return 0


def _utc_ns(text: str) -> int:
    """An ISO 8601 date or time (UTC when it has no offset) as UTC epoch ns."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1e6) * 1000


Command = Callable[[argparse.Namespace], int]


Add = Callable[[str, Command, str], argparse.ArgumentParser]


def _services(add: Add) -> None:
    """The long-running services and the demo."""
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
    alerts_cli.add_parsers(
        add("alerts", _alerts, "evaluate alert rules and notify; list, acknowledge, silence")
    )
    demo = add(
        "demo",
        _demo,
        "start a local Mosquitto and InfluxDB, publish emulated hubs into ingest, show what landed",
    )
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    demo.add_argument("--workdir", default=None, help="keep servers' data here (default: temp)")


def _streams(add: Add) -> None:
    """Emulated devices, captures and their analysis."""
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
    emulate.add_argument(
        "--out", type=Path, default=None, help="write a capture file instead of publishing"
    )
    emulate.add_argument(
        "--end-ns", type=int, default=None, help="end of the simulation, UTC ns (default: now)"
    )
    emulate.add_argument(
        "--truth-dir",
        type=Path,
        default=None,
        help="ground truth per device (default: FILE.truth/ by --out, else var/emulator/END_NS)",
    )
    record = add("record", _record, "capture what crosses the broker to a JSONL file (.gz: gzip)")
    record.add_argument("file", type=Path, metavar="FILE")
    record.add_argument(
        "--topic", action="append", default=None, help="topic filter (default: every v1 topic)"
    )
    record.add_argument("--duration", type=float, default=None, help="seconds to record")
    record.add_argument("--max-messages", type=int, default=None, help="stop after so many")
    record.add_argument("--client-id", default="osteotel-record", help="MQTT client id")
    record.add_argument(
        "--include-retained", action="store_true", help="also the broker's retained messages"
    )
    replay = add("replay", _replay, "republish a capture with its pacing scaled (OSTEOTEL_MQTT__*)")
    replay.add_argument("file", type=Path, metavar="FILE")
    replay.add_argument("--speed", default="1", help="1, 10, ... or 'max'")
    replay.add_argument("--client-id", default="osteotel-replay", help="MQTT client id")
    replay.add_argument(
        "--window", type=int, default=None, help="unacknowledged publishes at most (default 1000)"
    )
    analyze.configure(
        add("analyze", _analyze, "run the DSP estimators over a capture file; JSONL out")
    )


def _clinic(add: Add) -> None:
    """What clinicians see: boards and reports; and the benchmarks."""
    grafana = add("grafana", _grafana, "build the Grafana provisioning, or push it to a Grafana")
    grafana_commands = grafana.add_subparsers(dest="grafana_command", required=True)
    build = grafana_commands.add_parser("build", help="write datasource and dashboards")
    build.add_argument("--out", default="deploy/grafana", help="provisioning directory")
    build.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    grafana_commands.add_parser(
        "push", help="upload datasource and dashboards (settings: OSTEOTEL_GRAFANA__*)"
    )
    report = add("report", _report, "the consolidation report of devices, from InfluxDB")
    report.add_argument("devices", nargs="+", metavar="DEVICE", help="device ids")
    report.add_argument("--from", dest="start", help="ISO date or time (default: 90 days ago)")
    report.add_argument("--to", help="ISO date or time (default: now)")
    report.add_argument("--out", required=True, type=Path, help="FILE.pdf or FILE.png")
    bench.add_parsers(add("bench", _bench, "measure speed and accuracy against same-run baselines"))


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

    _services(add)
    _streams(add)
    _clinic(add)
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
