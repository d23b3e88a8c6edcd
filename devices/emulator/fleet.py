"""The emulated fleet: hubs that publish their devices' treatments over MQTT, time compressed.

Every device's treatment is simulated from `end_ns - days` to `end_ns` (normally "now"), so no
timestamp is ever in the future. Publishing is paced by `speed`: an item simulated at time t
goes out `(t - start_ns) / speed` seconds after the run starts (`speed=None`: as fast as the
broker takes it). A 90-day treatment at speed 86,400 takes 90 s. Each hub merges its devices'
streams in publish-time order and publishes over its own MQTT session (`EmulatedHub`).
"""

import asyncio
import contextlib
import heapq
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from devices.codec import Encoding
from devices.contract import Reason, telemetry_topic
from devices.emulator.generator import Emitted, generate
from devices.emulator.groundtruth import write_ground_truth
from devices.emulator.hub import EmulatedHub
from devices.emulator.timeline import DeviceConfig
from devices.registry import Registry
from osteotel.settings import MqttSettings

__all__ = [
    "FleetPlan",
    "bad_payloads",
    "hub_encodings",
    "hub_stream",
    "plan_devices",
    "run_fleet",
    "write_truth",
]

NS_PER_DAY = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class FleetPlan:
    """What the fleet publishes: devices, each hub's encoding, the simulated span and the pace.

    Attributes:
        devices: one config per device (its hub is in the config).
        encodings: the telemetry encoding of each hub.
        start_ns: simulated osteotomy of every device, UTC epoch ns.
        end_ns: end of the simulation ("now" when the run started), UTC epoch ns.
        speed: simulated seconds per wall second; None publishes as fast as possible.
        inject_bad_payloads: also publish one payload breaking each contract rule.
    """

    devices: tuple[DeviceConfig, ...]
    encodings: dict[str, Encoding] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0
    speed: float | None = None
    inject_bad_payloads: bool = False

    @property
    def hubs(self) -> list[str]:
        """The hub ids, in order of first appearance."""
        return list(dict.fromkeys(config.hub for config in self.devices))

    @classmethod
    def from_registry(
        cls,
        registry: Registry,
        *,
        days: float,
        speed: float | None,
        end_ns: int,
        seed: int,
        scenario: str = "normal",
        rate_hz: float = 100.0,
        frame_samples: int = 100,
        inject_bad_payloads: bool = False,
    ) -> "FleetPlan":
        """Emulate every device of a registry with its site and prescribed protocol.

        Hubs alternate between JSON and binary telemetry, so both encodings are exercised.
        """
        configs = tuple(
            DeviceConfig(
                device=device.id,
                hub=device.hub,
                site=device.site,
                scenario=scenario,
                seed=seed + number,
                rate_hz=rate_hz,
                frame_samples=frame_samples,
                latency_days=device.protocol.latency_days,
                rate_mm_per_day=device.protocol.rate_mm_per_day,
                steps_per_day=device.protocol.steps_per_day,
                target_mm=device.protocol.target_mm,
            )
            for number, device in enumerate(registry.devices.values())
        )
        return cls(
            devices=configs,
            encodings=hub_encodings([config.hub for config in configs], "mixed"),
            start_ns=end_ns - round(days * NS_PER_DAY),
            end_ns=end_ns,
            speed=speed,
            inject_bad_payloads=inject_bad_payloads,
        )


def hub_encodings(hubs: Sequence[str], mode: Encoding | Literal["mixed"]) -> dict[str, Encoding]:
    """Each hub's telemetry encoding: all the same, or alternating JSON and binary (`mixed`)."""
    unique = list(dict.fromkeys(hubs))
    if mode == "mixed":
        return {hub: ("json", "binary")[number % 2] for number, hub in enumerate(unique)}
    return dict.fromkeys(unique, mode)


