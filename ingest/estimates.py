"""The DSP estimates of live data: which calls feed the estimator, and what is written and sent.

Each record of `dsp.estimator` becomes one InfluxDB point (docs/schema.md: `step`,
`load_share`, `daily`, `quality`) and one MQTT message on `osteotel/v1/derived/{device}/estimates`
for the alert service (docs/derived.md). Floats that are not finite (an estimate that could not
be made) are left out of the point and sent as JSON `null`.
"""

import json
import math
from typing import Any

from devices.contract import DistractionStep, LoadTestEnd, LoadTestStart, Probe
from devices.contract import Event as DeviceEvent
from devices.registry import Device
from dsp.adherence import Protocol
from dsp.estimator import EstimateRecord, FleetEstimator
from osteotel.store.lineproto import point_line

__all__ = ["dsp_protocol", "estimate_line", "estimate_message", "feed_event", "register_device"]

# kind -> (measurement, the record field that becomes a tag besides hub and device)
_MEASUREMENTS: dict[str, tuple[str, str | None]] = {
    "step": ("step", "kind"),
    "probe": ("step", "kind"),
    "load_share": ("load_share", None),
    "daily": ("daily", "phase"),
    "quality": ("quality", "channel"),
}
_ENVELOPE = frozenset({"device", "t_ns", "kind"})


def dsp_protocol(device: Device) -> Protocol:
    """The registry's prescription of a device as the estimator takes it."""
    prescribed = device.protocol
    return Protocol(
        steps_per_day=prescribed.steps_per_day,
        step_mm=prescribed.step_mm,
        target_mm=prescribed.target_mm,
    )


def register_device(estimator: FleetEstimator, device: Device) -> None:
    """Tell the estimator a device's prescription and calibration from the registry."""
    estimator.set_protocol(device.id, dsp_protocol(device))
    estimator.set_calibration(device.id, device.calibration.id)


def feed_event(estimator: FleetEstimator, event: DeviceEvent) -> list[EstimateRecord]:
    """Pass an event to the estimator if it is one the DSP uses; returns any records it closed."""
    if isinstance(event, DistractionStep):
        return estimator.step(event.device, event.t_ns, event.delta_mm, kind="step")
    if isinstance(event, Probe):
        return estimator.step(event.device, event.t_ns, event.delta_mm, kind="probe")
    if isinstance(event, LoadTestStart):
        return estimator.load_test_start(event.device, event.t_ns)
    if isinstance(event, LoadTestEnd):
        return estimator.load_test_end(event.device, event.t_ns)
    return []


def _field(value: Any) -> float | int | bool | str | None:
    if isinstance(value, list):
        return ",".join(value) or None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value  # type: ignore[no-any-return]


def estimate_line(hub: str, record: EstimateRecord) -> bytes:
    """One InfluxDB point for an estimate."""
    measurement, tag = _MEASUREMENTS[record.kind]
    values = record.as_dict()
    tags = {"hub": hub, "device": record.device}
    if tag is not None:
        tags[tag] = str(values.pop(tag))
    fields = {key: _field(value) for key, value in values.items() if key not in _ENVELOPE}
    return point_line(measurement, tags, fields, record.t_ns)


def estimate_message(hub: str, patient: str, record: EstimateRecord) -> bytes:
    """The JSON message for the alert service: the record plus hub and patient pseudonym."""
    body = {"v": 1, "hub": hub, "patient": patient}
    for key, value in record.as_dict().items():
        body[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
