"""Turn one device's planned treatment into what its hub would publish, lazily, in publish order.

    generate(config, start_ns=..., end_ns=...) -> Iterator[Emitted]

The device records in windows (see docs/emulator.md): samples are computed with numpy from
closed-form physics, for up to 6 h of recording windows at a time; frames are cut from their
window and never cross its ends. Transport faults and the hub's
store-and-forward only change when (and whether) an item is published, so every item passes
through a small heap ordered by publish time.
"""

import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from devices.contract import (
    MAX_SEQ,
    Battery,
    DistractionStep,
    Event,
    Fault,
    Frame,
    LoadTestEnd,
    LoadTestStart,
    Probe,
    Reboot,
)
from devices.emulator.physics import (
    StepTable,
    gait_load_n,
    prony_force_n,
    ramp_disp_mm,
    weight_bearing_load_n,
)
from devices.emulator.timeline import (
    NS_PER_S,
    S_PER_DAY,
    TEST_TIMING_S,
    DeviceConfig,
    Timeline,
    build_timeline,
)

__all__ = ["FATES", "DeviceConfig", "Emitted", "SegmentPlan", "frame_plans", "generate"]

FloatArray = npt.NDArray[np.float64]
_CHUNK_SAMPLES = 120_000  # bounds memory per computation whatever the window length
_BATCH_SPAN_S = 6 * 3600.0  # fewer, larger numpy passes; slow effects are interpolated
_SETTLED_TAUS = 12.0  # after 12 time constants a transient is below 1e-5 of its start
_REMODEL_TAU_DAYS = 60.0  # emulator choice: residual tension fades in consolidation (Ernst 2021)
_LOOSENING_LAG_S = 0.25  # emulator choice: displacement lags load by this much when loose
_TEST_SPAN_S = 2 * TEST_TIMING_S[0] + 2 * TEST_TIMING_S[1] + TEST_TIMING_S[2]
_GAIT_BOUT_S = 60.0
_FALL_S = 0.3  # emulator choice: duration of the fall's load spike
_SPIKE_N = (300.0, 1500.0)
_LATE_S = (30.0, 900.0)
_REF_LOAD_LSB_N = 0.5
_DIURNAL_C = 0.5  # emulator choice: +/- 0.5 degC over the day, warmest at 16:00 UTC

FATES = ("ok", "lost", "duplicated", "reordered", "late")
"""What transport does to a frame; `SegmentPlan.fate` holds an index into this tuple."""
_FATE_OF_ANOMALY = {
    "transport_loss": 1,
    "transport_duplicate": 2,
    "transport_reorder": 3,
    "transport_late": 4,
}
IntArray = npt.NDArray[np.int64]
_CHANNELS = ("force_n", "disp_mm", "ref_load_n")
_PLAN_FIELDS = ("segment", "first", "n", "true_t0_ns", "t0_ns", "seq", "fate", "delay_ns")


@dataclass(frozen=True, slots=True)
class Emitted:
    """One item the hub publishes.

    Attributes:
        t_ns: when it is published, UTC epoch ns (true time, not the device's clock).
        kind: "frame", "event" or "status".
        frame: the telemetry frame, for kind "frame".
        event: the event, for kind "event".
        online: the hub's new state, for kind "status".
    """

    t_ns: int
    kind: Literal["frame", "event", "status"]
    frame: Frame | None = None
    event: Event | None = None
    online: bool | None = None


@dataclass(frozen=True)
class SegmentPlan:
    """The frames of one recording segment and what transport does to each, before any sample.

    Arrays have one entry per frame the device builds.

    Attributes:
        segment: index of each frame's segment in `Timeline.segments`.
        first: index of each frame's first sample within the segment.
        n: samples per frame.
        true_t0_ns: true time of each frame's sample 0, UTC epoch ns.
        t0_ns: the device's clock for sample 0 (differs during a clock jump).
        seq: the frame counter the device writes.
        fate: index into `FATES`: what transport does to the frame.
        delay_ns: extra publish delay for late and reordered frames, ns.
    """

    segment: IntArray
    first: IntArray
    n: IntArray
    true_t0_ns: IntArray
    t0_ns: IntArray
    seq: IntArray
    fate: IntArray
    delay_ns: IntArray


