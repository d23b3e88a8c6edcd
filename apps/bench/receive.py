"""MQTT receive paths draining the same queue: CPU per message and rate, against PahoSource.

The receivers (apps/bench/receivers.py): ingest's two sources as ingest uses them (PahoSource,
paho's thread, the default; WireSource, asyncio), bare paho with manual acknowledgement, an
asyncio Protocol with the Rust `mqtt5` codec (MQTT 5) and with ours (osteotel/mqttcodec.py,
MQTT 3.1.1), and `mosquitto_sub` as the floor.

One Mosquitto (started here, loopback, a temp dir). For each run: a persistent session is made
for the run's receiver (subscribed to `osteotel/v1/+/+/telemetry` with QoS 1, then
disconnected), `--messages` binary 100-sample frames (the bench ingest's frame, ~830 bytes)
are published to it with QoS 1 and queued by the broker, and then the receiver, a child
process (apps/bench/receivers.py), resumes the session and drains the queue: it counts every
message, acknowledges each one in order, and reports its own CPU time (user + system, all its
threads, `getrusage`) and wall time. `mosquitto_sub -c -q 1 -C N` drains the same way as the
floor (libmosquitto acknowledges on receipt; its CPU comes from `os.wait4`, start-up included).
The session is then removed (a clean-session connect). With more messages than the broker's
in-flight window (1,000), an exact count also shows that the acknowledgements reached it.

A drained queue comes in large reads, which favours a receiver that reads many packets at a
time; so each Python receiver also runs live: the publisher starts once the child says its
session is up and the receiver keeps pace with it (`live_*` figures: CPU only, the publisher
sets the rate and the broker's CPU is mostly the publisher's).

Receivers run in turn, `--repeats` times (default 3), the order rotated each repeat so that a
slow spell of this shared machine falls on all of them; every figure is the median of its runs,
and every ratio is to `source`, our PahoSource as ingest uses it, measured in the same run.

Figures (`--json` keys; docs/ingest.md, "A faster MQTT receive path?"):
    messages, frame_bytes, repeats              the workload: messages per run, payload bytes
    {r}_messages_received                       messages received over all runs (= repeats x
                                                messages; a shortfall fails the run)
    {r}_cpu_us_per_message                      the receiver's CPU per message, µs (median)
    {r}_messages_per_s                          connect to disconnect, all received (median)
    {r}_mosquitto_cpu_us_per_message            the broker's CPU per message while it drained
    {r}_cpu_vs_source, {r}_rate_vs_source       ratios to `source` (CPU lower is better)
    {r}_cpu_vs_paho                             CPU ratio to bare paho
    {r}_cpu_us_saved_per_message                source's CPU per message minus this one's
    with r in source, wire, paho, mqtt5, plain, mosquitto_sub; {r}_dup_messages: DUP-flagged
    deliveries (0 expected: nothing was in flight before).
    live_{r}_messages_received, live_{r}_dup_messages, live_{r}_cpu_us_per_message,
    live_{r}_cpu_us_saved_per_message           the same, published live (r: not mosquitto_sub;
                                                savings against live_source)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apps.bench.processes import cpu_s
from apps.bench.publishing import Message, publish_all, sustained_messages
from apps.bench.receivers import READY_LINE, RECEIVERS, TELEMETRY_FILTER

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__ = ["configure", "run"]

_FLOOR = "mosquitto_sub"
_BASELINE = "source"
_MQTT5 = frozenset({"mqtt5"})  # the receiver speaking MQTT 5; the others 3.1.1
_SESSION_EXPIRY_S = 3600
_ANSWER_TIMEOUT_S = 10.0
_BINARY_HUBS = 5  # devices on odd-numbered hubs, which send binary frames (publishing.py)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of `osteotel bench receive`."""
    parser.add_argument(
        "--messages", type=int, default=20_000, help="messages per run (default 20000)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each receiver, rotated (default 3)"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=120.0, help="bound on each drain, s (default 120)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default temp)")


