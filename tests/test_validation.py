"""Accepting and rejecting MQTT messages against the contract, the registry and the clock."""

import json
from pathlib import Path

import numpy as np
import pytest

from devices.codec import encode_frame_binary, encode_frame_json
from devices.contract import Battery, Frame, HubStatus, MessageKind, Reason, Rejected
from devices.registry import Registry
from devices.validation import Accepted, Limits, accept, accept_many

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "registry.example.toml"
NOW_NS = 1_764_000_000_000_000_000
LIMITS = Limits()
TELEMETRY = "osteotel/v1/HUB-A/DX-0001/telemetry"
EVENTS = "osteotel/v1/HUB-A/DX-0001/events"
STATUS = "osteotel/v1/HUB-A/status"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(EXAMPLE)


def _frame(**changes: object) -> bytes:
    document: dict[str, object] = {
        "v": 1,
        "device": "DX-0001",
        "seq": 1,
        "t0_ns": NOW_NS - 1_000_000_000,
        "rate_hz": 100.0,
        "force_n": [10.0, 20.0, 30.0],
        "disp_mm": [1.0, 1.0, 1.0],
    }
    document.update(changes)
    return json.dumps(document).encode()


def _event(**changes: object) -> bytes:
    document: dict[str, object] = {
        "v": 1,
        "device": "DX-0001",
        "t_ns": NOW_NS,
        "type": "battery",
        "pct": 50.0,
    }
    document.update(changes)
    return json.dumps(document).encode()


def _status(**changes: object) -> bytes:
    document: dict[str, object] = {"v": 1, "hub": "HUB-A", "online": True, "t_ns": NOW_NS}
    document.update(changes)
    return json.dumps(document).encode()


REJECTIONS = [
    (TELEMETRY, b"{" + b" " * LIMITS.max_payload_bytes + b"}", (Reason.OVERSIZE, None, None)),
    ("osteotel/v1/HUB-A/DX-0001/telemetry/x", _frame(), (Reason.SCHEMA, "topic", None)),
    ("osteotel/v1/HUB-Z/DX-0001/telemetry", _frame(), (Reason.UNKNOWN_HUB, "hub", None)),
    ("osteotel/v1/HUB-Z/status", _status(hub="HUB-Z"), (Reason.UNKNOWN_HUB, "hub", None)),
    ("osteotel/v1/HUB-A/DX-9999/telemetry", _frame(), (Reason.UNKNOWN_DEVICE, "device", None)),
    ("osteotel/v1/HUB-A/DX-9999/events", _event(), (Reason.UNKNOWN_DEVICE, "device", None)),
    ("osteotel/v1/HUB-A/DX-0003/telemetry", _frame(), (Reason.HUB_MISMATCH, "hub", None)),
    (TELEMETRY, b"not json", (Reason.MALFORMED, None, None)),
    (EVENTS, b"[]", (Reason.MALFORMED, None, None)),
    (STATUS, b"", (Reason.MALFORMED, None, None)),
    (TELEMETRY, _frame(seq=-1), (Reason.SCHEMA, "seq", None)),
    (EVENTS, _event(pct=-1.0), (Reason.SCHEMA, "pct", None)),
    (STATUS, _status(online=1), (Reason.SCHEMA, "online", None)),
    (TELEMETRY, _frame(device="DX-0002"), (Reason.TOPIC_MISMATCH, "device", None)),
    (EVENTS, _event(device="DX-0002"), (Reason.TOPIC_MISMATCH, "device", None)),
    (STATUS, _status(hub="HUB-B"), (Reason.TOPIC_MISMATCH, "hub", None)),
    (TELEMETRY, _frame(force_n=[1.0, float("nan"), 2.0]), (Reason.NON_FINITE, "force_n", 1)),
    (TELEMETRY, _frame(force_n=[1.0, 2.0, 2000.5]), (Reason.OUT_OF_RANGE, "force_n", 2)),
    (TELEMETRY, _frame(disp_mm=[-5.5, 1.0, 1.0]), (Reason.OUT_OF_RANGE, "disp_mm", 0)),
    (TELEMETRY, _frame(ref_load_n=[0.0, -1.0, 0.0]), (Reason.OUT_OF_RANGE, "ref_load_n", 1)),
    (TELEMETRY, _frame(t0_ns=NOW_NS + 5_000_000_000), (Reason.FUTURE_TIMESTAMP, "t0_ns", None)),
    (EVENTS, _event(t_ns=NOW_NS + 5_000_000_001), (Reason.FUTURE_TIMESTAMP, "t_ns", None)),
    (STATUS, _status(t_ns=NOW_NS + 60_000_000_000), (Reason.FUTURE_TIMESTAMP, "t_ns", None)),
]


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    REJECTIONS,
    ids=[
        "oversize",
        "topic-shape",
        "unknown-hub",
        "unknown-hub-status",
        "unknown-device",
        "unknown-device-event",
        "device-of-other-hub",
        "malformed-frame",
        "malformed-event",
        "malformed-status",
        "schema-frame",
        "schema-event",
        "schema-status",
        "topic-mismatch-frame",
        "topic-mismatch-event",
        "topic-mismatch-status",
        "non-finite",
        "force-above-range",
        "disp-below-range",
        "ref-load-below-range",
        "future-last-sample",
        "future-event",
        "future-status",
    ],
)
def test_accept_rejects_each_rule_with_reason_field_and_index(
    registry: Registry,
    topic: str,
    payload: bytes,
    expected: tuple[Reason, str | None, int | None],
) -> None:
    """Each broken rule is reported with its reason, field and first bad index."""
    with pytest.raises(Rejected) as caught:
        accept(topic, payload, registry=registry, now_ns=NOW_NS, limits=LIMITS)
    assert (caught.value.reason, caught.value.field, caught.value.index) == expected