def _interval(tl: Timeline, kind: str) -> tuple[float, float] | None:
    for a in tl.anomalies:
        if a.kind == kind:
            return a.onset_s, a.end_s
    return None


def _inside(t_s: float, span: tuple[float, float] | None) -> bool:
    return span is not None and span[0] <= t_s < span[1]


def frame_plans(tl: Timeline) -> Iterator[SegmentPlan]:
    """Yield, segment by segment, the frames the device builds and their transport fates.

    Segments where the device builds no frame (the force sensor dropped out) are skipped.
    The device restarts its `seq` at 0 when it reboots at a clock jump.
    """
    cfg = tl.config
    dropout = _interval(tl, "sensor_dropout")
    clock = _interval(tl, "clock_jump")
    kind = tl.scenario.anomaly or ""
    transport = _interval(tl, kind) if kind.startswith("transport_") else None
    fate_code = _FATE_OF_ANOMALY.get(kind, 0)
    seq = 0
    rebooted = False
    for index, segment in enumerate(tl.segments):
        n = math.floor((segment.end_s - segment.start_s) * cfg.rate_hz)
        if n == 0 or _inside(segment.start_s, dropout):
            continue
        if clock is not None and not rebooted and segment.start_s >= clock[0]:
            seq, rebooted = 0, True
        offset_ns = (
            round(tl.scenario.magnitude * NS_PER_S) if _inside(segment.start_s, clock) else 0
        )
        first = np.arange(0, n, cfg.frame_samples, dtype=np.int64)
        sizes = np.minimum(cfg.frame_samples, n - first)
        offsets = np.round(first.astype(np.float64) * 1e9 / cfg.rate_hz).astype(np.int64)
        true_t0_ns = tl.wall_ns(segment.start_s) + offsets
        fate = np.zeros(len(first), dtype=np.int64)
        delay_ns = np.zeros(len(first), dtype=np.int64)
        if transport is not None:
            rng = np.random.default_rng([cfg.seed, 2, index])
            draws, late_s = rng.random(len(first)), rng.uniform(*_LATE_S, len(first))
            t_s = (true_t0_ns - tl.start_ns) / NS_PER_S
            hit = (t_s >= transport[0]) & (t_s < transport[1]) & (draws < tl.scenario.probability)
            if fate_code == FATES.index("reordered"):
                # Published just after the next frame: the segment's last frame has no next one,
                # and a frame right after a reordered one stays put so each swap is one pair.
                hit[-1] = False
                hit[1:] &= ~hit[:-1]
                delay_ns = np.where(
                    hit, np.round(sizes * 1e9 / cfg.rate_hz).astype(np.int64) + 1, 0
                )
            elif fate_code == FATES.index("late"):
                delay_ns = np.where(hit, np.round(late_s * NS_PER_S).astype(np.int64), 0)
            fate = np.where(hit, fate_code, 0)
        seqs = (seq + np.arange(len(first), dtype=np.int64)) % (MAX_SEQ + 1)
        seq = int(seqs[-1] + 1) % (MAX_SEQ + 1)
        yield SegmentPlan(
            np.full(len(first), index),
            first,
            sizes,
            true_t0_ns,
            true_t0_ns + offset_ns,
            seqs,
            fate,
            delay_ns,
        )


def _take(plan: SegmentPlan, rows: slice) -> SegmentPlan:
    return SegmentPlan(*(getattr(plan, name)[rows] for name in _PLAN_FIELDS))


def _concat(plans: list[SegmentPlan]) -> SegmentPlan:
    if len(plans) == 1:
        return plans[0]
    return SegmentPlan(
        *(np.concatenate([getattr(p, name) for p in plans]) for name in _PLAN_FIELDS)
    )