def _paho_client(client_id: str, *, mqtt5: bool, clean: bool) -> "paho.Client":
    import paho.mqtt.client as paho  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    if mqtt5:
        return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    return paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean,
        protocol=paho.MQTTv311,
    )


def _session(host: str, port: int, client_id: str, *, mqtt5: bool, keep: bool) -> None:
    """Make `client_id`'s persistent session subscribed to the telemetry (keep), or remove it."""
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    client = _paho_client(client_id, mqtt5=mqtt5, clean=not keep)
    done = threading.Event()
    client.on_subscribe = lambda *_: done.set()
    if keep:
        client.on_connect = lambda client, *_: client.subscribe(TELEMETRY_FILTER, qos=1)
    else:
        client.on_connect = lambda *_: done.set()
    if mqtt5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = _SESSION_EXPIRY_S if keep else 0
        client.connect(host, port, keepalive=30, clean_start=not keep, properties=properties)
    else:
        client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        if not done.wait(_ANSWER_TIMEOUT_S):
            raise TimeoutError(f"no answer from the broker for {client_id}")
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass(frozen=True, slots=True)
class _Drain:
    """One receiver's run: whose session, where, how many messages, how long at most."""

    receiver: str
    client_id: str
    host: str
    port: int
    messages: int
    timeout_s: float


def _drain_python(drain: _Drain, publish_live: Callable[[], None] | None) -> dict[str, float]:
    """Run the receiver's child; `publish_live` publishes once the child's session is up."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apps.bench.receivers",
            drain.receiver,
            f"--host={drain.host}",
            f"--port={drain.port}",
            f"--client-id={drain.client_id}",
            f"--messages={drain.messages}",
            f"--timeout-s={drain.timeout_s}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        # The child bounds its own run (--timeout-s), so this line comes or the pipe closes.
        first = child.stdout.readline()
        if first.strip() == READY_LINE and publish_live is not None:
            publish_live()
        out, err = child.communicate(timeout=drain.timeout_s + 30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"receiver {drain.receiver} failed: {err[-2000:]}")
    # Its figures are its last line; the first one read above may be them too.
    lines = [line for line in (first + out).splitlines() if line.strip() != READY_LINE]
    if not lines:
        raise RuntimeError(f"receiver {drain.receiver} printed no figures: {err[-2000:]}")
    figures: dict[str, float] = json.loads(lines[-1])
    return figures


def _drain_mosquitto_sub(drain: _Drain, workdir: Path) -> dict[str, float]:
    out_path = workdir / f"{drain.client_id}.out"
    started = time.perf_counter()
    with out_path.open("wb") as out:
        process = subprocess.Popen(
            [
                "mosquitto_sub",
                *("-h", drain.host, "-p", str(drain.port), "-i", drain.client_id, "-c"),
                *("-q", "1", "-t", TELEMETRY_FILTER, "-C", str(drain.messages)),
                *("-W", str(round(drain.timeout_s)), "-F", "%l"),  # payload lengths, one a line
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    lengths = [int(line) for line in out_path.read_text().split()]
    return {
        "messages": len(lengths),
        "payload_bytes": sum(lengths),
        "dup": 0,  # mosquitto_sub does not say
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "seconds": seconds,
    }


def _frames(messages: int) -> list[Message]:
    """`messages` binary 100-sample frames, round-robin over devices of binary hubs."""
    ids = [(f"HUB-{2 * k + 1:03d}", f"DX-{k + 1:04d}") for k in range(_BINARY_HUBS)]
    return sustained_messages(ids, messages, 100)


def _run_once(
    drain: _Drain, broker_pid: int, frames: list[Message], workdir: Path, *, live: bool
) -> dict[str, float]:
    """Make the receiver's session, drain it (publishing before or while), remove it."""
    mqtt5 = drain.receiver in _MQTT5
    _session(drain.host, drain.port, drain.client_id, mqtt5=mqtt5, keep=True)

    def publish() -> None:
        publish_all(drain.host, drain.port, frames, f"{drain.client_id}-publisher")

    if not live:
        publish()
    broker_before_s = cpu_s([broker_pid])
    if drain.receiver == _FLOOR:
        result = _drain_mosquitto_sub(drain, workdir)
    else:
        result = _drain_python(drain, publish if live else None)
    result["broker_cpu_s"] = cpu_s([broker_pid]) - broker_before_s
    _session(drain.host, drain.port, drain.client_id, mqtt5=mqtt5, keep=False)
    return result


