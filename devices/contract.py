"""Wire contract v1 between device hubs and osteotel: topics, messages and rejection codes.

A hub publishes, for each distractor it serves, telemetry frames and events, and its own
retained online/offline status:

    osteotel/v1/{hub}/{device}/telemetry   Frame (JSON or binary, see `devices.codec`)
    osteotel/v1/{hub}/{device}/events      Event (JSON)
    osteotel/v1/{hub}/status               HubStatus (JSON, retained, also the hub's MQTT will)

The hub id is the first variable level so that a broker ACL can pin a hub's credentials to
its own subtree (`osteotel/v1/HUB-A/#`). The contract for vendors is docs/contract.md.
"""

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "BINARY_MAGIC",
    "ID_PATTERN",
    "MAX_SAMPLES",
    "MAX_SEQ",
    "MAX_TIME_NS",
    "SUBSCRIPTIONS",
    "Battery",
    "DeviceId",
    "DistractionStep",
    "Event",
    "Fault",
    "FloatArray",
    "Frame",
    "HubStatus",
    "LoadTestEnd",
    "LoadTestStart",
    "MessageKind",
    "Percent",
    "Probe",
    "Reason",
    "Reboot",
    "Rejected",
    "TimeNs",
    "Topic",
    "Version",
    "derived_topic",
    "events_topic",
    "hub_filter",
    "is_valid_id",
    "parse_topic",
    "status_topic",
    "telemetry_topic",
]

ID_PATTERN = "[A-Za-z0-9_-]{1,64}"
"""Hub and device ids, matched in full: ASCII letters, digits, `_` and `-`, 1 to 64 long."""

MAX_SAMPLES = 10_000
"""Most samples one frame may carry (per array)."""

MAX_SEQ = 2**32 - 1
"""`seq` is an unsigned 32-bit frame counter."""

MAX_TIME_NS = 2**63 - 1
"""Every time on the wire is a signed 64-bit count of UTC epoch nanoseconds, never negative."""

BINARY_MAGIC = b"OTF1"
"""First four bytes of a binary telemetry frame."""

_PREFIX = "osteotel/v1"
_ID_RE = re.compile(ID_PATTERN)

SUBSCRIPTIONS: tuple[str, ...] = (
    f"{_PREFIX}/+/+/telemetry",
    f"{_PREFIX}/+/+/events",
    f"{_PREFIX}/+/status",
)
"""The MQTT topic filters that together receive every v1 message."""


class Reason(StrEnum):
    """Why a message was rejected. The values are stable codes that metrics and logs use."""

    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    SCHEMA = "schema"
    UNKNOWN_HUB = "unknown_hub"
    UNKNOWN_DEVICE = "unknown_device"
    HUB_MISMATCH = "hub_mismatch"
    TOPIC_MISMATCH = "topic_mismatch"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    FUTURE_TIMESTAMP = "future_timestamp"
    # Not a rule of the payload: the database refused the message's points (e.g. a field type
    # conflict). Ingest dead-letters the message instead of retrying it forever.
    STORE_REJECTED = "store_rejected"