def _batches(plans: Iterator[SegmentPlan]) -> Iterator[SegmentPlan]:
    """Group frames into batches computed at once: at most `_CHUNK_SAMPLES`, `_BATCH_SPAN_S`.

    Many short windows go in one numpy pass (fewer small calls); a long window is split.
    """
    pending: list[SegmentPlan] = []
    pending_n = 0
    for plan in plans:
        if pending:
            span_s = (int(plan.true_t0_ns[-1]) - int(pending[0].true_t0_ns[0])) / NS_PER_S
            if pending_n + int(plan.n.sum()) > _CHUNK_SAMPLES or span_s > _BATCH_SPAN_S:
                yield _concat(pending)
                pending, pending_n = [], 0
        ends = np.cumsum(plan.n)
        lo, base = 0, 0
        while int(ends[-1]) - base > _CHUNK_SAMPLES:
            hi = max(lo + 1, int(np.searchsorted(ends, base + _CHUNK_SAMPLES, side="right")))
            yield _take(plan, slice(lo, hi))
            lo, base = hi, int(ends[hi - 1])
        rest = _take(plan, slice(lo, None)) if lo else plan
        pending.append(rest)
        pending_n += int(rest.n.sum())
    if pending:
        yield _concat(pending)


def _between_ends(t_s: FloatArray, first: float, last: float) -> FloatArray | float:
    """A value that moves in a straight line from `first` at t_s[0] to `last` at t_s[-1]."""
    if first == last or t_s[-1] == t_s[0]:
        return first
    return np.asarray(first + (last - first) * (t_s - t_s[0]) / (t_s[-1] - t_s[0]))


class _Sensor:
    """The device's measurement chain: drift, temperature, faults, noise, quantisation, clipping."""

    def __init__(self, tl: Timeline) -> None:
        self.tl = tl
        cfg = tl.config
        n_days = math.ceil(float(tl.calendar_day(tl.end_s))) + 2
        walk = np.random.default_rng([cfg.seed, 3]).normal(
            0.0, cfg.force_drift_n_per_sqrt_day, n_days
        )
        self.drift_days = np.arange(n_days, dtype=np.float64)
        self.drift_n = np.cumsum(walk) - walk[0]
        self.faults = {a.kind: a for a in tl.anomalies if a.kind.startswith("sensor_")}
        self.frozen_n: float | None = None

    def temp_c(self, t_s: FloatArray) -> FloatArray:
        tl = self.tl
        tod_h = ((tl.start_ns / NS_PER_S + t_s * tl.config.time_scale) % S_PER_DAY) / 3600.0
        return np.asarray(
            tl.config.body_temp_c + _DIURNAL_C * np.cos(2 * np.pi * (tod_h - 16.0) / 24.0)
        )

    def force_n(self, t_s: FloatArray, true_n: FloatArray, rng: np.random.Generator) -> FloatArray:
        cfg = self.tl.config
        # Offset drift and temperature change over hours: straight between the batch's ends.
        ends = np.array([t_s[0], t_s[-1]])
        offset = np.interp(self.tl.calendar_day(ends), self.drift_days, self.drift_n)
        offset += cfg.temp_coeff_n_per_c * (self.temp_c(ends) - cfg.body_temp_c)
        reading = rng.standard_normal(len(t_s)) * cfg.force_noise_n
        # A sensor mounted the other way round reports the force negated; its offset, drift
        # and noise are its own and keep their sign.
        reading += self.tl.physics.force_polarity * true_n
        reading += _between_ends(t_s, float(offset[0]), float(offset[1]))
        fault = self.faults.get("sensor_drift")
        if fault is not None:
            days_on = self.tl.calendar_day(np.clip(t_s, fault.onset_s, fault.end_s) - fault.onset_s)
            reading = reading + np.where(
                t_s < fault.end_s, fault.detail["magnitude"] * days_on, 0.0
            )
        fault = self.faults.get("sensor_saturation")
        if fault is not None:
            on = (t_s >= fault.onset_s) & (t_s < fault.end_s)
            reading = np.where(on, reading * fault.detail["magnitude"], reading)
        fault = self.faults.get("sensor_spikes")
        if fault is not None:
            on = (t_s >= fault.onset_s) & (t_s < fault.end_s)
            hit = on & (rng.random(len(t_s)) < fault.detail["probability"])
            size = rng.uniform(*_SPIKE_N, len(t_s)) * rng.choice([-1.0, 1.0], len(t_s))
            reading = np.where(hit, reading + size, reading)
        reading = np.clip(reading, -cfg.force_full_scale_n, cfg.force_full_scale_n)
        reading = np.round(reading / cfg.force_lsb_n) * cfg.force_lsb_n
        fault = self.faults.get("sensor_flatline")
        if fault is not None:
            on = (t_s >= fault.onset_s) & (t_s < fault.end_s)
            if on.any() and self.frozen_n is None:
                self.frozen_n = float(reading[np.argmax(on)])
            if self.frozen_n is not None:
                reading = np.where(on, self.frozen_n, reading)
        return np.asarray(reading)

    def disp_mm(self, true_mm: FloatArray, rng: np.random.Generator) -> FloatArray:
        cfg = self.tl.config
        reading = true_mm + rng.standard_normal(len(true_mm)) * cfg.disp_noise_mm
        return np.asarray(np.round(reading / cfg.disp_lsb_mm) * cfg.disp_lsb_mm)

    def ref_load_n(self, true_n: FloatArray, rng: np.random.Generator) -> FloatArray:
        reading = true_n + rng.normal(0.0, self.tl.config.ref_load_noise_n, len(true_n))
        return np.asarray(np.maximum(np.round(reading / _REF_LOAD_LSB_N) * _REF_LOAD_LSB_N, 0.0))


