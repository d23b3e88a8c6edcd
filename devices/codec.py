"""Bytes to messages and back, for the v1 wire contract.

A telemetry payload that starts with `OTF1` is binary; one whose first non-whitespace byte is
`{` is JSON; anything else is `malformed`. Events and hub status are JSON only.

Decoders check, in this order, and raise `Rejected` at the first broken rule:
`malformed` (cannot be parsed), `schema` (wrong fields, types, lengths or bounds),
`topic_mismatch` (payload id differs from the topic's), `non_finite` (NaN or inf anywhere).
The checks that need the registry or the clock live in `devices.validation`.

Binary layout, little-endian (struct `<4sBBHIqf`, 24 bytes), then the arrays as f32:

    magic "OTF1" | u8 version=1 | u8 flags | u16 n | u32 seq | i64 t0_ns | f32 rate_hz
    n x f32 force_n | n x f32 disp_mm | n x f32 ref_load_n (only when flags bit 0 is set)
"""

import json
import math
import re
import struct
from typing import Annotated, Final, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from devices.contract import (
    BINARY_MAGIC,
    MAX_SAMPLES,
    MAX_SEQ,
    MAX_TIME_NS,
    DeviceId,
    Event,
    FloatArray,
    Frame,
    HubStatus,
    Percent,
    Reason,
    Rejected,
    TimeNs,
    Version,
)
from osteotel.floatfmt import format_floats

__all__ = [
    "BINARY_HEADER",
    "FLAG_REF_LOAD",
    "Encoding",
    "check_frame_finite",
    "decode_event",
    "decode_frame",
    "decode_status",
    "encode_event",
    "encode_frame_binary",
    "encode_frame_json",
    "encode_status",
    "parse_frame",
]

Encoding = Literal["json", "binary"]

BINARY_HEADER: Final = struct.Struct("<4sBBHIqf")
"""magic, version, flags, n, seq, t0_ns, rate_hz: 24 bytes."""

FLAG_REF_LOAD: Final = 0x01
"""Binary flags bit 0: a `ref_load_n` array follows `disp_mm`."""

MAX_RATE_HZ: Final = 10_000.0

_MAX_MESSAGE: Final = 100
_F32: Final = np.dtype("<f4")
_F32_MAX: Final = float(np.finfo(np.float32).max)
# JSON allows space, tab, LF and CR before a value (RFC 8259, section 2).
_JSON_OBJECT_START: Final = re.compile(rb"[ \t\n\r]*\{")


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rate_check(value: float) -> float:
    # Non-finite rates pass: they are reported as `non_finite`, after the schema checks.
    if math.isfinite(value) and not 0.0 < value <= MAX_RATE_HZ:
        raise ValueError(f"{value!r} is outside (0, {MAX_RATE_HZ:g}]")
    return value


_Samples = Annotated[list[float], Field(min_length=1, max_length=MAX_SAMPLES)]


class _FrameJson(BaseModel):
    """The JSON telemetry frame as it is on the wire; `Frame` is what the rest of osteotel sees."""

    # strict: "12" is not a number; ints are still taken where floats are expected.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    v: Version
    device: DeviceId
    seq: Annotated[int, Field(ge=0, le=MAX_SEQ)]
    t0_ns: TimeNs
    rate_hz: Annotated[float, AfterValidator(_rate_check)]
    force_n: _Samples
    disp_mm: _Samples
    ref_load_n: _Samples | None = None
    temp_c: float | None = None
    battery_pct: Percent | None = None


_EVENT_ADAPTER: Final[TypeAdapter[Event]] = TypeAdapter(Event)


# --- errors -------------------------------------------------------------------------------------


