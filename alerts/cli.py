"""`osteotel alerts run | list | ack | silence`: the parsers and the functions they call.

apps/cli.py wires it (the lead's file):

    alerts_parser = add("alerts", _alerts, "evaluate alert rules, notify, acknowledge, silence")
    alerts.cli.add_parsers(alerts_parser)
    ...
    def _alerts(args):
        settings = Settings()
        configure(settings.log_level)
        return alerts.cli.run_command(args, settings.alerts, mqtt=settings.mqtt,
                                      influx=settings.influx)
"""

import argparse
import asyncio
import json
import signal
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from alerts.model import RULES, AlertState
from alerts.settings import AlertSettings
from alerts.store import AlertStore
from osteotel.settings import InfluxSettings, MqttSettings

if TYPE_CHECKING:
    # The engine pulls in numpy, numba and the InfluxDB client: `osteotel --help` builds
    # these parsers and must not wait for them, so the commands import it when they run.
    from alerts.engine import AlertEngine

__all__ = ["add_parsers", "parse_until", "run_command"]


def add_parsers(parser: argparse.ArgumentParser) -> None:
    """Add `run`, `list`, `ack` and `silence` under `osteotel alerts`."""
    commands = parser.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    commands.add_parser("run", help="run the alert service until SIGINT/SIGTERM")
    listing = commands.add_parser("list", help="list open alerts (pending and firing)")
    listing.add_argument("--all", action="store_true", help="include resolved and cancelled")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    ack = commands.add_parser("ack", help="acknowledge an alert")
    ack.add_argument("id", type=int, help="the alert id (from `list`)")
    ack.add_argument("--by", required=True, help="the clinician's name")
    ack.add_argument("--note", required=True, help="what was done or decided")
    silence = commands.add_parser("silence", help="hold back notifications until a time")
    silence.add_argument("--device", required=True, help="device id")
    silence.add_argument("--rule", required=True, choices=RULES, help="rule id")
    silence.add_argument("--until", required=True, type=parse_until, help="ISO 8601 end time")
    silence.add_argument("--by", required=True, help="the clinician's name")
    silence.add_argument("--note", default="", help="why")


def parse_until(text: str) -> int:
    """Parse an ISO 8601 time to UTC epoch ns; a time without offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic on the timedelta: a float timestamp would lose the nanosecond scale.
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _engine(settings: AlertSettings) -> "AlertEngine":
    # Acks from the CLI notify every configured channel through the service's outbox.
    from alerts.engine import AlertEngine  # noqa: PLC0415 - see TYPE_CHECKING above
    from alerts.service import build_notifiers  # noqa: PLC0415 - loads MQTT and HTTP clients

    store = AlertStore(settings.db_path)
    notifiers = build_notifiers(
        settings, mqtt=MqttSettings(), influx=InfluxSettings(), published=store
    )
    channels = [n.name for n in notifiers if n.name != "history"]
    return AlertEngine(
        store,
        channels=channels,
        grafana_url=settings.grafana_url,
        repeat_s=settings.repeat_s,
        escalate_after_s=settings.escalate_after_s,
        history=settings.write_history,
    )


def _list(settings: AlertSettings, *, everything: bool, as_json: bool, out: TextIO) -> int:
    from alerts.engine import iso_time  # noqa: PLC0415 - see TYPE_CHECKING above

    states = None if everything else [AlertState.PENDING, AlertState.FIRING]
    with AlertStore(settings.db_path) as store:
        alerts = store.alerts(states=states)
    for a in alerts:
        if as_json:
            row = {
                "id": a.id, "state": a.state.value, "severity": a.severity.value,
                "patient": a.patient, "device": a.device, "rule": a.rule, "value": a.value,
                "started": iso_time(a.started_ns), "acked_by": a.acked_by, "summary": a.summary,
            }  # fmt: skip
            print(json.dumps(row), file=out)
        else:
            acked = f" acked by {a.acked_by}" if a.acked_by else ""
            print(
                f"{a.id:>6} {a.state.value:<9} {a.severity.value:<8} {a.patient:<10} "
                f"{a.device:<12} {a.rule:<24} {iso_time(a.started_ns)}{acked}  {a.summary}",
                file=out,
            )
    return 0


def run_command(
    args: argparse.Namespace,
    settings: AlertSettings,
    *,
    mqtt: MqttSettings,
    influx: InfluxSettings,
    out: TextIO = sys.stdout,
) -> int:
    """Run the `osteotel alerts` action chosen in `args`; returns the exit status.

    Args:
        args: parsed by the parsers from `add_parsers`.
        settings: the `[alerts]` settings.
        mqtt: the broker (for `run` and MQTT notifications).
        influx: InfluxDB (for the history).
        out: where `list` and confirmations are printed.

    Returns:
        0 on success, 2 when an acknowledgement or silence is refused.
    """
    action = args.alerts_command
    if action == "run":
        from alerts.service import AlertService  # noqa: PLC0415

        async def run() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await AlertService(settings=settings, mqtt=mqtt, influx=influx).run(stop)

        asyncio.run(run())
        return 0
    if action == "list":
        return _list(settings, everything=args.all, as_json=args.json, out=out)
    from alerts.engine import AlertError, iso_time  # noqa: PLC0415 - see TYPE_CHECKING above

    engine = _engine(settings)
    try:
        if action == "ack":
            alert = engine.acknowledge(args.id, by=args.by, note=args.note, now_ns=time.time_ns())
            print(f"acknowledged alert {alert.id} ({alert.rule} on {alert.device})", file=out)
        else:
            silence_id = engine.silence(
                device=args.device, rule=args.rule, until_ns=args.until, by=args.by,
                note=args.note, now_ns=time.time_ns(),
            )  # fmt: skip
            print(f"silence {silence_id} until {iso_time(args.until)}", file=out)
    except AlertError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.store.close()
    return 0
