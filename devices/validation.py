"""Accept or reject one MQTT message against the contract, the registry and the clock.

Rules are checked in this order; the first broken rule is the reason given:

    1. oversize          payload longer than `Limits.max_payload_bytes`
    2. schema (topic)    the topic is not a v1 topic, or an id in it is invalid
    3. unknown_hub       the topic's hub is not in the registry
    4. unknown_device    the topic's device is not in the registry       (telemetry, events)
    5. hub_mismatch      the device is registered to another hub         (telemetry, events)
    6. malformed         the payload cannot be parsed                    (devices.codec)
    7. schema            a field is missing, unknown, mistyped or out of bounds
    8. topic_mismatch    the payload's device or hub differs from the topic's
    9. non_finite        NaN or inf in an array or a float field
   10. out_of_range      a raw sample outside the device's sensor range  (telemetry; the
                         registry's calibration is applied after, by ingest)
   11. future_timestamp  the last sample, or the event or status time, is more than
                         `Limits.future_skew_ns` ahead of the server clock

Old timestamps are valid: hubs store and forward when the network is down.
"""

import functools
from dataclasses import dataclass

import numpy as np

from devices.codec import Encoding, decode_event, decode_frame, decode_status
from devices.contract import (
    Event,
    FloatArray,
    Frame,
    HubStatus,
    MessageKind,
    Reason,
    Rejected,
    Topic,
    parse_topic,
)
from devices.registry import Device, Registry

__all__ = ["Accepted", "Limits", "accept"]

# A fleet sends on a few hundred topics over and over; a parsed topic is immutable. A topic that
# does not parse raises every time (lru_cache keeps no exceptions), with the same rejection.
_parse_topic = functools.lru_cache(maxsize=4096)(parse_topic)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that are deployment settings rather than part of the contract.

    Attributes:
        max_payload_bytes: largest accepted payload, bytes. The default leaves room for a
            JSON frame of 10,000 samples in two arrays (about 20 bytes per value).
        future_skew_ns: how far ahead of the server clock a timestamp may be, ns, to allow
            for clock error between hub and server.
    """

    max_payload_bytes: int = 1_048_576
    future_skew_ns: int = 5_000_000_000


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message that passed every rule: what ingest stores.

    Attributes:
        topic: the parsed topic.
        hub: the hub it came through.
        message: the decoded frame, event or hub status.
        encoding: how a frame was encoded; None for events and status (always JSON).
    """

    topic: Topic
    hub: str
    message: Frame | Event | HubStatus
    encoding: Encoding | None


def accept(
    topic: str, payload: bytes, *, registry: Registry, now_ns: int, limits: Limits
) -> Accepted:
    """Check one MQTT message against every rule of the contract.

    Args:
        topic: the topic it arrived on.
        payload: its payload.
        registry: the hubs and devices currently known.
        now_ns: the server clock, UTC epoch ns.
        limits: payload size and clock skew limits.

    Returns:
        The decoded, accepted message.

    Raises:
        Rejected: the first rule the message breaks (see the module docstring for the order).
    """
    if len(payload) > limits.max_payload_bytes:
        raise Rejected(
            Reason.OVERSIZE, f"payload is {len(payload)} bytes, limit {limits.max_payload_bytes}"
        )
    parsed = _parse_topic(topic)
    if parsed.hub not in registry.hubs:
        raise Rejected(Reason.UNKNOWN_HUB, f"hub {parsed.hub!r} is not registered", field="hub")
    latest_ns = now_ns + limits.future_skew_ns
    if parsed.kind is MessageKind.STATUS:
        status = decode_status(payload, topic_hub=parsed.hub)
        _check_time("t_ns", status.t_ns, latest_ns, now_ns)
        return Accepted(parsed, parsed.hub, status, None)

    assert parsed.device is not None  # telemetry and events topics always name a device
    device = _registered_device(registry, parsed.hub, parsed.device)
    if parsed.kind is MessageKind.EVENTS:
        event = decode_event(payload, topic_device=parsed.device)
        _check_time("t_ns", event.t_ns, latest_ns, now_ns)
        return Accepted(parsed, parsed.hub, event, None)

    frame, encoding = decode_frame(payload, topic_device=parsed.device)
    _check_range(frame, device)
    # The field to fix is t0_ns (or rate_hz), but the last sample is what must not be ahead.
    _check_time("t0_ns", frame.t_last_ns, latest_ns, now_ns, what="last sample time")
    return Accepted(parsed, parsed.hub, frame, encoding)


def _registered_device(registry: Registry, hub: str, device_id: str) -> Device:
    device = registry.devices.get(device_id)
    if device is None:
        raise Rejected(
            Reason.UNKNOWN_DEVICE, f"device {device_id!r} is not registered", field="device"
        )
    if device.hub != hub:
        raise Rejected(
            Reason.HUB_MISMATCH,
            f"device {device_id!r} is registered to hub {device.hub!r}, not {hub!r}",
            field="hub",
        )
    return device


def _check_range(frame: Frame, device: Device) -> None:
    bounds = device.range
    _check_array("force_n", frame.force_n, bounds.force_n)
    _check_array("disp_mm", frame.disp_mm, bounds.disp_mm)
    if frame.ref_load_n is not None and bounds.ref_load_n is not None:
        _check_array("ref_load_n", frame.ref_load_n, bounds.ref_load_n)


def _check_array(name: str, values: FloatArray, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    outside = (values < lo) | (values > hi)
    if outside.any():
        index = int(np.argmax(outside))  # first True
        raise Rejected(
            Reason.OUT_OF_RANGE,
            f"{name}[{index}] is {float(values[index])!r}, range [{lo!r}, {hi!r}]",
            field=name,
            index=index,
        )


def _check_time(
    field: str, t_ns: int, latest_ns: int, now_ns: int, *, what: str | None = None
) -> None:
    if t_ns > latest_ns:
        ahead_s = (t_ns - now_ns) / 1e9
        raise Rejected(
            Reason.FUTURE_TIMESTAMP,
            f"{what or field} is {t_ns}, {ahead_s:.3f} s ahead of server time",
            field=field,
        )