ORDER = [
    # Each payload breaks the expected rule and every rule after it; the first one wins.
    (
        "osteotel/v1/HUB-Z/DX-0009/telemetry/",
        b"x" * 100,
        Limits(max_payload_bytes=10),
        Reason.OVERSIZE,
    ),
    ("osteotel/v1/HUB-Z/DX-0009/telemetry/", b"x", LIMITS, Reason.SCHEMA),
    ("osteotel/v1/HUB-Z/DX-0009/telemetry", b"x", LIMITS, Reason.UNKNOWN_HUB),
    ("osteotel/v1/HUB-A/DX-0009/telemetry", b"x", LIMITS, Reason.UNKNOWN_DEVICE),
    ("osteotel/v1/HUB-A/DX-0003/telemetry", b"x", LIMITS, Reason.HUB_MISMATCH),
    (TELEMETRY, b"x", LIMITS, Reason.MALFORMED),
    (
        TELEMETRY,
        _frame(seq=-1, device="DX-0002", force_n=[float("nan"), 1e9, 0.0], t0_ns=NOW_NS * 2),
        LIMITS,
        Reason.SCHEMA,
    ),
    (
        TELEMETRY,
        _frame(device="DX-0002", force_n=[float("nan"), 1e9, 0.0], t0_ns=NOW_NS * 2),
        LIMITS,
        Reason.TOPIC_MISMATCH,
    ),
    (
        TELEMETRY,
        _frame(force_n=[float("nan"), 1e9, 0.0], t0_ns=NOW_NS * 2),
        LIMITS,
        Reason.NON_FINITE,
    ),
    (TELEMETRY, _frame(force_n=[0.0, 1e9, 0.0], t0_ns=NOW_NS * 2), LIMITS, Reason.OUT_OF_RANGE),
    (TELEMETRY, _frame(t0_ns=NOW_NS * 2), LIMITS, Reason.FUTURE_TIMESTAMP),
]


@pytest.mark.parametrize(
    ("topic", "payload", "limits", "reason"),
    ORDER,
    ids=[str(reason) for _, _, _, reason in ORDER],
)
def test_first_broken_rule_wins(
    registry: Registry, topic: str, payload: bytes, limits: Limits, reason: Reason
) -> None:
    """Rules are checked in the documented order and the first broken one is reported."""
    with pytest.raises(Rejected) as caught:
        accept(topic, payload, registry=registry, now_ns=NOW_NS, limits=limits)
    assert caught.value.reason is reason


