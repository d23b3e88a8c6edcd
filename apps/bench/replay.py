"""Replay a capture at --speed max into a local Mosquitto, against a one-at-a-time replay baseline.

The capture is N devices x H hours of continuous 100 Hz telemetry (or `--capture FILE`). Each
timed run gets a fresh broker on a free loopback port and a `mosquitto_sub` that counts every
message; the clock runs from the first publish until `mosquitto_sub` has received them all.
The baseline replays the first `--baseline-messages` messages awaiting each PUBACK before the
next publish (`window=1`), in the same run, so the ratio shows what the in-flight window buys.
"""

import argparse
import tempfile
import time
from pathlib import Path

__all__ = ["configure", "run"]

_RATE_HZ = 100.0
_END_NS = 1_700_000_000_000_000_000  # a fixed "now": the built capture is the same on every run
_SUB_POLL_S = 0.05
_PROBE_TOPIC = "osteotel-bench/probe"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    parser.add_argument("--devices", type=int, default=10, help="devices (default 10)")
    parser.add_argument("--hours", type=float, default=24.0, help="hours at 100 Hz (default 24)")
    parser.add_argument(
        "--frame-samples", type=int, default=100, help="samples per frame (default 100)"
    )
    parser.add_argument(
        "--capture", type=Path, default=None, help="replay this capture instead of building one"
    )
    parser.add_argument(
        "--baseline-messages",
        type=int,
        default=5_000,
        help="messages the one-at-a-time baseline replays (default 5000)",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=900.0, help="bound on each timed run (default 900)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default temp)")


def _build(path: Path, *, devices: int, hours: float, frame_samples: int) -> tuple[int, int]:
    """Write a capture of continuous telemetry; returns (messages, samples)."""
    import numpy as np  # noqa: PLC0415 - benchmarks load heavy modules only when they run

    from devices.codec import encode_frame_binary, encode_frame_json, encode_status  # noqa: PLC0415
    from devices.contract import Frame, HubStatus, status_topic, telemetry_topic  # noqa: PLC0415
    from devices.emulator.capture import CaptureWriter  # noqa: PLC0415
    from devices.emulator.fleet import hub_encodings  # noqa: PLC0415

    ids = [f"DX-{number + 1:04d}" for number in range(devices)]
    hubs = [f"HUB-{number % 2 + 1:03d}" for number in range(devices)]
    encodings = hub_encodings(hubs, "mixed")  # one JSON hub, one binary hub
    frame_ns = round(frame_samples * 1e9 / _RATE_HZ)
    frames = max(1, round(hours * 3600 * _RATE_HZ / frame_samples))
    start_ns = _END_NS - frames * frame_ns
    rng = np.random.default_rng(7)
    phase = np.arange(frame_samples) * 2 * np.pi * 1.0 / _RATE_HZ  # 1 Hz gait-like load
    samples = 0
    with CaptureWriter(path) as writer:
        for hub in dict.fromkeys(hubs):
            status = HubStatus(hub=hub, online=True, t_ns=start_ns)
            writer.write(status_topic(hub), encode_status(status), t_ns=start_ns, retain=True)
        for index in range(frames):
            t0_ns = start_ns + index * frame_ns
            noise = rng.normal(0.0, 1.0, (devices, 2, frame_samples))
            for number, device in enumerate(ids):
                # Sensor resolution: force to 0.01 N, elongation to 1 um.
                force_n = np.round(150.0 + 40.0 * np.sin(phase) + noise[number, 0], 2)
                disp_mm = np.round(20.0 + 0.002 * noise[number, 1], 3)
                frame = Frame(device, index, t0_ns, _RATE_HZ, force_n, disp_mm)
                encode = encode_frame_binary if encodings[hubs[number]] == "binary" else None
                payload = (encode or encode_frame_json)(frame)
                writer.write(telemetry_topic(hubs[number], device), payload, t_ns=t0_ns + frame_ns)
                samples += frame_samples
        for hub in dict.fromkeys(hubs):
            status = HubStatus(hub=hub, online=False, t_ns=_END_NS)
            writer.write(status_topic(hub), encode_status(status), t_ns=_END_NS, retain=True)
        return writer.count, samples


def _count(path: Path) -> tuple[int, int]:
    """Messages and telemetry samples in a capture (reading it also warms the page cache)."""
    import json  # noqa: PLC0415

    from devices.codec import BINARY_HEADER  # noqa: PLC0415
    from devices.contract import BINARY_MAGIC  # noqa: PLC0415
    from devices.emulator.capture import read_capture  # noqa: PLC0415

    messages = samples = 0
    for message in read_capture(path):
        messages += 1
        if not message.topic.endswith("/telemetry"):
            continue
        if message.payload.startswith(BINARY_MAGIC):
            samples += BINARY_HEADER.unpack_from(message.payload)[3]
        else:
            try:
                samples += len(json.loads(message.payload)["force_n"])
            except (ValueError, KeyError, TypeError):
                continue  # a malformed frame carries no samples
    return messages, samples


