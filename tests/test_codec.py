"""Encoding and decoding of telemetry frames, events and hub status."""

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from devices.codec import (
    BINARY_HEADER,
    decode_event,
    decode_frame,
    decode_status,
    encode_event,
    encode_frame_binary,
    encode_frame_json,
    encode_status,
)
from devices.contract import (
    MAX_SAMPLES,
    Battery,
    DistractionStep,
    Event,
    Fault,
    Frame,
    HubStatus,
    LoadTestEnd,
    LoadTestStart,
    Probe,
    Reason,
    Reboot,
    Rejected,
)

DEVICE = "DX-0001"
T0_NS = 1_764_000_000_000_000_000

# Most examples are small so the suite stays quick; some reach the 10,000-sample limit.
sample_counts = st.one_of(st.integers(1, 64), st.integers(1, MAX_SAMPLES))
finite_floats = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def frames(draw: st.DrawFn, *, elements: st.SearchStrategy[float], extras: bool) -> Frame:
    n = draw(sample_counts)

    def array() -> np.ndarray:
        return draw(hnp.arrays(np.float64, n, elements=elements))

    with_ref = draw(st.booleans())
    return Frame(
        device=DEVICE,
        seq=draw(st.integers(0, 2**32 - 1)),
        t0_ns=draw(st.integers(0, 2**62)),
        rate_hz=draw(st.floats(min_value=2**-10, max_value=10_000.0)),
        force_n=array(),
        disp_mm=array(),
        ref_load_n=array() if with_ref else None,
        temp_c=draw(st.none() | finite_floats) if extras else None,
        battery_pct=draw(st.none() | st.floats(0.0, 100.0)) if extras else None,
    )


def _payload(**changes: object) -> bytes:
    document: dict[str, object] = {
        "v": 1,
        "device": DEVICE,
        "seq": 42,
        "t0_ns": T0_NS,
        "rate_hz": 100.0,
        "force_n": [10.0, 11.0, 12.0],
        "disp_mm": [1.0, 1.0, 1.0],
    }
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def _binary(n: int = 3, *, version: int = 1, flags: int = 0, rate_hz: float = 100.0) -> bytes:
    arrays = 3 if flags & 1 else 2
    header = BINARY_HEADER.pack(b"OTF1", version, flags, n, 42, T0_NS, rate_hz)
    return header + np.arange(arrays * n, dtype="<f4").tobytes()


# --- round trips --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(frame=frames(elements=finite_floats, extras=True))
def test_json_round_trip_is_exact(frame: Frame) -> None:
    """A frame encoded as JSON decodes to exactly the same values."""
    decoded, encoding = decode_frame(encode_frame_json(frame), topic_device=DEVICE)
    assert encoding == "json"
    assert decoded == frame


@settings(max_examples=60, deadline=None)
@given(frame=frames(elements=st.floats(-3e38, 3e38), extras=False))
def test_binary_round_trip_gives_float32_values(frame: Frame) -> None:
    """A frame encoded as binary decodes to its values cast to float32, as float64."""
    decoded, encoding = decode_frame(encode_frame_binary(frame), topic_device=DEVICE)
    assert encoding == "binary"
    assert decoded.force_n.dtype == np.float64
    assert (decoded.seq, decoded.t0_ns, decoded.n) == (frame.seq, frame.t0_ns, frame.n)
    assert decoded.rate_hz == float(np.float32(frame.rate_hz))
    np.testing.assert_array_equal(decoded.force_n, frame.force_n.astype(np.float32))
    np.testing.assert_array_equal(decoded.disp_mm, frame.disp_mm.astype(np.float32))
    if frame.ref_load_n is None:
        assert decoded.ref_load_n is None
    else:
        np.testing.assert_array_equal(decoded.ref_load_n, frame.ref_load_n.astype(np.float32))


def test_json_accepts_integers_for_floats_and_leading_whitespace() -> None:
    """Integers are taken where floats are expected, after any JSON whitespace."""
    frame, _ = decode_frame(
        b" \t\r\n" + _payload(rate_hz=100, force_n=[1, 2, 3]), topic_device=DEVICE
    )
    assert frame.rate_hz == 100.0
    assert frame.force_n.tolist() == [1.0, 2.0, 3.0]


def test_binary_frame_takes_its_device_from_the_topic() -> None:
    """A binary frame has no device field: its id is the topic's."""
    frame, _ = decode_frame(_binary(), topic_device="DX-0042")
    assert frame.device == "DX-0042"