class Rejected(Exception):  # noqa: N818 - a rejection is an outcome the caller counts, not a fault
    """A message broke a rule of the contract.

    Attributes:
        reason: the rule that was broken.
        detail: a short sentence naming the offending value.
        field: the message field concerned (`"force_n"`, `"seq"`, `"topic"`), if any.
        index: the first offending array index, if the field is an array.
    """

    def __init__(
        self,
        reason: Reason,
        detail: str,
        *,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(reason, detail, field, index)
        self.reason = reason
        self.detail = detail
        self.field = field
        self.index = index

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"

    def __repr__(self) -> str:
        return (
            f"Rejected(reason={self.reason.value!r}, detail={self.detail!r}, "
            f"field={self.field!r}, index={self.index!r})"
        )


class MessageKind(StrEnum):
    """The last level of a v1 topic."""

    TELEMETRY = "telemetry"
    EVENTS = "events"
    STATUS = "status"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed v1 topic; `device` is None for hub status."""

    kind: MessageKind
    hub: str
    device: str | None


def is_valid_id(value: str) -> bool:
    """Tell whether `value` is a valid hub or device id (full match of `ID_PATTERN`)."""
    return _ID_RE.fullmatch(value) is not None


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_topic(topic: str) -> Topic:
    """Split a v1 topic into its kind, hub and device.

    Args:
        topic: the MQTT topic a message arrived on.

    Returns:
        The parsed topic.

    Raises:
        Rejected: `schema` with field "topic" when the topic is not one of the three v1 shapes
            or an id does not match `ID_PATTERN`.
    """
    levels = topic.split("/")
    if len(levels) == 5 and levels[:2] == ["osteotel", "v1"] and levels[4] != "status":
        _, _, hub, device, kind = levels
        if kind in (MessageKind.TELEMETRY, MessageKind.EVENTS):
            _check_topic_id(hub, "hub", topic)
            _check_topic_id(device, "device", topic)
            return Topic(MessageKind(kind), hub, device)
    elif len(levels) == 4 and levels[:2] == ["osteotel", "v1"] and levels[3] == "status":
        _check_topic_id(levels[2], "hub", topic)
        return Topic(MessageKind.STATUS, levels[2], None)
    raise Rejected(Reason.SCHEMA, f"topic {_short(topic)} is not a v1 topic", field="topic")


def _check_topic_id(value: str, role: str, topic: str) -> None:
    if not is_valid_id(value):
        raise Rejected(
            Reason.SCHEMA, f"{role} id {_short(value)} in topic {_short(topic)}", field="topic"
        )


def _checked_id(value: str, role: str) -> str:
    # Building a topic from a bad id would publish where nobody subscribes: fail loudly instead.
    if not is_valid_id(value):
        raise ValueError(f"{role} id {_short(value)} does not match {ID_PATTERN}")
    return value


def derived_topic(device: str) -> str:
    """Return the topic ingest publishes a device's DSP estimates on (docs/derived.md)."""
    return f"{_PREFIX}/derived/{_checked_id(device, 'device')}/estimates"


def telemetry_topic(hub: str, device: str) -> str:
    """Return the topic a hub publishes a device's telemetry frames on."""
    return f"{_PREFIX}/{_checked_id(hub, 'hub')}/{_checked_id(device, 'device')}/telemetry"


def events_topic(hub: str, device: str) -> str:
    """Return the topic a hub publishes a device's events on."""
    return f"{_PREFIX}/{_checked_id(hub, 'hub')}/{_checked_id(device, 'device')}/events"


def hub_filter(hub: str) -> str:
    """Return the topic filter that receives everything a hub publishes."""
    return f"{_PREFIX}/{_checked_id(hub, 'hub')}/#"


def status_topic(hub: str) -> str:
    """Return the topic of a hub's retained status (and its MQTT will)."""
    return f"{_PREFIX}/{_checked_id(hub, 'hub')}/status"


# --- telemetry frames ---------------------------------------------------------------------------

FloatArray = npt.NDArray[np.float64]


def _float_array(name: str, values: Any) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """A block of samples from one device, evenly spaced in time.

    Sample i was taken at `t0_ns + round(i * 1e9 / rate_hz)` (see `timestamps_ns`). Arrays are
    converted to 1-D float64 on construction; all present arrays have the same length.
    Two frames are equal when every field is equal (arrays element by element, NaN equal to NaN).

    Attributes:
        device: device id.
        seq: per-device frame counter, 0..2**32-1, +1 per frame.
        t0_ns: UTC epoch nanoseconds of sample 0.
        rate_hz: sample rate, Hz.
        force_n: force through the distractor, N, compression positive (steps and
            weight-bearing raise it); raw on the wire, calibrated by ingest.
        disp_mm: distractor elongation, mm.
        ref_load_n: external reference load during a weight-bearing test, N, when measured.
        temp_c: device temperature, degrees Celsius, when reported.
        battery_pct: battery charge, percent, when reported.
    """

    device: str
    seq: int
    t0_ns: int
    rate_hz: float
    force_n: FloatArray
    disp_mm: FloatArray
    ref_load_n: FloatArray | None = None
    temp_c: float | None = None
    battery_pct: float | None = None

    def __post_init__(self) -> None:
        # Frozen: the conversion has to go through object.__setattr__.
        object.__setattr__(self, "force_n", _float_array("force_n", self.force_n))
        object.__setattr__(self, "disp_mm", _float_array("disp_mm", self.disp_mm))
        if self.ref_load_n is not None:
            object.__setattr__(self, "ref_load_n", _float_array("ref_load_n", self.ref_load_n))
        lengths = {len(a) for a in (self.force_n, self.disp_mm, self.ref_load_n) if a is not None}
        if len(lengths) != 1:
            raise ValueError(f"frame arrays differ in length: {sorted(lengths)}")

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.force_n)

    def timestamps_ns(self) -> npt.NDArray[np.int64]:
        """Return the UTC epoch nanoseconds of every sample (int64).

        Computed exactly as the contract states, so that hubs and osteotel agree to the
        nanosecond: `t0_ns + round(i * 1e9 / rate_hz)` in IEEE double, rounding half to even.
        """
        offsets = np.round(np.arange(self.n, dtype=np.float64) * 1e9 / self.rate_hz)
        return np.int64(self.t0_ns) + offsets.astype(np.int64)

    @property
    def t_last_ns(self) -> int:
        """UTC epoch nanoseconds of the last sample, as an exact Python int."""
        # Python's round() on a double rounds half to even, like np.round: same value.
        return self.t0_ns + round((self.n - 1) * 1e9 / self.rate_hz)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            self.device == other.device
            and self.seq == other.seq
            and self.t0_ns == other.t0_ns
            and _same_float(self.rate_hz, other.rate_hz)
            and _same_float(self.temp_c, other.temp_c)
            and _same_float(self.battery_pct, other.battery_pct)
            and _same_array(self.force_n, other.force_n)
            and _same_array(self.disp_mm, other.disp_mm)
            and _same_array(self.ref_load_n, other.ref_load_n)
        )

    # Arrays are mutable, so a frame must not be a dict key or set member.
    __hash__ = None  # type: ignore[assignment]


