"""`osteotel analyze CAPTURE [--out FILE]`: the DSP estimators over a capture file, as JSONL.

The same `dsp.estimator.FleetEstimator` that ingest runs live is fed each decoded frame and
event of a capture (or of the emulator directly, for tests and benchmarks); every estimate
record becomes one JSON line with `device`, `t_ns`, `kind` and its unit-suffixed fields
(docs/dsp.md). It needs nothing but the capture: the protocol defaults to 4 x 0.25 mm/day
and flags may set it; hub status messages are not estimates and are skipped.
"""

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from osteotel.logs import kv

if TYPE_CHECKING:
    from devices.contract import Event, Frame
    from devices.emulator.timeline import DeviceConfig
    from dsp.estimator import EstimateRecord, EstimatorConfig, FleetEstimator

__all__ = [
    "AnalyzeStats",
    "analyze_capture",
    "analyze_emulated",
    "configure",
    "feed_event",
    "feed_frame",
    "main",
    "record_json",
    "write_jsonl",
]

_log = logging.getLogger("apps.analyze")


@dataclass
class AnalyzeStats:
    """What an analysis read and skipped; nothing is dropped without being counted here.

    Attributes:
        frames, events: decoded and fed to the estimator.
        status: hub status messages (not estimates: skipped).
        rejected: messages whose topic or payload broke the contract, by reason.
        records: estimate records written.
    """

    frames: int = 0
    events: int = 0
    status: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    records: int = 0


def feed_frame(fleet: "FleetEstimator", frame: "Frame") -> list["EstimateRecord"]:
    """Run one decoded frame through the estimator and return the records it completed."""
    return fleet.frame(
        frame.device, frame.force_n, frame.disp_mm, frame.ref_load_n, frame.t0_ns, frame.rate_hz
    )


def feed_event(fleet: "FleetEstimator", event: "Event") -> list["EstimateRecord"]:
    """Run one decoded event through the estimator; events without an estimate return []."""
    if event.type == "distraction_step":
        return fleet.step(event.device, event.t_ns, event.delta_mm, kind="step")
    if event.type == "probe":
        return fleet.step(event.device, event.t_ns, event.delta_mm, kind="probe")
    if event.type == "load_test_start":
        return fleet.load_test_start(event.device, event.t_ns)
    if event.type == "load_test_end":
        return fleet.load_test_end(event.device, event.t_ns)
    return []


def analyze_emulated(
    config: "DeviceConfig",
    *,
    start_ns: int,
    end_ns: int,
    estimator_config: "EstimatorConfig | None" = None,
) -> Iterator["EstimateRecord"]:
    """Run the estimator over what the emulator publishes for one device (no MQTT, no file).

    The device's protocol (rhythm, step, target) is taken from its configuration, as a
    registry would give it.

    Args:
        config: the emulated device.
        start_ns: the osteotomy (UTC epoch ns).
        end_ns: "now" (UTC epoch ns).
        estimator_config: estimator settings; defaults if None.

    Yields:
        Estimate records in the order the estimator completes them, then the flushed ones.
    """
    from devices.emulator.generator import generate  # noqa: PLC0415 - numpy-heavy, on demand
    from dsp.adherence import Protocol  # noqa: PLC0415
    from dsp.estimator import FleetEstimator  # noqa: PLC0415

    fleet = FleetEstimator(estimator_config, capacity=1)
    fleet.set_protocol(
        config.device,
        Protocol(
            steps_per_day=config.steps_per_day,
            step_mm=config.step_mm,
            target_mm=config.target_mm,
        ),
    )
    for item in generate(config, start_ns=start_ns, end_ns=end_ns):
        if item.frame is not None:
            yield from feed_frame(fleet, item.frame)
        elif item.event is not None:
            yield from feed_event(fleet, item.event)
    yield from fleet.flush()


