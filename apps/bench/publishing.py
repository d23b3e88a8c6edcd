"""What `osteotel bench ingest` publishes, and how: frames from emulated devices, sent by a paho
client with a bounded window of unacknowledged publishes, as fast as the broker takes them or
paced at a steady rate.

    messages = sustained_messages(ids, frames=20_000, frame_samples=100)
    publish_all(host, port, messages, "osteotel-bench-1p")
    frames, published_s, rate_hz = publish_paced(
        host, port, "osteotel-bench-paced", ids, 100, rate_frames_per_s=500.0, duration_s=20.0
    )

Each device's signal is a 1 Hz gait-like load around 150 N on a steady elongation; odd-numbered
hubs send binary frames, the others JSON (docs/ingest.md, "Throughput and latency").
"""

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Message", "publish_all", "publish_paced", "sustained_messages"]

_RATE_HZ = 100.0
_WINDOW = 32  # publishes in flight; the same window `devices.emulator.capture.replay` uses


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publish: its topic and payload."""

    topic: str
    payload: bytes


class _Signals:
    """Per-device sample blocks: a 1 Hz gait-like load around 150 N and a steady elongation."""

    def __init__(self, devices: int, frame_samples: int) -> None:
        import numpy as np  # noqa: PLC0415 - benchmarks load heavy modules only when they run

        rng = np.random.default_rng(11)
        phase = np.arange(frame_samples) * 2 * np.pi / _RATE_HZ
        noise = rng.normal(0.0, 1.0, (devices, 2, frame_samples))
        # Sensor resolution: force to 0.01 N, elongation to 1 um. Forces stay within the
        # ~300 N adult tibia range (docs/domain.md, "Forces along a lengthening").
        self.force_n = np.round(150.0 + 40.0 * np.sin(phase) + noise[:, 0], 2)
        self.disp_mm = np.round(20.0 + 0.002 * noise[:, 1], 3)

    def payload(
        self, index: int, device: str, *, seq: int, t0_ns: int, rate_hz: float, binary: bool
    ) -> bytes:
        """Device `index`'s block as one frame, binary or JSON."""
        from devices.codec import encode_frame_binary, encode_frame_json  # noqa: PLC0415
        from devices.contract import Frame  # noqa: PLC0415

        frame = Frame(device, seq, t0_ns, rate_hz, self.force_n[index], self.disp_mm[index])
        return encode_frame_binary(frame) if binary else encode_frame_json(frame)


def _binary_hub(hub: str) -> bool:
    """Odd-numbered hubs send binary frames, the others JSON: a mixed fleet."""
    return int(hub.removeprefix("HUB-")) % 2 == 1


def sustained_messages(
    ids: list[tuple[str, str]], frames: int, frame_samples: int, *, json_only: bool = False
) -> list[Message]:
    """`frames` frames round-robin over the devices, contiguous per device, ending a minute ago."""
    from devices.contract import telemetry_topic  # noqa: PLC0415

    signals = _Signals(len(ids), frame_samples)
    frame_ns = round(frame_samples * 1e9 / _RATE_HZ)
    per_device = -(-frames // len(ids))
    start_ns = time.time_ns() - (per_device * frame_ns) - 60_000_000_000
    messages = []
    for number in range(frames):
        index = number % len(ids)
        seq = number // len(ids)
        hub, device = ids[index]
        payload = signals.payload(
            index,
            device,
            seq=seq,
            t0_ns=start_ns + seq * frame_ns,
            rate_hz=_RATE_HZ,
            binary=_binary_hub(hub) and not json_only,
        )
        messages.append(Message(telemetry_topic(hub, device), payload))
    return messages


class _Publisher:
    """A paho client driven from the calling thread, QoS 1, a bounded window of publishes."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        import paho.mqtt.client as paho  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        self._paho = paho
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        self._client.max_inflight_messages_set(_WINDOW)
        self._pending: deque[Any] = deque()
        connected: list[object] = []
        self._client.on_connect = lambda _c, _u, _f, reason, _p: connected.append(reason)
        self._client.connect(host, port, keepalive=30)
        self._loop_until(lambda: bool(connected), 10.0)

    def _loop_until(self, done: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from the broker within {timeout_s:g} s")
            code = self._client.loop(timeout=0.5)
            if code != self._paho.MQTT_ERR_SUCCESS:
                raise ConnectionError(self._paho.error_string(code))

    def _room(self) -> bool:
        while self._pending and self._pending[0].is_published():
            self._pending.popleft()
        return len(self._pending) < _WINDOW

    def publish(self, message: Message) -> None:
        """Publish once the window has room; waits for PUBACKs otherwise."""
        if not self._room():
            self._loop_until(self._room, 30.0)
        self._pending.append(self._client.publish(message.topic, message.payload, qos=1))

    def service(self) -> None:
        """Read what the broker sent (PUBACKs, keep-alive) without waiting."""
        self._client.loop(timeout=0.0)

    def finish(self) -> None:
        """Wait until every publish is acknowledged, then disconnect."""
        self._loop_until(lambda: self._room() and not self._pending, 30.0)
        self._client.disconnect()


def publish_all(host: str, port: int, messages: list[Message], client_id: str) -> None:
    """Publish every message as fast as the broker acknowledges them, then disconnect."""
    publisher = _Publisher(host, port, client_id)
    for message in messages:
        publisher.publish(message)
    publisher.finish()


def publish_paced(
    host: str,
    port: int,
    client_id: str,
    ids: list[tuple[str, str]],
    frame_samples: int,
    *,
    rate_frames_per_s: float,
    duration_s: float,
) -> tuple[int, float, float]:
    """Publish at a steady rate, each frame's last sample stamped with its publish time.

    Frame k is due `k / rate_frames_per_s` seconds after the first; none is sent early.

    Returns:
        (frames published, seconds from the first due time until the last was sent,
        the devices' sample rate in Hz).
    """
    from devices.contract import telemetry_topic  # noqa: PLC0415

    publisher = _Publisher(host, port, client_id)
    signals = _Signals(len(ids), frame_samples)
    # Each device sends rate/devices frames a second; sampling at n times that keeps its
    # frames back to back while every frame ends at its publish time (never below 100 Hz).
    rate_hz = min(10_000.0, max(_RATE_HZ, frame_samples * rate_frames_per_s / len(ids)))
    span_ns = round((frame_samples - 1) * 1e9 / rate_hz)
    topics = [telemetry_topic(hub, device) for hub, device in ids]
    count = max(1, round(rate_frames_per_s * duration_s))
    started = time.perf_counter()
    for number in range(count):
        due = started + number / rate_frames_per_s
        while (ahead_s := due - time.perf_counter()) > 0:
            publisher.service()
            time.sleep(min(ahead_s, 0.002))
        index = number % len(ids)
        hub, device = ids[index]
        payload = signals.payload(
            index,
            device,
            seq=number // len(ids),
            t0_ns=time.time_ns() - span_ns,
            rate_hz=rate_hz,
            binary=_binary_hub(hub),
        )
        publisher.publish(Message(topics[index], payload))
    published_s = time.perf_counter() - started
    publisher.finish()
    return count, published_s, rate_hz