def test_accept_returns_a_json_frame(registry: Registry) -> None:
    """A valid JSON frame is accepted with its hub, topic and encoding."""
    accepted = accept(TELEMETRY, _frame(), registry=registry, now_ns=NOW_NS, limits=LIMITS)
    assert accepted.hub == "HUB-A"
    assert accepted.topic.kind is MessageKind.TELEMETRY
    assert accepted.encoding == "json"
    assert isinstance(accepted.message, Frame)
    assert accepted.message.force_n.tolist() == [10.0, 20.0, 30.0]


def test_accept_returns_a_binary_frame(registry: Registry) -> None:
    """A valid binary frame is accepted and takes the device from the topic."""
    frame = Frame(
        "DX-0001",
        3,
        NOW_NS,
        100.0,
        np.array([1.0, 2.0], dtype=np.float64),
        np.array([0.5, 0.75], dtype=np.float64),
    )
    accepted = accept(
        TELEMETRY, encode_frame_binary(frame), registry=registry, now_ns=NOW_NS, limits=LIMITS
    )
    assert accepted.encoding == "binary"
    assert accepted.message == frame


def test_accept_returns_events_and_status(registry: Registry) -> None:
    """Valid events and hub status are accepted with no frame encoding."""
    event = accept(EVENTS, _event(), registry=registry, now_ns=NOW_NS, limits=LIMITS)
    status = accept(STATUS, _status(), registry=registry, now_ns=NOW_NS, limits=LIMITS)
    assert isinstance(event.message, Battery)
    assert isinstance(status.message, HubStatus)
    assert (event.encoding, status.encoding) == (None, None)
    assert status.topic.device is None


@pytest.mark.parametrize(
    "t0_ns",
    [0, NOW_NS - 90 * 86_400 * 10**9, NOW_NS + 5_000_000_000 - 20_000_000],
    ids=["epoch", "ninety-days-old", "last-sample-at-the-skew-limit"],
)
def test_old_and_slightly_early_timestamps_are_accepted(registry: Registry, t0_ns: int) -> None:
    """Old data (store-and-forward) and times within the allowed skew are accepted."""
    accepted = accept(
        TELEMETRY, _frame(t0_ns=t0_ns), registry=registry, now_ns=NOW_NS, limits=LIMITS
    )
    assert isinstance(accepted.message, Frame)
    assert accepted.message.t0_ns == t0_ns


def test_range_bounds_are_inclusive(registry: Registry) -> None:
    """Samples exactly at the calibrated bounds are accepted."""
    payload = _frame(force_n=[-2000.0, 2000.0, 0.0], disp_mm=[-5.0, 120.0, 0.0])
    accepted = accept(TELEMETRY, payload, registry=registry, now_ns=NOW_NS, limits=LIMITS)
    assert isinstance(accepted.message, Frame)


def test_device_without_ref_load_range_accepts_any_finite_reference_load(
    registry: Registry,
) -> None:
    """A device registered without a ref_load_n range does not range-check reference load."""
    frame = Frame(
        "DX-0003",
        0,
        NOW_NS,
        10.0,
        np.array([0.0], dtype=np.float64),
        np.array([0.0], dtype=np.float64),
        ref_load_n=np.array([1e6], dtype=np.float64),
    )
    accepted = accept(
        "osteotel/v1/HUB-B/DX-0003/telemetry",
        encode_frame_json(frame),
        registry=registry,
        now_ns=NOW_NS,
        limits=LIMITS,
    )
    assert accepted.message == frame


def test_payload_at_the_size_limit_is_not_oversize(registry: Registry) -> None:
    """A payload exactly at max_payload_bytes passes the size rule."""
    payload = _frame()
    limits = Limits(max_payload_bytes=len(payload))
    accepted = accept(TELEMETRY, payload, registry=registry, now_ns=NOW_NS, limits=limits)
    assert accepted.encoding == "json"