def analyze_capture(
    path: Path,
    *,
    estimator_config: "EstimatorConfig | None" = None,
    protocol: Any = None,
    stats: AnalyzeStats | None = None,
) -> Iterator["EstimateRecord"]:
    """Run the estimator over a capture file (devices/emulator/capture.py format).

    Args:
        path: the capture (`.gz` is decompressed).
        estimator_config: estimator settings; defaults if None.
        protocol: a `dsp.adherence.Protocol` for every device, or None for the default.
        stats: filled with counts of what was read and skipped.

    Yields:
        Estimate records in completion order, then the flushed ones.
    """
    from devices.codec import decode_event, decode_frame  # noqa: PLC0415
    from devices.contract import MessageKind, Rejected, parse_topic  # noqa: PLC0415
    from devices.emulator.capture import read_capture  # noqa: PLC0415
    from dsp.estimator import FleetEstimator  # noqa: PLC0415

    counts = stats if stats is not None else AnalyzeStats()
    fleet = FleetEstimator(estimator_config)
    if protocol is not None:
        fleet.config = _with_protocol(fleet.config, protocol)
    for message in read_capture(path):
        try:
            topic = parse_topic(message.topic)
            if topic.kind is MessageKind.STATUS or topic.device is None:
                counts.status += 1
                continue
            if topic.kind is MessageKind.TELEMETRY:
                frame, _ = decode_frame(message.payload, topic_device=topic.device)
                counts.frames += 1
                yield from feed_frame(fleet, frame)
            else:
                event = decode_event(message.payload, topic_device=topic.device)
                counts.events += 1
                yield from feed_event(fleet, event)
        except Rejected as exc:
            reason = str(getattr(exc, "reason", "rejected"))
            counts.rejected[reason] = counts.rejected.get(reason, 0) + 1
    yield from fleet.flush()


def _with_protocol(config: "EstimatorConfig", protocol: Any) -> "EstimatorConfig":
    from dataclasses import replace  # noqa: PLC0415

    return replace(config, protocol=protocol)


def record_json(record: "EstimateRecord") -> str:
    """One record as a compact JSON line (keys sorted; NaN and inf become null)."""
    data = {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in record.as_dict().items()
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def write_jsonl(records: Iterable["EstimateRecord"], out: IO[str]) -> int:
    """Write records as JSON Lines and return how many were written."""
    count = 0
    for record in records:
        out.write(record_json(record) + "\n")
        count += 1
    return count


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of `osteotel analyze`."""
    parser.add_argument("capture", type=Path, metavar="CAPTURE", help="capture file (.gz ok)")
    parser.add_argument("--out", type=Path, default=None, help="JSONL output (default: stdout)")
    parser.add_argument("--steps-per-day", type=int, default=4, help="prescribed rhythm")
    parser.add_argument("--step-mm", type=float, default=0.25, help="prescribed step (mm)")
    parser.add_argument("--target-mm", type=float, default=None, help="prescribed gain (mm)")


def main(args: argparse.Namespace) -> int:
    """Run `osteotel analyze`; returns the exit status (0, or 1 if the capture is unreadable)."""
    from dataclasses import replace  # noqa: PLC0415

    from devices.emulator.capture import CaptureError  # noqa: PLC0415
    from dsp.adherence import Protocol  # noqa: PLC0415
    from dsp.estimator import EstimatorConfig  # noqa: PLC0415

    base = EstimatorConfig()
    config = replace(
        base,
        protocol=Protocol(
            steps_per_day=args.steps_per_day, step_mm=args.step_mm, target_mm=args.target_mm
        ),
    )
    stats = AnalyzeStats()
    records = analyze_capture(args.capture, estimator_config=config, stats=stats)
    try:
        if args.out is None:
            stats.records = write_jsonl(records, sys.stdout)
        else:
            with args.out.open("w", encoding="utf-8") as out:
                stats.records = write_jsonl(records, out)
    except (CaptureError, OSError) as exc:
        _log.error(kv("analyze_failed", capture=args.capture, error=exc))
        return 1
    rejected = ",".join(f"{k}:{v}" for k, v in sorted(stats.rejected.items())) or "0"
    _log.info(
        kv(
            "analyze_done",
            frames=stats.frames,
            events=stats.events,
            status=stats.status,
            rejected=rejected,
            records=stats.records,
        )
    )
    return 0
