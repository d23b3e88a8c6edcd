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

`accept_many` judges a batch of messages with the same outcome, message by message, as `accept`
one at a time; it checks the arrays of all the batch's frames (rules 9 and 10) in a few numpy
calls instead of a few per frame, and goes through `accept`'s own checks for a frame whose
arrays fail them, so that its rejection names the same rule, field, index and value.
"""

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from devices.codec import (
    Encoding,
    check_frame_finite,
    decode_event,
    decode_frame,
    decode_status,
    parse_frame,
)
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

__all__ = ["Accepted", "Limits", "accept", "accept_many"]

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
    _check_size(payload, limits)
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


def accept_many(
    messages: Sequence[tuple[str, bytes, int]], *, registry: Registry, limits: Limits
) -> list[Accepted | Rejected]:
    """Check many MQTT messages, each on its own, as `accept` checks one.

    Args:
        messages: (topic, payload, now_ns) of each message: `now_ns` is the server clock at its
            receipt, UTC epoch ns.
        registry: the hubs and devices currently known.
        limits: payload size and clock skew limits.

    Returns:
        For each message in order, what `accept` returns for it, or the `Rejected` it raises.
    """
    results: list[Accepted | Rejected] = []
    # Frames that passed rules 1-8, their arrays not checked yet: (result index, frame, device,
    # now_ns).
    pending: list[tuple[int, Frame, Device, int]] = []
    for topic, payload, now_ns in messages:
        try:
            _check_size(payload, limits)
            parsed = _parse_topic(topic)
            if parsed.kind is not MessageKind.TELEMETRY:
                accepted = accept(topic, payload, registry=registry, now_ns=now_ns, limits=limits)
                results.append(accepted)
                continue
            device = _telemetry_device(registry, parsed)
            frame, encoding = parse_frame(payload, topic_device=device.id)
        except Rejected as rejected:
            results.append(rejected)
            continue
        pending.append((len(results), frame, device, now_ns))
        results.append(Accepted(parsed, parsed.hub, frame, encoding))
    sound = _arrays_sound([(frame, device) for _, frame, device, _ in pending])
    for (index, frame, device, now_ns), arrays_sound in zip(pending, sound, strict=True):
        try:
            if arrays_sound:
                # Finite and in range: only the scalars can break rule 9 (first in the same order).
                _check_frame_scalars_finite(frame)
            else:
                check_frame_finite(frame)
                _check_range(frame, device)
            _check_frame_time(frame, now_ns, limits)
        except Rejected as rejected:
            results[index] = rejected
    return results


def _check_size(payload: bytes, limits: Limits) -> None:
    if len(payload) > limits.max_payload_bytes:
        raise Rejected(
            Reason.OVERSIZE, f"payload is {len(payload)} bytes, limit {limits.max_payload_bytes}"
        )


def _telemetry_device(registry: Registry, parsed: Topic) -> Device:
    if parsed.hub not in registry.hubs:
        raise Rejected(Reason.UNKNOWN_HUB, f"hub {parsed.hub!r} is not registered", field="hub")
    assert parsed.device is not None  # telemetry topics always name a device
    return _registered_device(registry, parsed.hub, parsed.device)


def _arrays_sound(frames: Sequence[tuple[Frame, Device]]) -> list[bool]:
    """For each frame, whether every array is finite and within its device's range, checked
    over all frames' arrays at once."""
    arrays: list[FloatArray] = []
    bounds: list[tuple[float, float]] = []
    owners: list[int] = []
    for number, (frame, device) in enumerate(frames):
        arrays += (frame.force_n, frame.disp_mm)
        bounds += (device.range.force_n, device.range.disp_mm)
        owners += (number, number)
        if frame.ref_load_n is not None:
            arrays.append(frame.ref_load_n)
            bounds.append(device.range.ref_load_n or (-math.inf, math.inf))
            owners.append(number)
    if not arrays:
        return []
    lengths = [array.size for array in arrays]
    values = np.concatenate(arrays)
    low, high = np.repeat(np.array(bounds, dtype=np.float64), lengths, axis=0).T
    good = np.isfinite(values) & (values >= low) & (values <= high)
    starts = np.zeros(len(arrays), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    # Every array has at least one sample (the schema's rule), so no segment is empty.
    array_good = np.logical_and.reduceat(good, starts)
    sound = [True] * len(frames)
    for owner, fine in zip(owners, array_good.tolist(), strict=True):
        if not fine:
            sound[owner] = False
    return sound


def _check_frame_scalars_finite(frame: Frame) -> None:
    for name, value in (
        ("rate_hz", frame.rate_hz),
        ("temp_c", frame.temp_c),
        ("battery_pct", frame.battery_pct),
    ):
        if value is not None and not math.isfinite(value):
            raise Rejected(Reason.NON_FINITE, f"{name} is {value!r}", field=name)


def _check_frame_time(frame: Frame, now_ns: int, limits: Limits) -> None:
    # The field to fix is t0_ns (or rate_hz), but the last sample is what must not be ahead.
    _check_time(
        "t0_ns", frame.t_last_ns, now_ns + limits.future_skew_ns, now_ns, what="last sample time"
    )


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
