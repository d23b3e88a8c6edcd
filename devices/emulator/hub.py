"""An emulated device hub on MQTT: a connection with a will, a retained status, QoS 1 publishing.

This is what a vendor's gateway does (docs/contract.md): it announces itself online with a
retained status, registers a will that announces it offline if the connection dies, and
publishes its devices' frames and events with QoS 1. It publishes through `FastPublisher`,
which keeps up to a window of publishes in flight instead of awaiting each PUBACK, so a
compressed treatment is paced by its simulated clock, not by round trips to the broker.
"""

import time
from types import TracebackType
from typing import Self

from devices.codec import (
    Encoding,
    encode_event,
    encode_frame_binary,
    encode_frame_json,
    encode_status,
)
from devices.contract import Event, Frame, HubStatus, events_topic, status_topic, telemetry_topic
from devices.emulator.fastpub import FastPublisher, Will
from osteotel.settings import MqttSettings

__all__ = ["EmulatedHub"]


class EmulatedHub:
    """One hub's MQTT session, as an async context manager.

    Args:
        hub: the hub id.
        mqtt: broker address and credentials.
        encoding: how this hub encodes telemetry frames.
    """

    def __init__(self, *, hub: str, mqtt: MqttSettings, encoding: Encoding = "json") -> None:
        self.hub = hub
        self.encoding: Encoding = encoding
        offline = HubStatus(hub=hub, online=False, t_ns=time.time_ns())
        self._client = FastPublisher(
            mqtt,
            client_id=f"osteotel-hub-{hub}",
            will=Will(status_topic(hub), encode_status(offline), qos=1, retain=True),
        )

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        await self.publish_status(online=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                await self.publish_status(online=False)
        finally:
            await self._client.__aexit__(exc_type, exc, tb)

    async def publish_status(self, *, online: bool) -> None:
        """Publish the hub's retained status."""
        status = HubStatus(hub=self.hub, online=online, t_ns=time.time_ns())
        await self._client.publish(
            status_topic(self.hub), encode_status(status), qos=1, retain=True
        )

    async def publish_frame(self, frame: Frame) -> None:
        """Publish one telemetry frame in this hub's encoding."""
        encode = encode_frame_binary if self.encoding == "binary" else encode_frame_json
        await self._client.publish(telemetry_topic(self.hub, frame.device), encode(frame), qos=1)

    async def publish_event(self, event: Event) -> None:
        """Publish one device event."""
        await self._client.publish(events_topic(self.hub, event.device), encode_event(event), qos=1)

    async def publish_raw(self, topic: str, payload: bytes) -> None:
        """Publish any payload on any topic: for fault injection and tests."""
        await self._client.publish(topic, payload, qos=1)