def write_truth(plan: FleetPlan, directory: Path) -> list[Path]:
    """Write each device's ground truth beside a run: `{directory}/{device}.truth.jsonl`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for config in plan.devices:
        path = directory / f"{config.device}.truth.jsonl"
        write_ground_truth(path, config, start_ns=plan.start_ns, end_ns=plan.end_ns)
        paths.append(path)
    return paths


def hub_stream(plan: FleetPlan, hub: str) -> Iterator[Emitted]:
    """Everything one hub publishes for its devices, merged in publish-time order."""
    streams = [
        generate(config, start_ns=plan.start_ns, end_ns=plan.end_ns)
        for config in plan.devices
        if config.hub == hub
    ]
    return heapq.merge(*streams, key=lambda item: item.t_ns)


def bad_payloads(hub: str, device: str, now_ns: int) -> list[tuple[Reason, str, bytes]]:
    """A few payloads that break contract rules, for demos: (the rule, topic, payload)."""
    topic = telemetry_topic(hub, device)

    def frame(**changes: object) -> bytes:
        body: dict[str, object] = {
            "v": 1, "device": device, "seq": 4_000_000_000, "t0_ns": now_ns, "rate_hz": 100.0,
            "force_n": [1.0, 2.0], "disp_mm": [0.5, 0.5],
        }  # fmt: skip
        body.update(changes)
        return json.dumps(body).encode()

    return [
        (Reason.MALFORMED, topic, b'{"v": 1, "device": '),
        (Reason.SCHEMA, topic, frame(disp_mm=[0.5])),
        (Reason.NON_FINITE, topic, frame(force_n=[1.0, math.nan])),
        (Reason.TOPIC_MISMATCH, topic, frame(device="DX-OTHER")),
        (Reason.FUTURE_TIMESTAMP, topic, frame(t0_ns=now_ns + NS_PER_DAY)),
        (Reason.UNKNOWN_DEVICE, telemetry_topic(hub, "DX-UNKNOWN"), frame(device="DX-UNKNOWN")),
    ]


async def _publish_hub(
    plan: FleetPlan, hub: str, mqtt: MqttSettings, wall_start: float, counts: dict[str, int]
) -> None:
    async with EmulatedHub(hub=hub, mqtt=mqtt, encoding=plan.encodings.get(hub, "json")) as client:
        for item in hub_stream(plan, hub):
            if plan.speed is not None:
                due = wall_start + (item.t_ns - plan.start_ns) / 1e9 / plan.speed
                delay_s = due - time.monotonic()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
            if item.frame is not None:
                await client.publish_frame(item.frame)
            elif item.event is not None:
                await client.publish_event(item.event)
            elif item.online is not None:
                await client.publish_status(online=item.online)
            counts[hub] += 1
        if plan.inject_bad_payloads:
            device = next(config.device for config in plan.devices if config.hub == hub)
            for _, topic, payload in bad_payloads(hub, device, time.time_ns()):
                await client.publish_raw(topic, payload)
                counts[hub] += 1


async def _show_progress(counts: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        total = sum(counts.values())
        per_hub = ", ".join(f"{hub}: {n}" for hub, n in counts.items())
        sys.stderr.write(f"\r  published {total} messages ({per_hub})")
        sys.stderr.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    sys.stderr.write("\n")


async def run_fleet(plan: FleetPlan, *, mqtt: MqttSettings, progress: bool = False) -> int:
    """Publish the whole plan, one MQTT session per hub; returns the number of messages sent."""
    counts = dict.fromkeys(plan.hubs, 0)
    wall_start = time.monotonic()
    done = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        if progress:
            tasks.create_task(_show_progress(counts, done), name="fleet.progress")
        async with asyncio.TaskGroup() as hubs:
            for hub in plan.hubs:
                hubs.create_task(
                    _publish_hub(plan, hub, mqtt, wall_start, counts), name=f"fleet[{hub}].publish"
                )
        done.set()
    return sum(counts.values())


def plan_devices(
    *,
    devices: int,
    hubs: int,
    seed: int,
    scenarios: Sequence[str],
    rate_hz: float = 100.0,
    frame_samples: int = 100,
) -> tuple[DeviceConfig, ...]:
    """`devices` emulated devices spread over `hubs` hubs, scenarios assigned in turn."""
    return tuple(
        DeviceConfig(
            device=f"DX-{number + 1:04d}",
            hub=f"HUB-{number % hubs + 1:03d}",
            scenario=scenarios[number % len(scenarios)],
            seed=seed + number,
            rate_hz=rate_hz,
            frame_samples=frame_samples,
        )
        for number in range(devices)
    )
