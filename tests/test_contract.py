"""Topics, frames and messages of the wire contract v1."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from devices.contract import (
    SUBSCRIPTIONS,
    Battery,
    DistractionStep,
    FloatArray,
    Frame,
    HubStatus,
    MessageKind,
    Reason,
    Rejected,
    Topic,
    events_topic,
    is_valid_id,
    parse_topic,
    status_topic,
    telemetry_topic,
)

T0_NS = 1_764_000_000_000_000_000


def _frame(n: int = 3, rate_hz: float = 100.0, t0_ns: int = T0_NS) -> Frame:
    return Frame(
        device="DX-0001",
        seq=7,
        t0_ns=t0_ns,
        rate_hz=rate_hz,
        force_n=np.arange(n, dtype=np.float64),
        disp_mm=np.ones(n),
    )


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("osteotel/v1/HUB-A/DX-0001/telemetry", Topic(MessageKind.TELEMETRY, "HUB-A", "DX-0001")),
        ("osteotel/v1/HUB-A/DX-0001/events", Topic(MessageKind.EVENTS, "HUB-A", "DX-0001")),
        ("osteotel/v1/HUB-A/status", Topic(MessageKind.STATUS, "HUB-A", None)),
        ("osteotel/v1/h_1/d-2/telemetry", Topic(MessageKind.TELEMETRY, "h_1", "d-2")),
    ],
    ids=["telemetry", "events", "status", "underscore-and-lowercase"],
)
def test_parse_topic_splits_valid_topics(topic: str, expected: Topic) -> None:
    """A v1 topic parses into its kind, hub and device."""
    assert parse_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "osteotel/v2/HUB-A/DX-0001/telemetry",
        "osteotel/v1/HUB-A/DX-0001/telemetr",
        "osteotel/v1/HUB-A/DX-0001/status",
        "osteotel/v1/HUB-A/DX-0001/telemetry/extra",
        "osteotel/v1/HUB-A/telemetry",
        "osteotel/v1/HUB A/DX-0001/telemetry",
        "osteotel/v1/HUB-A/DX.0001/events",
        "osteotel/v1//DX-0001/telemetry",
        "osteotel/v1/" + "H" * 65 + "/status",
        "osteotel/v1/HUB-A/DX-0001/telemetry\n",
        "/osteotel/v1/HUB-A/status",
        "",
    ],
    ids=[
        "wrong-version",
        "wrong-kind",
        "status-under-device",
        "extra-level",
        "missing-device",
        "space-in-hub",
        "dot-in-device",
        "empty-hub",
        "hub-too-long",
        "trailing-newline",
        "leading-slash",
        "empty",
    ],
)
def test_parse_topic_rejects_bad_shapes_as_schema(topic: str) -> None:
    """A topic that is not one of the three v1 shapes is rejected as schema on field topic."""
    with pytest.raises(Rejected) as caught:
        parse_topic(topic)
    assert caught.value.reason is Reason.SCHEMA
    assert caught.value.field == "topic"


def test_topic_builders_round_trip_through_parse_topic() -> None:
    """Built topics parse back to the same hub and device."""
    assert parse_topic(telemetry_topic("HUB-A", "DX-1")) == Topic(
        MessageKind.TELEMETRY, "HUB-A", "DX-1"
    )
    assert parse_topic(events_topic("HUB-A", "DX-1")) == Topic(MessageKind.EVENTS, "HUB-A", "DX-1")
    assert parse_topic(status_topic("HUB-A")) == Topic(MessageKind.STATUS, "HUB-A", None)


@pytest.mark.parametrize(
    "bad_id", ["", "a/b", "+", "#", "x" * 65], ids=["empty", "slash", "plus", "hash", "long"]
)
def test_topic_builders_refuse_invalid_ids(bad_id: str) -> None:
    """Building a topic from an invalid id raises ValueError instead of publishing nowhere."""
    with pytest.raises(ValueError, match="does not match"):
        telemetry_topic("HUB-A", bad_id)
    with pytest.raises(ValueError, match="does not match"):
        status_topic(bad_id)


def test_subscriptions_cover_the_three_kinds() -> None:
    """The subscriptions are one wildcard filter per message kind."""
    assert SUBSCRIPTIONS == (
        "osteotel/v1/+/+/telemetry",
        "osteotel/v1/+/+/events",
        "osteotel/v1/+/status",
    )


@pytest.mark.parametrize(
    ("value", "valid"),
    [("DX-0001", True), ("a_B-9", True), ("x" * 64, True), ("x" * 65, False), ("é", False)],
    ids=["typical", "mixed", "64-long", "65-long", "non-ascii"],
)
def test_is_valid_id_matches_the_whole_pattern(value: str, *, valid: bool) -> None:
    """Ids are 1 to 64 ASCII letters, digits, underscores or dashes."""
    assert is_valid_id(value) is valid


def test_rejected_carries_reason_field_and_index() -> None:
    """A rejection carries its data and prints as `reason: detail`."""
    error = Rejected(Reason.NON_FINITE, "force_n[17] is nan", field="force_n", index=17)
    assert (error.reason, error.field, error.index) == (Reason.NON_FINITE, "force_n", 17)
    assert str(error) == "non_finite: force_n[17] is nan"


@given(
    n=st.integers(1, 10_000),
    rate_hz=st.floats(min_value=1e-3, max_value=10_000.0),
    t0_ns=st.integers(0, 2**62),
)
def test_timestamps_follow_the_contract_formula(n: int, rate_hz: float, t0_ns: int) -> None:
    """Sample i is at t0_ns + round(i * 1e9 / rate_hz), exactly as Python computes it."""
    frame = _frame(n, rate_hz, t0_ns)
    expected = [t0_ns + round(i * 1e9 / rate_hz) for i in range(n)]
    stamps = frame.timestamps_ns()
    assert stamps.dtype == np.int64
    assert stamps.tolist() == expected
    assert frame.t_last_ns == expected[-1]


def test_timestamps_round_half_to_even() -> None:
    """An offset of exactly half a nanosecond rounds to the even neighbour."""
    # 1e9 / 4e8 = 2.5 ns per sample: offsets 0, 2.5, 5, 7.5 round to 0, 2, 5, 8.
    frame = _frame(4, 4e8, 0)
    assert frame.timestamps_ns().tolist() == [0, 2, 5, 8]


def test_frame_converts_arrays_to_float64() -> None:
    """Lists and integer arrays become 1-D float64 arrays."""
    # A list of ints on purpose: the conversion to float64 is what is tested.
    frame = Frame("DX-1", 0, 0, 10.0, [1, 2], np.array([3, 4], dtype=np.int32))  # type: ignore[arg-type]
    assert frame.force_n.dtype == np.float64
    assert frame.disp_mm.tolist() == [3.0, 4.0]
    assert frame.n == 2


@pytest.mark.parametrize(
    ("force_n", "disp_mm", "ref_load_n"),
    [
        (np.array([1.0, 2.0], dtype=np.float64), np.array([1.0], dtype=np.float64), None),
        (
            np.array([1.0], dtype=np.float64),
            np.array([1.0], dtype=np.float64),
            np.array([1.0, 2.0], dtype=np.float64),
        ),
        (np.array([[1.0]], dtype=np.float64), np.array([[1.0]], dtype=np.float64), None),
    ],
    ids=["disp-short", "ref-long", "two-dimensional"],
)
def test_frame_refuses_mismatched_arrays(
    force_n: FloatArray, disp_mm: FloatArray, ref_load_n: FloatArray | None
) -> None:
    """A frame whose arrays differ in length or are not 1-D cannot be built."""
    with pytest.raises(ValueError, match=r"length|1-D"):
        Frame("DX-1", 0, 0, 10.0, force_n, disp_mm, ref_load_n)


def test_frames_compare_by_value_including_nan() -> None:
    """Frames with the same values are equal, NaN included; a different value breaks it."""
    a = Frame(
        "DX-1",
        0,
        0,
        10.0,
        np.array([1.0, float("nan")], dtype=np.float64),
        np.array([1.0, 2.0], dtype=np.float64),
        temp_c=float("nan"),
    )
    b = Frame(
        "DX-1",
        0,
        0,
        10.0,
        np.array([1.0, float("nan")], dtype=np.float64),
        np.array([1.0, 2.0], dtype=np.float64),
        temp_c=float("nan"),
    )
    c = Frame(
        "DX-1",
        0,
        0,
        10.0,
        np.array([1.0, float("nan")], dtype=np.float64),
        np.array([1.0, 2.5], dtype=np.float64),
        temp_c=float("nan"),
    )
    assert a == b
    assert a != c
    assert a != Frame(
        "DX-1",
        0,
        0,
        10.0,
        np.array([1.0, float("nan")], dtype=np.float64),
        np.array([1.0, 2.0], dtype=np.float64),
    )


def test_event_models_fill_version_and_type() -> None:
    """Events built in Python get v=1 and their type tag."""
    step = DistractionStep(device="DX-1", t_ns=5, delta_mm=0.25, source="motor")
    assert (step.v, step.type) == (1, "distraction_step")


@pytest.mark.parametrize(
    "fields",
    [
        {"device": "DX-1", "t_ns": 5, "pct": 101.0},
        {"device": "DX-1", "t_ns": -1, "pct": 50.0},
        {"device": "DX 1", "t_ns": 5, "pct": 50.0},
        {"device": "DX-1", "t_ns": 5, "pct": "50"},
        {"device": "DX-1", "t_ns": 5, "pct": 50.0, "volts": 3.7},
    ],
    ids=["pct-above-100", "negative-time", "bad-device-id", "string-number", "unknown-key"],
)
def test_event_models_validate_fields(fields: dict[str, object]) -> None:
    """Event models refuse out-of-bounds, mistyped and unknown fields."""
    with pytest.raises(ValidationError):
        Battery.model_validate(fields)


def test_hub_status_is_frozen() -> None:
    """A hub status cannot be changed after it is built."""
    status = HubStatus(hub="HUB-A", online=True, t_ns=1)
    with pytest.raises(ValidationError):
        status.online = False  # type: ignore[misc]
    assert status.online is True