def _from_validation_error(exc: ValidationError, *, tagged: bool) -> Rejected:
    """Turn pydantic's first error into a rejection; `tagged` strips the union tag from loc."""
    errors = exc.errors(include_url=False)
    # An unknown key is most often a typo of a missing one: name the typo first.
    errors.sort(key=lambda error: error["type"] != "extra_forbidden")
    first: ErrorDetails = errors[0]
    if first["type"] == "json_invalid":
        return Rejected(Reason.MALFORMED, first["msg"])
    loc = list(first["loc"])
    if tagged and loc and isinstance(loc[0], str):
        loc = loc[1:]  # ("battery", "pct") -> ("pct",): the tag is the model, not a field
    names = [str(part) for part in loc if isinstance(part, str)]
    indices = [part for part in loc if isinstance(part, int)]
    field = ".".join(names) if names else None
    if field is None and first["type"].startswith("union_tag"):
        field = "type"
    index = indices[0] if indices else None
    where = (field or "payload") + (f"[{index}]" if index is not None else "")
    message = first["msg"].removeprefix("Value error, ")
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    detail = f"{where}: {message}"
    if loc and first["type"] != "missing":
        detail += f", got {_short(first['input'])}"
    if len(errors) > 1:
        detail += f" (+{len(errors) - 1} more)"
    return Rejected(Reason.SCHEMA, detail, field=field, index=index)


def _check_span(t0_ns: int, n: int, rate_hz: float) -> None:
    """Reject a frame whose last sample time does not fit a signed 64-bit nanosecond count."""
    if not math.isfinite(rate_hz):
        return  # reported as non_finite later
    span = (n - 1) * 1e9 / rate_hz
    if not math.isfinite(span) or t0_ns + round(span) > MAX_TIME_NS:
        raise Rejected(
            Reason.SCHEMA,
            f"last sample time (t0_ns={t0_ns}, n={n}, rate_hz={rate_hz!r}) exceeds 2**63-1 ns",
            field="t0_ns",
        )