def test_full_size_json_frame_fits_the_default_limit(registry: Registry) -> None:
    """A JSON frame of 10,000 samples with typical values fits the default payload limit."""
    rng = np.random.default_rng(7)
    n = 10_000
    frame = Frame(
        "DX-0001",
        0,
        NOW_NS - 10**12,
        1000.0,
        rng.uniform(-1500.0, 1500.0, n),
        rng.uniform(0.0, 100.0, n),
        ref_load_n=rng.uniform(0.0, 2000.0, n),
    )
    payload = encode_frame_json(frame)
    accepted = accept(TELEMETRY, payload, registry=registry, now_ns=NOW_NS, limits=LIMITS)
    assert accepted.message == frame
    assert len(payload) <= LIMITS.max_payload_bytes


def _judged(result: object) -> tuple[object, ...]:
    """What a result says: the accepted message, or the rejection's rule, field, index, detail."""
    if isinstance(result, Rejected):
        return (result.reason, result.field, result.index, result.detail)
    assert isinstance(result, Accepted)
    return (result.topic, result.hub, result.message, result.encoding)


def _valid_frames() -> list[tuple[str, bytes]]:
    """Frames every rule accepts: JSON and binary, with and without a reference load, at the
    range bounds, and one of a device without a reference load range."""
    binary = Frame(
        "DX-0001", 2, NOW_NS - 10**9, 100.0, np.array([-2000.0, 2000.0]), np.array([-5.0, 120.0])
    )
    one = np.ones(1)
    with_ref = Frame("DX-0001", 3, NOW_NS - 10**9, 100.0, one, one, ref_load_n=one * 2500.0)
    return [
        (TELEMETRY, _frame()),
        (TELEMETRY, encode_frame_binary(binary)),
        (TELEMETRY, encode_frame_binary(with_ref)),
        (TELEMETRY, _frame(ref_load_n=[0.0, 1.0, 2500.0], temp_c=36.5, battery_pct=80.0)),
        ("osteotel/v1/HUB-B/DX-0003/telemetry", _frame(device="DX-0003", ref_load_n=[-9e9] * 3)),
    ]


def test_accept_many_judges_each_message_as_accept_does(registry: Registry) -> None:
    """Every rejection of the rule table and the order table, with valid frames between them:
    the batch gives each message exactly what accept gives it alone, the valid ones accepted."""
    valid = _valid_frames()
    messages: list[tuple[str, bytes, int]] = []
    for number, (topic, payload, _) in enumerate(REJECTIONS):
        messages.append((topic, payload, NOW_NS))
        good_topic, good_payload = valid[number % len(valid)]
        messages.append((good_topic, good_payload, NOW_NS))
    messages += [
        (topic, payload, NOW_NS) for topic, payload, limits, _ in ORDER if limits is LIMITS
    ]
    messages += [
        (TELEMETRY + "/x", b"{" + b" " * LIMITS.max_payload_bytes + b"}", NOW_NS),
        (TELEMETRY, _frame(rate_hz=float("nan")), NOW_NS),
        (TELEMETRY, _frame(temp_c=float("inf")), NOW_NS),
        (TELEMETRY, _frame(battery_pct=float("nan")), NOW_NS),
        (TELEMETRY, _frame(force_n=[1.0, 2.0, float("-inf")], temp_c=float("nan")), NOW_NS),
        (TELEMETRY, _frame(ref_load_n=[1.0, float("nan"), 1.0], disp_mm=[500.0] * 3), NOW_NS),
    ]

    def alone(topic: str, payload: bytes, now_ns: int) -> object:
        try:
            return accept(topic, payload, registry=registry, now_ns=now_ns, limits=LIMITS)
        except Rejected as rejected:
            return rejected

    expected = [_judged(alone(*message)) for message in messages]
    results = accept_many(messages, registry=registry, limits=LIMITS)
    assert [_judged(result) for result in results] == expected
    accepted = sum(isinstance(result, Accepted) for result in results)
    assert accepted == len(REJECTIONS)  # the valid frame after each rejection, and only those


def test_accept_many_of_nothing_is_nothing(registry: Registry) -> None:
    """An empty batch gives no results."""
    assert accept_many([], registry=registry, limits=LIMITS) == []