def run(args: argparse.Namespace) -> dict[str, object]:
    """Drain the same queue with every receiver; return the figures (module docstring)."""
    from apps.services import Mosquitto  # noqa: PLC0415

    frames = _frames(args.messages)
    payload_bytes = sum(len(frame.payload) for frame in frames)
    receivers = [*RECEIVERS, _FLOOR]
    runs: dict[str, list[dict[str, float]]] = {receiver: [] for receiver in receivers}
    runs |= {f"live_{receiver}": [] for receiver in RECEIVERS}
    with tempfile.TemporaryDirectory(prefix="osteotel-bench-receive-") as temp:
        workdir = Path(args.workdir) if args.workdir is not None else Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        with Mosquitto(workdir / "broker", persistence=False) as broker:
            assert broker.pid is not None
            for repeat in range(args.repeats):
                shift = repeat % len(receivers)
                for receiver in receivers[shift:] + receivers[:shift]:
                    for live in (False, True) if receiver != _FLOOR else (False,):
                        name = f"live_{receiver}" if live else receiver
                        drain = _Drain(
                            receiver,
                            f"bench-receive-{name}-{repeat}",
                            broker.host,
                            broker.port,
                            args.messages,
                            args.timeout_s,
                        )
                        result = _run_once(drain, broker.pid, frames, workdir, live=live)
                        if result["messages"] != args.messages or (
                            result["payload_bytes"] != payload_bytes
                        ):
                            raise RuntimeError(
                                f"{name} received {result['messages']} of {args.messages} "
                                f"messages, {result['payload_bytes']} of {payload_bytes} bytes"
                            )
                        runs[name].append(result)
    return _figures(args, frames, runs)


def _figures(
    args: argparse.Namespace, frames: list[Message], runs: dict[str, list[dict[str, float]]]
) -> dict[str, object]:
    def median(receiver: str, per_message: str) -> float:
        """The median over the receiver's runs of `per_message` seconds per message, in µs."""
        return float(
            statistics.median(
                result[per_message] / args.messages * 1e6 for result in runs[receiver]
            )
        )

    def rate(receiver: str) -> float:
        seconds = statistics.median(result["seconds"] for result in runs[receiver])
        return float(args.messages / seconds)

    figures: dict[str, object] = {
        "messages": args.messages,
        "frame_bytes": round(statistics.mean(len(frame.payload) for frame in frames)),
        "repeats": args.repeats,
    }
    baseline_cpu_us, baseline_rate = median(_BASELINE, "cpu_s"), rate(_BASELINE)
    for receiver, results in runs.items():
        cpu_us = median(receiver, "cpu_s")
        figures[f"{receiver}_messages_received"] = round(sum(r["messages"] for r in results))
        figures[f"{receiver}_dup_messages"] = round(sum(r["dup"] for r in results))
        figures[f"{receiver}_cpu_us_per_message"] = cpu_us
        if receiver.startswith("live_"):  # the publisher sets the pace: no rate, broker busy
            figures[f"{receiver}_cpu_us_saved_per_message"] = (
                median("live_source", "cpu_s") - cpu_us
            )
            continue
        figures[f"{receiver}_messages_per_s"] = rate(receiver)
        figures[f"{receiver}_mosquitto_cpu_us_per_message"] = median(receiver, "broker_cpu_s")
        figures[f"{receiver}_cpu_vs_source"] = cpu_us / baseline_cpu_us
        figures[f"{receiver}_cpu_vs_paho"] = cpu_us / median("paho", "cpu_s")
        figures[f"{receiver}_rate_vs_source"] = rate(receiver) / baseline_rate
        figures[f"{receiver}_cpu_us_saved_per_message"] = baseline_cpu_us - cpu_us
    return figures