class _Tissue:
    """Distraction tissue and probes: prefix sums make the settled part of the force O(1)."""

    def __init__(self, steps: StepTable) -> None:
        self.steps = steps
        self.settled_after_s = steps.t_s + steps.ramp_s + _SETTLED_TAUS * steps.tau_slow_s
        # Settled times must be sorted for the prefix trick; steps are, and tau_s never shrinks.
        self.settled_after_s = np.maximum.accumulate(self.settled_after_s)
        self.cum_force_n = np.r_[0.0, np.cumsum(steps.delta_mm * steps.k_eq_n_per_mm)]
        self.cum_disp_mm = np.r_[0.0, np.cumsum(steps.delta_mm)]

    def split(self, t_lo_s: float, t_hi_s: float) -> tuple[int, StepTable]:
        settled = int(np.searchsorted(self.settled_after_s, t_lo_s, side="right"))
        started = int(np.searchsorted(self.steps.t_s, t_hi_s, side="right"))
        return settled, self.steps.take(np.arange(settled, max(settled, started)))


def _external_load(tl: Timeline, t_s: FloatArray, share: float) -> tuple[FloatArray, FloatArray]:
    """Return the axial load on the limb and the part of it on the scale, N (compression +)."""
    cfg = tl.config
    quiet_s, ramp_s, hold_s = TEST_TIMING_S
    scale = np.zeros_like(t_s)
    lo = int(np.searchsorted(tl.tests_s, t_s[0] - _TEST_SPAN_S))
    hi = int(np.searchsorted(tl.tests_s, t_s[-1], side="right"))
    for start_s in tl.tests_s[lo:hi].tolist():
        scale += weight_bearing_load_n(
            t_s, start_s + quiet_s, load_n=cfg.test_load_n, ramp_s=ramp_s, hold_s=hold_s
        )
    load = scale
    lo = int(np.searchsorted(tl.gait_s, t_s[0] - _GAIT_BOUT_S))
    hi = int(np.searchsorted(tl.gait_s, t_s[-1], side="right"))
    # Emulator choice: patients put more weight on the limb as the regenerate takes over.
    peak_n = cfg.body_weight_n * (0.25 + 0.75 * (1.0 - share))
    for start_s in tl.gait_s[lo:hi].tolist():
        load = load + gait_load_n(t_s, start_s, duration_s=_GAIT_BOUT_S, peak_n=peak_n)
    if tl.overload_s is not None and t_s[0] - 1.0 < tl.overload_s < t_s[-1]:
        rel_s = t_s - tl.overload_s
        fall = np.sin(np.pi * np.clip(rel_s / _FALL_S, 0.0, 1.0))
        load = load + tl.scenario.magnitude * cfg.body_weight_n * fall
    return load, scale