EVENTS: list[Event] = [
    DistractionStep(device=DEVICE, t_ns=T0_NS, delta_mm=0.25, source="motor"),
    DistractionStep(device=DEVICE, t_ns=T0_NS, delta_mm=0.1 + 0.2, source="manual"),
    Probe(device=DEVICE, t_ns=T0_NS, delta_mm=0.05),
    LoadTestStart(device=DEVICE, t_ns=T0_NS),
    LoadTestEnd(device=DEVICE, t_ns=T0_NS),
    Battery(device=DEVICE, t_ns=T0_NS, pct=87.5),
    Fault(device=DEVICE, t_ns=T0_NS, code="E12", detail="strain gauge open circuit"),
    Reboot(device=DEVICE, t_ns=0),
]


@pytest.mark.parametrize(
    "event",
    EVENTS,
    ids=[
        "step-motor",
        "step-manual",
        "probe",
        "load-start",
        "load-end",
        "battery",
        "fault",
        "reboot",
    ],
)
def test_event_round_trip_is_exact(event: Event) -> None:
    """Every event type encodes and decodes to an equal model."""
    decoded = decode_event(encode_event(event), topic_device=DEVICE)
    assert decoded == event
    assert type(decoded) is type(event)


def test_status_round_trip_is_exact() -> None:
    """A hub status encodes and decodes to an equal model."""
    status = HubStatus(hub="HUB-A", online=False, t_ns=T0_NS)
    assert decode_status(encode_status(status), topic_hub="HUB-A") == status


# --- rejections ---------------------------------------------------------------------------------

_NESTED = b'{"v": 1, "force_n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

FRAME_REJECTIONS = [
    (b"", Reason.MALFORMED, None, None),
    (b"[1, 2]", Reason.MALFORMED, None, None),
    (b"\xef\xbb\xbf" + _payload(), Reason.MALFORMED, None, None),
    (b'{"v": 1,', Reason.MALFORMED, None, None),
    (_payload() + b" x", Reason.MALFORMED, None, None),
    (b'{"device": "\xff"}', Reason.MALFORMED, None, None),
    (_NESTED, Reason.MALFORMED, None, None),
    (b"OTF", Reason.MALFORMED, None, None),
    (_binary()[:23], Reason.MALFORMED, None, None),
    (_binary() + b"\x00", Reason.MALFORMED, None, None),
    (_payload(v=2), Reason.SCHEMA, "v", None),
    (_payload(v=True), Reason.SCHEMA, "v", None),
    (_payload(v=...), Reason.SCHEMA, "v", None),
    (_payload(seq=-1), Reason.SCHEMA, "seq", None),
    (_payload(seq=2**32), Reason.SCHEMA, "seq", None),
    (_payload(seq=1.0), Reason.SCHEMA, "seq", None),
    (_payload(t0_ns=2**63), Reason.SCHEMA, "t0_ns", None),
    (_payload(t0_ns="1764000000000000000"), Reason.SCHEMA, "t0_ns", None),
    (_payload(rate_hz=0.0), Reason.SCHEMA, "rate_hz", None),
    (_payload(rate_hz=10_000.5), Reason.SCHEMA, "rate_hz", None),
    (_payload(rate_hz="100"), Reason.SCHEMA, "rate_hz", None),
    (_payload(rate_hz=1e-300), Reason.SCHEMA, "t0_ns", None),
    (_payload(force_n=[1.0, "2", 3.0]), Reason.SCHEMA, "force_n", 1),
    (_payload(force_n=[]), Reason.SCHEMA, "force_n", None),
    (_payload(force_n=[0.0] * 10_001, disp_mm=[0.0] * 10_001), Reason.SCHEMA, "force_n", None),
    (_payload(disp_mm=[1.0, 2.0]), Reason.SCHEMA, "disp_mm", None),
    (_payload(ref_load_n=[1.0]), Reason.SCHEMA, "ref_load_n", None),
    (_payload(battery_pct=100.5), Reason.SCHEMA, "battery_pct", None),
    (_payload(forc_n=[1.0]), Reason.SCHEMA, "forc_n", None),
    (_payload(device="DX 0001"), Reason.SCHEMA, "device", None),
    (_binary(version=2), Reason.SCHEMA, "v", None),
    (_binary(flags=0x02), Reason.SCHEMA, "flags", None),
    (_binary(0), Reason.SCHEMA, "n", None),
    (_binary(10_001), Reason.SCHEMA, "n", None),
    (_binary(rate_hz=-1.0), Reason.SCHEMA, "rate_hz", None),
    (_payload(device="DX-0002"), Reason.TOPIC_MISMATCH, "device", None),
    (_payload(force_n=[1.0, 2.0, float("nan")]), Reason.NON_FINITE, "force_n", 2),
    (_payload(disp_mm=[float("-inf"), 1.0, 1.0]), Reason.NON_FINITE, "disp_mm", 0),
    (_payload().replace(b"[1.0, 1.0, 1.0]", b"[1.0, 1e400, 1.0]"), Reason.NON_FINITE, "disp_mm", 1),
    (_payload(rate_hz=float("nan")), Reason.NON_FINITE, "rate_hz", None),
    (_payload(temp_c=float("inf")), Reason.NON_FINITE, "temp_c", None),
    (_binary(rate_hz=float("inf")), Reason.NON_FINITE, "rate_hz", None),
    (
        _binary()[:24] + np.array([0, np.nan, 0, 0, 0, 0], "<f4").tobytes(),
        Reason.NON_FINITE,
        "force_n",
        1,
    ),
]