def _head(source: Path, target: Path, messages: int) -> int:
    """Copy the first `messages` messages of a capture; returns how many were copied."""
    from devices.emulator.capture import CaptureWriter, read_capture  # noqa: PLC0415

    with CaptureWriter(target) as writer:
        for message in read_capture(source):
            if writer.count >= messages:
                break
            writer.write_many([message])
        return writer.count


def _timed_replay(
    capture: Path, workdir: Path, *, expected: int, window: int, timeout_s: float
) -> dict[str, float]:
    """Replay at max speed into a fresh broker; seconds until `mosquitto_sub` has every message."""
    import asyncio  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from apps.services import Mosquitto  # noqa: PLC0415
    from devices.emulator.capture import replay  # noqa: PLC0415
    from osteotel.settings import MqttSettings  # noqa: PLC0415

    workdir.mkdir(parents=True, exist_ok=True)
    out_path = workdir / "mosquitto_sub.out"
    with Mosquitto(workdir / "broker", persistence=False) as broker:
        # A retained probe reaches the subscriber as soon as its subscription is in place.
        subprocess.run(
            [
                "mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-r",
                "-t", _PROBE_TOPIC, "-m", "probe",
            ],
            check=True,
            timeout=10,
        )  # fmt: skip
        with out_path.open("wb") as out:
            sub = subprocess.Popen(
                [
                    "mosquitto_sub", "-h", broker.host, "-p", str(broker.port),
                    "-i", "osteotel-bench-sub", "-q", "1", "-t", "#", "-F", "%t",
                    "-C", str(expected + 1), "-W", str(max(1, round(timeout_s))),
                ],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 10.0
            while out_path.stat().st_size == 0:
                if time.monotonic() > deadline or sub.poll() is not None:
                    raise RuntimeError("mosquitto_sub did not subscribe within 10 s")
                time.sleep(_SUB_POLL_S)
            mqtt = MqttSettings(host=broker.host, port=broker.port)
            started = time.perf_counter()
            sent = asyncio.run(
                asyncio.wait_for(
                    replay(capture, mqtt, speed=None, client_id="osteotel-bench-replay",
                           window=window),
                    timeout_s,
                )
            )  # fmt: skip
            published_s = time.perf_counter() - started
            sub.wait(timeout=timeout_s)
            seconds = time.perf_counter() - started
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
    with out_path.open("rb") as lines:
        arrived = sum(1 for line in lines if not line.startswith(_PROBE_TOPIC.encode()))
    return {"sent": sent, "arrived": arrived, "published_s": published_s, "seconds": seconds}


def run(args: argparse.Namespace) -> dict[str, object]:
    """Build or take a capture, replay it at max speed and one-at-a-time, return the figures."""
    from devices.emulator.capture import REPLAY_WINDOW  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="osteotel-bench-replay-") as temp:
        workdir = Path(args.workdir) if args.workdir is not None else Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if args.capture is None:
            capture = workdir / "capture.jsonl"
            messages, samples = _build(
                capture, devices=args.devices, hours=args.hours, frame_samples=args.frame_samples
            )
        else:
            capture = Path(args.capture)
            # Counting reads the whole file once, so the timed replay does not wait on the disk.
            messages, samples = _count(capture)
        capture_bytes = capture.stat().st_size
        prepare_s = time.perf_counter() - started
        timed = _timed_replay(
            capture,
            workdir / "max",
            expected=messages,
            window=REPLAY_WINDOW,
            timeout_s=args.timeout_s,
        )
        subset = workdir / "baseline.jsonl"
        baseline_messages = _head(capture, subset, args.baseline_messages)
        baseline = _timed_replay(
            subset, workdir / "baseline", expected=baseline_messages, window=1,
            timeout_s=args.timeout_s,
        )  # fmt: skip
    messages_per_s = timed["arrived"] / timed["seconds"]
    baseline_per_s = baseline["arrived"] / baseline["seconds"]
    return {
        "devices": args.devices if args.capture is None else "from capture",
        "hours": args.hours if args.capture is None else "from capture",
        "capture_bytes": capture_bytes,
        "prepare_s": prepare_s,
        "messages": messages,
        "samples": samples,
        "sent": int(timed["sent"]),
        "arrived": int(timed["arrived"]),
        "publish_seconds": timed["published_s"],
        "seconds": timed["seconds"],
        "messages_per_s": messages_per_s,
        "samples_per_s": samples / timed["seconds"],
        "baseline_messages": int(baseline["arrived"]),
        "baseline_seconds": baseline["seconds"],
        "baseline_messages_per_s": baseline_per_s,
        "speedup_vs_baseline": messages_per_s / baseline_per_s,
    }