def _batch_samples(
    tl: Timeline, tissue: _Tissue, probes: _Tissue, sensor: _Sensor, t_ns: IntArray
) -> dict[str, FloatArray]:
    """Return the measured arrays at sample times `t_ns` (ascending, within an hour)."""
    rng = np.random.default_rng([tl.config.seed, 1, int(t_ns[0] - tl.start_ns)])
    t_s = (t_ns - tl.start_ns).astype(np.float64) / NS_PER_S
    t_lo, t_hi = float(t_s[0]), float(t_s[-1])
    t_mid = 0.5 * (t_lo + t_hi)
    # Distraction tissue: settled steps in closed form, recent steps in full.
    settled, active = tissue.split(t_lo, t_hi)
    release_s, factor = tl.release if tl.release is not None else (math.inf, 1.0)
    before = min(settled, int(np.searchsorted(tissue.steps.t_s, release_s)))
    force = np.full(len(t_s), tissue.cum_force_n[settled])
    if t_hi >= release_s:
        force -= tissue.cum_force_n[before] * np.where(t_s >= release_s, 1.0 - factor, 0.0)
    force += prony_force_n(t_s, active, release_at_s=release_s, release_factor=factor)
    # Remodelling takes weeks: straight between the batch's ends is exact enough.
    days_after = np.maximum(tl.calendar_day([t_lo, t_hi]) - tl.consolidation_day, 0.0)
    if days_after[1] > 0.0:
        fade = np.exp(-days_after / _REMODEL_TAU_DAYS)
        force *= _between_ends(t_s, float(fade[0]), float(fade[1]))
    disp = tissue.cum_disp_mm[settled] + ramp_disp_mm(t_s, active)
    p_settled, p_active = probes.split(t_lo, t_hi)
    force += probes.cum_force_n[p_settled] + prony_force_n(t_s, p_active)
    disp += probes.cum_disp_mm[p_settled] + ramp_disp_mm(t_s, p_active)
    # External load, shared between device and regenerate. The device carries compression, as
    # the distraction force is: its share of the load adds to the force, and the device shortens
    # under it by share * load / k_device. A loose device lags in displacement (hysteresis).
    share = float(tl.load_share(t_mid))
    k_dev = float(tl.device_stiffness_n_per_mm(t_mid))
    load, on_scale = _external_load(tl, t_s, share)
    lag_s = _LOOSENING_LAG_S * float(tl.loosening(t_mid))
    lagged = _external_load(tl, t_s - lag_s, share)[0] if lag_s > 0 else load
    return {
        "force_n": sensor.force_n(t_s, force + share * load, rng),
        "disp_mm": sensor.disp_mm(disp - share * lagged / k_dev, rng),
        "ref_load_n": sensor.ref_load_n(on_scale, rng) if on_scale.any() else on_scale,
    }