@pytest.mark.parametrize(
    ("payload", "reason", "field", "index"),
    FRAME_REJECTIONS,
    ids=[
        "empty",
        "json-array",
        "utf8-bom",
        "unterminated",
        "trailing-garbage",
        "invalid-utf8",
        "deeply-nested",
        "short-magic",
        "short-header",
        "binary-trailing-byte",
        "version-2",
        "version-true",
        "version-missing",
        "seq-negative",
        "seq-too-big",
        "seq-float",
        "t0-too-big",
        "t0-string",
        "rate-zero",
        "rate-too-high",
        "rate-string",
        "last-sample-beyond-int64",
        "sample-string",
        "no-samples",
        "too-many-samples",
        "unequal-lengths",
        "ref-load-length",
        "battery-above-100",
        "unknown-key",
        "bad-device-id",
        "binary-version-2",
        "binary-reserved-flag",
        "binary-n-zero",
        "binary-n-too-big",
        "binary-rate-negative",
        "other-device",
        "nan-sample",
        "minus-inf-sample",
        "overflowing-literal",
        "nan-rate",
        "inf-temperature",
        "binary-inf-rate",
        "binary-nan-sample",
    ],
)
def test_decode_frame_rejects_with_reason_field_and_index(
    payload: bytes, reason: Reason, field: str | None, index: int | None
) -> None:
    """A bad telemetry payload is rejected with the expected reason, field and index."""
    with pytest.raises(Rejected) as caught:
        decode_frame(payload, topic_device=DEVICE)
    assert (caught.value.reason, caught.value.field, caught.value.index) == (reason, field, index)


def test_truncated_binary_is_malformed_at_every_cut() -> None:
    """A binary frame cut at any byte, or with ref_load flagged but missing, is malformed."""
    whole = _binary(4, flags=1)
    for cut in range(len(whole)):
        with pytest.raises(Rejected) as caught:
            decode_frame(whole[:cut], topic_device=DEVICE)
        assert caught.value.reason is Reason.MALFORMED, cut
    assert decode_frame(whole, topic_device=DEVICE)[0].ref_load_n is not None


def test_schema_detail_truncates_echoed_input() -> None:
    """A rejection echoes at most about 60 characters of the offending value."""
    with pytest.raises(Rejected) as caught:
        decode_frame(_payload(device="x" * 500), topic_device=DEVICE)
    assert caught.value.reason is Reason.SCHEMA
    assert len(caught.value.detail) < 200


def test_unknown_key_is_named_before_a_missing_one() -> None:
    """A misspelt key is reported as the unknown key, not as the missing one."""
    with pytest.raises(Rejected) as caught:
        decode_frame(_payload(disp_mm=..., dsp_mm=[1.0, 1.0, 1.0]), topic_device=DEVICE)
    assert caught.value.field == "dsp_mm"


def _event(**changes: object) -> bytes:
    document: dict[str, object] = {
        "v": 1,
        "device": DEVICE,
        "t_ns": T0_NS,
        "type": "battery",
        "pct": 50.0,
    }
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("payload", "reason", "field"),
    [
        (b"battery 50", Reason.MALFORMED, None),
        (b'{"type": ', Reason.MALFORMED, None),
        (_event(type="batery"), Reason.SCHEMA, "type"),
        (_event(type=...), Reason.SCHEMA, "type"),
        (_event(pct=150.0), Reason.SCHEMA, "pct"),
        (_event(pct="50"), Reason.SCHEMA, "pct"),
        (_event(t_ns=-5), Reason.SCHEMA, "t_ns"),
        (_event(v=2), Reason.SCHEMA, "v"),
        (
            _event(type="distraction_step", pct=..., delta_mm=0.25, source="robot"),
            Reason.SCHEMA,
            "source",
        ),
        (_event(type="reboot", pct=...), None, None),
        (_event(type="fault", pct=..., code="E1"), Reason.SCHEMA, "detail"),
        (_event(device="DX-0009"), Reason.TOPIC_MISMATCH, "device"),
        (_event(pct=float("nan")), Reason.NON_FINITE, "pct"),
        (_event(type="probe", pct=..., delta_mm=float("inf")), Reason.NON_FINITE, "delta_mm"),
    ],
    ids=[
        "not-json",
        "unterminated",
        "unknown-type",
        "missing-type",
        "pct-above-100",
        "pct-string",
        "negative-time",
        "version-2",
        "bad-source",
        "valid-reboot",
        "fault-without-detail",
        "other-device",
        "nan-pct",
        "inf-delta",
    ],
)
def test_decode_event_rejects_with_reason_and_field(
    payload: bytes, reason: Reason | None, field: str | None
) -> None:
    """A bad event payload is rejected with the expected reason and field (None: accepted)."""
    if reason is None:
        assert decode_event(payload, topic_device=DEVICE).type == "reboot"
        return
    with pytest.raises(Rejected) as caught:
        decode_event(payload, topic_device=DEVICE)
    assert (caught.value.reason, caught.value.field) == (reason, field)