def _same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _same_array(a: FloatArray | None, b: FloatArray | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a, b, equal_nan=True))


# --- events and hub status ----------------------------------------------------------------------


def _version_not_bool(value: object) -> object:
    # Literal[1] alone would take `true` and `1.0` (both == 1); the version must be the integer 1.
    if type(value) is not int:
        raise ValueError(f"v must be the integer 1, got {_short(value)}")
    return value


def _between(lo: float, hi: float) -> AfterValidator:
    def check(value: float) -> float:
        # NaN and inf pass here on purpose: the codec reports them as `non_finite`.
        if math.isfinite(value) and not lo <= value <= hi:
            raise ValueError(f"{value!r} is outside [{lo}, {hi}]")
        return value

    return AfterValidator(check)


Version = Annotated[Literal[1], BeforeValidator(_version_not_bool)]
DeviceId = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
TimeNs = Annotated[int, Field(ge=0, le=MAX_TIME_NS)]
Percent = Annotated[float, _between(0.0, 100.0)]


class _Message(BaseModel):
    # strict: "12" is not a number; ints are still taken where floats are expected.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _EventBase(_Message):
    v: Version = 1
    device: DeviceId
    t_ns: TimeNs


class DistractionStep(_EventBase):
    """The distractor was lengthened by one step (`delta_mm`, mm) by its motor or by hand."""

    type: Literal["distraction_step"] = "distraction_step"
    delta_mm: float
    source: Literal["motor", "manual"]


class Probe(_EventBase):
    """A small test elongation (`delta_mm`, mm) to measure stiffness, not part of the rhythm."""

    type: Literal["probe"] = "probe"
    delta_mm: float


class LoadTestStart(_EventBase):
    """A weight-bearing load-share test began; frames carry `ref_load_n` until it ends."""

    type: Literal["load_test_start"] = "load_test_start"


class LoadTestEnd(_EventBase):
    """A weight-bearing load-share test ended."""

    type: Literal["load_test_end"] = "load_test_end"


class Battery(_EventBase):
    """The device reports its battery charge (`pct`, percent, 0..100)."""

    type: Literal["battery"] = "battery"
    pct: Percent


class Fault(_EventBase):
    """The device reports a fault: a vendor `code` and a human-readable `detail`."""

    type: Literal["fault"] = "fault"
    code: str
    detail: str


class Reboot(_EventBase):
    """The device restarted; its `seq` may restart too."""

    type: Literal["reboot"] = "reboot"


Event = Annotated[
    DistractionStep | Probe | LoadTestStart | LoadTestEnd | Battery | Fault | Reboot,
    Field(discriminator="type"),
]
"""Any v1 event; pydantic picks the model from `type`."""


class HubStatus(_Message):
    """A hub's online state, published retained; the hub's MQTT will publishes `online: false`."""

    v: Version = 1
    hub: DeviceId
    online: bool
    t_ns: TimeNs