def _events(tl: Timeline) -> list[tuple[float, Event | bool]]:
    """Every event the device logs and every hub status change, with its true time (s)."""
    cfg, dev = tl.config, tl.config.device
    clock = _interval(tl, "clock_jump")

    def t_ns(t_s: float) -> int:
        offset = tl.scenario.magnitude if _inside(t_s, clock) else 0.0
        return tl.wall_ns(t_s + offset)

    items: list[tuple[float, Event | bool]] = []
    for t, delta, source in zip(tl.steps.t_s, tl.steps.delta_mm, tl.step_source, strict=True):
        step = DistractionStep(
            device=dev,
            t_ns=t_ns(t),
            delta_mm=float(delta),
            source="manual" if source == "manual" else "motor",
        )
        items.append((float(t), step))
    for t, delta in zip(tl.probes.t_s, tl.probes.delta_mm, strict=True):
        items.append((float(t), Probe(device=dev, t_ns=t_ns(t), delta_mm=float(delta))))
    span_s = _TEST_SPAN_S
    for t in tl.tests_s:
        items.append((float(t), LoadTestStart(device=dev, t_ns=t_ns(t))))
        items.append((float(t) + span_s, LoadTestEnd(device=dev, t_ns=t_ns(t + span_s))))
    midnights = np.arange(1, math.floor(float(tl.calendar_day(tl.end_s))) + 1)
    for day in midnights:
        t = (day * S_PER_DAY - (tl.start_ns / NS_PER_S) % S_PER_DAY) / cfg.time_scale
        pct = round(float(tl.battery_pct(t)), 1)
        items.append((t, Battery(device=dev, t_ns=t_ns(t), pct=pct)))
    for a in tl.anomalies:
        if a.kind == "sensor_dropout":
            items.append(
                (
                    a.onset_s,
                    Fault(
                        device=dev,
                        t_ns=t_ns(a.onset_s),
                        code="sensor_dropout",
                        detail="force bridge not responding",
                    ),
                )
            )
            items.append(
                (
                    a.end_s,
                    Fault(
                        device=dev,
                        t_ns=t_ns(a.end_s),
                        code="sensor_recovered",
                        detail="force bridge answering again",
                    ),
                )
            )
        elif a.kind == "clock_jump":
            items.append((a.onset_s, Reboot(device=dev, t_ns=t_ns(a.onset_s))))
        elif a.kind == "hub_offline":
            items += [(a.onset_s, False), (a.end_s, True)]
    return sorted((item for item in items if 0.0 <= item[0] <= tl.end_s), key=lambda item: item[0])


def generate(config: DeviceConfig, *, start_ns: int, end_ns: int) -> Iterator[Emitted]:
    """Yield everything one device's hub publishes from the osteotomy to "now", in publish order.

    The same config (seed included) and times give the same items, byte for byte once
    encoded. Nothing is published after `end_ns`: items the hub would publish later (late
    frames, store-and-forward still pending) are left out.

    Args:
        config: the device and its scenario.
        start_ns: the osteotomy, UTC epoch ns.
        end_ns: "now", UTC epoch ns.

    Yields:
        Frames, events and hub status changes, ordered by `t_ns` (ties in creation order).
    """
    tl = build_timeline(config, start_ns=start_ns, end_ns=end_ns)
    offline = _interval(tl, "hub_offline")
    offline_ns = (tl.wall_ns(offline[0]), tl.wall_ns(offline[1])) if offline else None
    outbox = _Outbox(offline_ns)
    events = _events(tl)
    next_event = 0
    models = (_Tissue(tl.steps), _Tissue(tl.probes), _Sensor(tl))
    for plan in _batches(frame_plans(tl)):
        segment_start_s = tl.segments[int(plan.segment[0])].start_s
        while next_event < len(events) and events[next_event][0] < segment_start_s:
            t_s, payload = events[next_event]
            next_event += 1
            yield from outbox.drain(tl.wall_ns(t_s))
            _push_event(outbox, tl.wall_ns(t_s), payload)
        yield from outbox.drain(tl.wall_ns(segment_start_s))
        _push_frames(tl, plan, outbox, models)
    for t_s, payload in events[next_event:]:
        yield from outbox.drain(tl.wall_ns(t_s))
        _push_event(outbox, tl.wall_ns(t_s), payload)
    yield from outbox.drain(end_ns + 1)