def _check_finite_scalar(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise Rejected(Reason.NON_FINITE, f"{name} is {value!r}", field=name)


def _check_finite_array(name: str, values: FloatArray | None) -> None:
    if values is None:
        return
    finite = np.isfinite(values)
    if not finite.all():
        index = int(np.argmin(finite))  # first False
        value = float(values[index])
        raise Rejected(Reason.NON_FINITE, f"{name}[{index}] is {value!r}", field=name, index=index)


def _check_topic_device(payload_device: str, topic_device: str) -> None:
    if payload_device != topic_device:
        raise Rejected(
            Reason.TOPIC_MISMATCH,
            f"payload device {_short(payload_device)} on topic of device {_short(topic_device)}",
            field="device",
        )


def _require_json_object(payload: bytes) -> None:
    if _JSON_OBJECT_START.match(payload) is None:
        raise Rejected(Reason.MALFORMED, f"not a JSON object: starts {_short(payload[:16])}")


# --- telemetry frames ---------------------------------------------------------------------------


def decode_frame(payload: bytes, *, topic_device: str) -> tuple[Frame, Encoding]:
    """Decode a telemetry payload, JSON or binary, into a `Frame`.

    Args:
        payload: the MQTT payload.
        topic_device: the device id from the topic; a binary frame takes its id from it.

    Returns:
        The frame (float64 arrays) and the encoding it arrived in.

    Raises:
        Rejected: `malformed`, `schema`, `topic_mismatch` or `non_finite`.
    """
    frame, encoding = parse_frame(payload, topic_device=topic_device)
    check_frame_finite(frame)
    return frame, encoding


def parse_frame(payload: bytes, *, topic_device: str) -> tuple[Frame, Encoding]:
    """`decode_frame` without its last rule, `non_finite`: for a caller that checks many frames'
    arrays at once and then calls `check_frame_finite` on those that fail (devices.validation).

    Raises:
        Rejected: `malformed`, `schema` or `topic_mismatch`.
    """
    if payload.startswith(BINARY_MAGIC):
        return _decode_binary(payload, topic_device), "binary"
    _require_json_object(payload)
    return _decode_json(payload, topic_device), "json"


def check_frame_finite(frame: Frame) -> None:
    """Reject a frame with NaN or inf in a float field or array, naming the first one (fields
    in contract order, then the index).

    Raises:
        Rejected: `non_finite`.
    """
    _check_finite_scalar("rate_hz", frame.rate_hz)
    _check_finite_array("force_n", frame.force_n)
    _check_finite_array("disp_mm", frame.disp_mm)
    _check_finite_array("ref_load_n", frame.ref_load_n)
    _check_finite_scalar("temp_c", frame.temp_c)
    _check_finite_scalar("battery_pct", frame.battery_pct)


def _decode_json(payload: bytes, topic_device: str) -> Frame:
    try:
        wire = _FrameJson.model_validate_json(payload)
    except ValidationError as exc:
        raise _from_validation_error(exc, tagged=False) from None
    n = len(wire.force_n)
    for name in ("disp_mm", "ref_load_n"):
        values = getattr(wire, name)
        if values is not None and len(values) != n:
            raise Rejected(
                Reason.SCHEMA, f"{name} has {len(values)} samples, force_n has {n}", field=name
            )
    _check_span(wire.t0_ns, n, wire.rate_hz)
    _check_topic_device(wire.device, topic_device)
    return Frame(
        device=wire.device,
        seq=wire.seq,
        t0_ns=wire.t0_ns,
        rate_hz=wire.rate_hz,
        force_n=np.array(wire.force_n, dtype=np.float64),
        disp_mm=np.array(wire.disp_mm, dtype=np.float64),
        ref_load_n=None if wire.ref_load_n is None else np.array(wire.ref_load_n, np.float64),
        temp_c=wire.temp_c,
        battery_pct=wire.battery_pct,
    )


def _decode_binary(payload: bytes, topic_device: str) -> Frame:
    size = len(payload)
    if size < BINARY_HEADER.size:
        raise Rejected(
            Reason.MALFORMED, f"binary header is {size} bytes, needs {BINARY_HEADER.size}"
        )
    _, version, flags, n, seq, t0_ns, rate_hz = BINARY_HEADER.unpack_from(payload)
    # Version and flags define the layout, so they are checked before the length they imply.
    if version != 1:
        raise Rejected(Reason.SCHEMA, f"binary version is {version}, expected 1", field="v")
    if flags & ~FLAG_REF_LOAD:
        raise Rejected(Reason.SCHEMA, f"reserved flag bits set: {flags:#04x}", field="flags")
    arrays = 3 if flags & FLAG_REF_LOAD else 2
    expected = BINARY_HEADER.size + arrays * n * _F32.itemsize
    if size != expected:
        what = "truncated" if size < expected else "trailing bytes"
        raise Rejected(
            Reason.MALFORMED, f"{what}: {size} bytes, n={n} flags={flags:#04x} needs {expected}"
        )
    if not 1 <= n <= MAX_SAMPLES:
        raise Rejected(Reason.SCHEMA, f"n is {n}, must be 1..{MAX_SAMPLES}", field="n")
    if t0_ns < 0:
        raise Rejected(Reason.SCHEMA, f"t0_ns is {t0_ns}, must be >= 0", field="t0_ns")
    try:
        _rate_check(rate_hz)
    except ValueError as exc:
        raise Rejected(Reason.SCHEMA, f"rate_hz: {exc}", field="rate_hz") from None
    _check_span(t0_ns, n, rate_hz)
    # One vectorised conversion; float64(f32) is exact.
    data = np.frombuffer(payload, dtype=_F32, count=arrays * n, offset=BINARY_HEADER.size)
    samples = data.astype(np.float64).reshape(arrays, n)
    return Frame(
        device=topic_device,
        seq=seq,
        t0_ns=t0_ns,
        rate_hz=rate_hz,
        force_n=samples[0],
        disp_mm=samples[1],
        ref_load_n=samples[2] if arrays == 3 else None,
    )


def _json_array(values: FloatArray) -> bytes:
    return b"[" + format_floats(values, allow_non_finite=True) + b"]"


def encode_frame_json(frame: Frame) -> bytes:
    """Encode a frame as compact JSON.

    Floats are written as the shortest text that parses back to the same float64, laid out
    as Python's repr (`osteotel.floatfmt`), so decoding gives back exactly the same values. NaN
    and inf are written as the JSON extensions `NaN` and `Infinity` (the emulator uses this to
    fake faulty devices); osteotel rejects them.

    Args:
        frame: the frame to encode.

    Returns:
        UTF-8 JSON bytes.
    """
    # The same members, order and separators that json.dumps wrote before the arrays moved to
    # the numba formatter; scalars still go through json.dumps.
    members = [
        b'"v":1',
        b'"device":' + json.dumps(frame.device).encode(),
        b'"seq":%d' % int(frame.seq),
        b'"t0_ns":%d' % int(frame.t0_ns),
        b'"rate_hz":' + json.dumps(float(frame.rate_hz)).encode(),
        b'"force_n":' + _json_array(frame.force_n),
        b'"disp_mm":' + _json_array(frame.disp_mm),
    ]
    if frame.ref_load_n is not None:
        members.append(b'"ref_load_n":' + _json_array(frame.ref_load_n))
    if frame.temp_c is not None:
        members.append(b'"temp_c":' + json.dumps(float(frame.temp_c)).encode())
    if frame.battery_pct is not None:
        members.append(b'"battery_pct":' + json.dumps(float(frame.battery_pct)).encode())
    return b"{" + b",".join(members) + b"}"


def _as_f32(name: str, values: FloatArray) -> bytes:
    finite = np.isfinite(values)
    too_big = np.abs(values, where=finite, out=np.zeros_like(values)) > _F32_MAX
    if too_big.any():
        index = int(np.argmax(too_big))
        raise ValueError(f"{name}[{index}] = {values[index]!r} does not fit in float32")
    return values.astype(_F32).tobytes()


def encode_frame_binary(frame: Frame) -> bytes:
    """Encode a frame in the binary layout; values are cast to float32.

    The layout has no room for `temp_c` and `battery_pct`: they are left out, as a binary
    device would leave them out (send a `battery` event, or use JSON, to deliver them).
    The device id is not encoded either: it travels in the topic.

    Args:
        frame: the frame to encode.

    Returns:
        The binary payload, 24 header bytes then 2 or 3 arrays of n float32.

    Raises:
        ValueError: the frame has more than 65,535 samples, or a finite value too large for
            float32 (it would turn into inf).
    """
    if frame.n > 0xFFFF:
        raise ValueError(f"binary frames hold at most 65535 samples, this one has {frame.n}")
    if math.isfinite(frame.rate_hz) and abs(frame.rate_hz) > _F32_MAX:
        raise ValueError(f"rate_hz = {frame.rate_hz!r} does not fit in float32")
    flags = 0 if frame.ref_load_n is None else FLAG_REF_LOAD
    parts = [
        BINARY_HEADER.pack(
            BINARY_MAGIC, 1, flags, frame.n, int(frame.seq), int(frame.t0_ns), frame.rate_hz
        ),
        _as_f32("force_n", frame.force_n),
        _as_f32("disp_mm", frame.disp_mm),
    ]
    if frame.ref_load_n is not None:
        parts.append(_as_f32("ref_load_n", frame.ref_load_n))
    return b"".join(parts)


# --- events and hub status ----------------------------------------------------------------------


def _check_model_finite(model: BaseModel) -> None:
    for name, value in model:
        if isinstance(value, float):
            _check_finite_scalar(name, value)


def decode_event(payload: bytes, *, topic_device: str) -> Event:
    """Decode an event payload.

    Args:
        payload: the MQTT payload, a JSON object.
        topic_device: the device id from the topic.

    Returns:
        The event model picked by its `type`.

    Raises:
        Rejected: `malformed`, `schema`, `topic_mismatch` or `non_finite`.
    """
    _require_json_object(payload)
    try:
        event = _EVENT_ADAPTER.validate_json(payload)
    except ValidationError as exc:
        raise _from_validation_error(exc, tagged=True) from None
    _check_topic_device(event.device, topic_device)
    _check_model_finite(event)
    return event


def encode_event(event: Event) -> bytes:
    """Encode an event as compact JSON (floats round-trip exactly)."""
    return event.model_dump_json().encode()


def decode_status(payload: bytes, *, topic_hub: str) -> HubStatus:
    """Decode a hub status payload.

    Args:
        payload: the MQTT payload, a JSON object.
        topic_hub: the hub id from the topic.

    Returns:
        The hub status.

    Raises:
        Rejected: `malformed`, `schema` or `topic_mismatch`.
    """
    _require_json_object(payload)
    try:
        status = HubStatus.model_validate_json(payload)
    except ValidationError as exc:
        raise _from_validation_error(exc, tagged=False) from None
    if status.hub != topic_hub:
        raise Rejected(
            Reason.TOPIC_MISMATCH,
            f"payload hub {_short(status.hub)} on topic of hub {_short(topic_hub)}",
            field="hub",
        )
    return status


def encode_status(status: HubStatus) -> bytes:
    """Encode a hub status as compact JSON."""
    return status.model_dump_json().encode()