@pytest.mark.parametrize(
    ("payload", "reason", "field"),
    [
        (b"online", Reason.MALFORMED, None),
        (b'{"v": 1, "hub": "HUB-A", "online": "yes", "t_ns": 1}', Reason.SCHEMA, "online"),
        (b'{"v": 1, "hub": "HUB-A", "online": true}', Reason.SCHEMA, "t_ns"),
        (b'{"v": 1, "hub": "HUB-B", "online": true, "t_ns": 1}', Reason.TOPIC_MISMATCH, "hub"),
    ],
    ids=["not-json", "online-string", "missing-time", "other-hub"],
)
def test_decode_status_rejects_with_reason_and_field(
    payload: bytes, reason: Reason, field: str | None
) -> None:
    """A bad hub status payload is rejected with the expected reason and field."""
    with pytest.raises(Rejected) as caught:
        decode_status(payload, topic_hub="HUB-A")
    assert (caught.value.reason, caught.value.field) == (reason, field)


# --- encoder limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            Frame(
                DEVICE,
                0,
                0,
                10.0,
                np.array([1e39], dtype=np.float64),
                np.array([1.0], dtype=np.float64),
            ),
            "float32",
        ),
        (Frame(DEVICE, 0, 0, 10.0, np.zeros(70_000), np.zeros(70_000)), "65535"),
    ],
    ids=["beyond-float32", "too-many-samples"],
)
def test_encode_frame_binary_refuses_what_the_layout_cannot_hold(
    frame: Frame, message: str
) -> None:
    """The binary encoder raises instead of dropping or corrupting a value."""
    with pytest.raises(ValueError, match=message):
        encode_frame_binary(frame)


def test_encode_frame_binary_leaves_out_what_the_layout_cannot_hold() -> None:
    """Temperature and battery are not in the binary layout, so a binary frame arrives without."""
    frame = Frame(
        DEVICE,
        0,
        T0_NS,
        10.0,
        np.array([1.0], dtype=np.float64),
        np.array([1.0], dtype=np.float64),
        temp_c=36.5,
        battery_pct=80.0,
    )
    decoded, _ = decode_frame(encode_frame_binary(frame), topic_device=DEVICE)
    assert (decoded.temp_c, decoded.battery_pct) == (None, None)
    assert decoded.force_n.tolist() == [1.0]


def test_encode_frame_binary_layout_matches_the_contract() -> None:
    """The binary header is `<4sBBHIqf` and the arrays follow as little-endian f32."""
    frame = Frame(
        DEVICE,
        9,
        T0_NS,
        50.0,
        np.array([1.5, -2.0], dtype=np.float64),
        np.array([0.25, 0.5], dtype=np.float64),
        ref_load_n=np.array([100.0, 200.0], dtype=np.float64),
    )
    payload = encode_frame_binary(frame)
    assert struct.unpack_from("<4sBBHIqf", payload) == (b"OTF1", 1, 1, 2, 9, T0_NS, 50.0)
    assert np.frombuffer(payload, "<f4", offset=24).tolist() == [1.5, -2.0, 0.25, 0.5, 100.0, 200.0]


def test_encode_frame_json_writes_non_finite_values_for_fault_simulation() -> None:
    """NaN is encoded as the JSON extension NaN, which the decoder then rejects."""
    frame = Frame(
        DEVICE,
        0,
        T0_NS,
        10.0,
        np.array([float("nan")], dtype=np.float64),
        np.array([1.0], dtype=np.float64),
    )
    payload = encode_frame_json(frame)
    assert b"NaN" in payload
    with pytest.raises(Rejected) as caught:
        decode_frame(payload, topic_device=DEVICE)
    assert caught.value.reason is Reason.NON_FINITE