class _Outbox:
    """Items waiting for their publish time, in a heap: transport faults and the hub's
    store-and-forward change the order, and ties keep the order items were made in."""

    def __init__(self, offline_ns: tuple[int, int] | None) -> None:
        self.heap: list[tuple[int, int, Emitted]] = []
        self.count = itertools.count()
        self.offline_ns = offline_ns

    def push(self, item: Emitted, *, forward: bool = True) -> None:
        offline = self.offline_ns
        if forward and offline is not None and offline[0] <= item.t_ns < offline[1]:
            # Store-and-forward: sent on reconnect, in the order it was stored.
            item = replace(item, t_ns=offline[1])
        heapq.heappush(self.heap, (item.t_ns, next(self.count), item))

    def drain(self, before_ns: int) -> Iterator[Emitted]:
        heap = self.heap
        while heap and heap[0][0] < before_ns:
            yield heapq.heappop(heap)[2]


def _push_event(outbox: _Outbox, t_ns: int, payload: Event | bool) -> None:
    if isinstance(payload, bool):
        # The broker publishes the will (offline) at once; the hub announces itself on return.
        outbox.push(Emitted(t_ns, "status", online=payload), forward=False)
    else:
        outbox.push(Emitted(t_ns, "event", event=payload))


def _push_frames(
    tl: Timeline, plan: SegmentPlan, outbox: _Outbox, models: tuple[_Tissue, _Tissue, _Sensor]
) -> None:
    tissue, probes, sensor = models
    cfg = tl.config
    offsets_ns = np.round(np.arange(cfg.frame_samples) * 1e9 / cfg.rate_hz).astype(np.int64)
    lost, duplicated = FATES.index("lost"), FATES.index("duplicated")
    # Sample times exactly as the contract computes them from each frame's t0_ns.
    full = plan.n == cfg.frame_samples
    if full.all():
        t_ns = (plan.true_t0_ns[:, None] + offsets_ns[None, :]).ravel()
    else:
        t_ns = np.repeat(plan.true_t0_ns, plan.n) + np.concatenate(
            [offsets_ns[:size] for size in plan.n.tolist()]
        )
    arrays = _batch_samples(tl, tissue, probes, sensor, t_ns)
    t0_s = (plan.true_t0_ns - tl.start_ns) / NS_PER_S
    temps = np.round(sensor.temp_c(t0_s), 2).tolist()
    batteries = np.round(tl.battery_pct(t0_s), 1).tolist()
    t_pub = (plan.true_t0_ns + offsets_ns[plan.n - 1] + plan.delay_ns).tolist()
    on_scale = [tl.segments[i].load_test for i in plan.segment.tolist()]
    if full.all():
        size = cfg.frame_samples
        force, disp, ref = (list(arrays[k].reshape(-1, size)) for k in _CHANNELS)
    else:
        ends = np.cumsum(plan.n).tolist()
        cuts = [slice(a, b) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        force, disp, ref = ([arrays[k][cut] for cut in cuts] for k in _CHANNELS)
    rows = zip(
        plan.seq.tolist(),
        plan.t0_ns.tolist(),
        plan.fate.tolist(),
        t_pub,
        temps,
        batteries,
        on_scale,
        force,
        disp,
        ref,
        strict=True,
    )
    device, rate_hz, push = cfg.device, cfg.rate_hz, outbox.push
    for seq, t0_ns, fate, t_pub_ns, temp_c, battery_pct, test, f, d, r in rows:
        if fate == lost:
            continue
        frame = Frame(device, seq, t0_ns, rate_hz, f, d, r if test else None, temp_c, battery_pct)
        item = Emitted(t_pub_ns, "frame", frame)  # positional: measurably cheaper per frame
        push(item)
        if fate == duplicated:
            push(item)
