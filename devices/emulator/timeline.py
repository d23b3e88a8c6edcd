"""One device's treatment laid out in time: protocol, activities, anomalies, recording windows.

Everything here is decided before a single sample is computed, from the configuration and the
seed alone, so the generator and the ground truth read the same plan.

Calendar and wall time: the schedule (days, hours, the 15-minute periodic windows) is laid
out in calendar seconds since the osteotomy and divided by `time_scale` to get wall seconds;
durations inside a window (relaxation, gait, tests, window lengths) are never compressed.
With `time_scale = 1` the two are the same.
"""

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from devices.contract import is_valid_id
from devices.emulator.draws import DevicePhysics, draw_physics
from devices.emulator.physics import (
    FIT_MAX_STEP,
    StepTable,
    bachmeier_coefficients,
    load_share,
    regenerate_ratio,
)
from devices.emulator.scenarios import Scenario, scenario

__all__ = [
    "NS_PER_S",
    "SITE_TISSUE_N_PER_MM",
    "S_PER_DAY",
    "TEST_TIMING_S",
    "Anomaly",
    "DeviceConfig",
    "Segment",
    "Timeline",
    "build_timeline",
]

NS_PER_S = 1_000_000_000
S_PER_DAY = 86_400.0
FloatArray = npt.NDArray[np.float64]

# Simpson 1996 (docs/domain.md "Forces along a lengthening"): force rises to ~300 N over 5-8 cm in
# the adult tibia. The tissue's instantaneous stiffness grows linearly with the gain, and the
# two defaults below are calibrated so that 50 mm ends near 300 N (tests check the result).
_REFERENCE_GAIN_MM = 50.0
_EXTRA_STEP_DELAY_S = 2 * 3600.0
_REMOVAL_DELAY_DAYS = 7.0  # emulator choice: the next clinic visit after the 10 % test
_PROBE_HOLD_S = 300.0
TEST_TIMING_S = (5.0, 3.0, 10.0)
"""A weight-bearing test: quiet, ramp up, hold, ramp down, quiet (s); emulator choice."""
_TEST_QUIET_S, _TEST_RAMP_S, _TEST_HOLD_S = TEST_TIMING_S
_GAIT_BOUT_S = 60.0
_OVERLOAD_WINDOW_S = (5.0, 60.0)


SITE_TISSUE_N_PER_MM: dict[str, tuple[float, float]] = {
    # Calibrated so that 4 x 0.25 mm/day to 50 mm ends near 300 N (Simpson 1996, adult tibia).
    "tibia": (16.0, 42.0),
    "femur": (16.0, 42.0),
    "humerus": (16.0, 42.0),
    "other": (16.0, 42.0),
    # About 36 N per 0.5 mm turn (docs/domain.md, mandible): 72 N/mm, not growing with the gain.
    "mandible": (72.0, 72.0),
}
"""Instantaneous tissue stiffness per site at the first step and after 50 mm, N/mm."""


@dataclass(frozen=True)
class DeviceConfig:
    """One emulated device: who it is, its prescription, its tissue, sensors and recording.

    Protocol defaults follow docs/domain.md "The treatment": latency 5-7 days (limb) -> 7; 1 mm/day
    as 4 x 0.25 mm; tibia gain 7.7 +/- 2.9 cm -> a 50 mm target; healing index 30-50 days/cm
    -> 40. Everything marked "emulator choice" in docs/emulator.md is a plausible value, not a
    published one. `step_ramp_s`, `tau_fast_s` and `a_fast_scale` are drawn per device from the
    seed unless set (devices/emulator/draws.py).

    Raises:
        ValueError: from construction, when a value is outside its range.
    """

    device: str
    hub: str
    site: Literal["tibia", "femur", "humerus", "mandible", "other"] = "tibia"
    scenario: str = "normal"
    seed: int = 0
    rate_hz: float = 100.0
    frame_samples: int = 100
    latency_days: float = 7.0
    rate_mm_per_day: float = 1.0
    steps_per_day: int = 4
    target_mm: float = 50.0
    step_source: Literal["motor", "manual"] = "motor"
    step_ramp_s: float | None = None
    tau_fast_s: float | None = None
    a_fast_scale: float | None = None
    healing_index_days_per_cm: float = 40.0
    k_inst_first_n_per_mm: float | None = None
    k_inst_at_50mm_n_per_mm: float | None = None
    device_stiffness_n_per_mm: float = 500.0
    body_weight_n: float = 750.0
    test_load_n: float = 200.0
    probes_per_day: int = 1
    probe_mm: float = 0.02
    gait_bouts_per_day: int = 3
    window_before_s: float = 30.0
    window_after_s: float = 600.0
    periodic_every_s: float = 900.0
    periodic_window_s: float = 10.0
    force_noise_n: float = 0.5
    disp_noise_mm: float = 0.002
    ref_load_noise_n: float = 1.0
    force_lsb_n: float = 0.05
    disp_lsb_mm: float = 0.001
    force_full_scale_n: float = 2000.0
    force_drift_n_per_sqrt_day: float = 0.3
    temp_coeff_n_per_c: float = 0.4
    body_temp_c: float = 35.5
    battery_idle_pct_per_day: float = 0.15
    battery_pct_per_recorded_h: float = 0.4
    time_scale: float = 1.0
    max_treatment_days: float = 365.0

    def __post_init__(self) -> None:
        checks = {
            "device": is_valid_id(self.device),
            "hub": is_valid_id(self.hub),
            "rate_hz": 1.0 <= self.rate_hz <= 1000.0,
            "frame_samples": 1 <= self.frame_samples <= 10_000,
            "steps_per_day": 1 <= self.steps_per_day <= 24,
            "target_mm": self.target_mm > 0,
            "rate_mm_per_day": self.rate_mm_per_day > 0,
            "latency_days": self.latency_days >= 0,
            "seed": self.seed >= 0,
            "time_scale": self.time_scale >= 1.0,
            "step_ramp_s": self.step_ramp_s is None or self.step_ramp_s > 0,
            "tau_fast_s": self.tau_fast_s is None or self.tau_fast_s > 0,
            "a_fast_scale": self.a_fast_scale is None or 0.0 <= self.a_fast_scale <= 1.0,
            "periodic_every_s": self.periodic_every_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"DeviceConfig.{name} is out of range: {getattr(self, name)!r}")
        scenario(self.scenario)  # raises ValueError naming the known scenarios

    @property
    def tissue_n_per_mm(self) -> tuple[float, float]:
        """Instantaneous tissue stiffness at the first step and after 50 mm, N/mm.

        Unless set, taken from the site: see `SITE_TISSUE_N_PER_MM`.
        """
        first, at_50mm = SITE_TISSUE_N_PER_MM[self.site]
        return (
            first if self.k_inst_first_n_per_mm is None else self.k_inst_first_n_per_mm,
            at_50mm if self.k_inst_at_50mm_n_per_mm is None else self.k_inst_at_50mm_n_per_mm,
        )

    @property
    def step_mm(self) -> float:
        """Prescribed elongation per step, mm."""
        return self.rate_mm_per_day / self.steps_per_day


@dataclass(frozen=True)
class Anomaly:
    """One injected anomaly: kind, wall-time onset and end (s since osteotomy), and details."""

    kind: str
    onset_s: float
    end_s: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """A stretch of continuous recording, wall s since osteotomy; frames never cross its ends."""

    start_s: float
    end_s: float
    load_test: bool


@dataclass(frozen=True)
class Timeline:
    """The whole plan of one device's treatment, wall seconds since the osteotomy.

    Attributes:
        config, scenario: what was asked for.
        physics: what the device was drawn to be (ramp times, relaxation, polarity).
        start_ns: the osteotomy, UTC epoch ns; end_s: the last instant recorded.
        steps: distraction steps actually done; step_source and step_prescribed per step.
        missed_s: prescribed step times that were not done.
        probes: probe elongations (each probe is a +delta row then a -delta row).
        tests_s, gait_s: starts of weight-bearing tests and walking bouts.
        overload_s: the fall, if any.
        phases: (name, wall s) in order.
        anomalies: everything injected, in onset order.
        segments: recording, in time order.
        consolidation_day, healed_day: calendar days since osteotomy.
    """

    config: DeviceConfig
    scenario: Scenario
    physics: DevicePhysics
    start_ns: int
    end_s: float
    steps: StepTable
    step_source: list[str]
    step_prescribed: npt.NDArray[np.bool_]
    missed_s: FloatArray
    probes: StepTable
    tests_s: FloatArray
    gait_s: FloatArray
    overload_s: float | None
    phases: list[tuple[str, float]]
    anomalies: list[Anomaly]
    segments: list[Segment]
    consolidation_day: float
    healed_day: float
    recorded_cum_s: FloatArray
    release: tuple[float, float] | None
    segment_edges_s: FloatArray
    ratio_grid: tuple[FloatArray, FloatArray]

    def wall_ns(self, t_s: float) -> int:
        """Convert wall seconds since the osteotomy to UTC epoch ns."""
        return self.start_ns + round(t_s * NS_PER_S)

    def calendar_day(self, t_s: npt.ArrayLike) -> FloatArray:
        """Convert wall seconds since the osteotomy to calendar days since the osteotomy."""
        return np.asarray(np.asarray(t_s, dtype=np.float64) * self.config.time_scale / S_PER_DAY)

    def regenerate_ratio(self, t_s: npt.ArrayLike) -> FloatArray:
        """Return k_regenerate / k_device (intact device) at wall times `t_s`."""
        # Interpolated from a grid of 1/50 day: the curve changes over weeks.
        return np.asarray(np.interp(self.calendar_day(t_s), *self.ratio_grid))

    def device_stiffness_n_per_mm(self, t_s: npt.ArrayLike) -> FloatArray:
        """Return the device's effective axial stiffness, N/mm (lower once pins loosen)."""
        k = self.config.device_stiffness_n_per_mm
        return np.asarray(k * (1.0 - self.scenario.magnitude * self.loosening(t_s)))

    def loosening(self, t_s: npt.ArrayLike) -> FloatArray:
        """Return how far pin loosening has gone at `t_s`, 0 (none) to 1 (full)."""
        t = np.asarray(t_s, dtype=np.float64)
        for a in self.anomalies:
            if a.kind == "loosening":
                return np.asarray(np.clip((t - a.onset_s) / (a.end_s - a.onset_s), 0.0, 1.0))
        return np.zeros_like(t)

    def load_share(self, t_s: npt.ArrayLike) -> FloatArray:
        """Return the true load share at `t_s`, 0..1."""
        k_dev = self.device_stiffness_n_per_mm(t_s)
        k_reg = self.regenerate_ratio(t_s) * self.config.device_stiffness_n_per_mm
        return load_share(k_dev, k_reg)

    def battery_pct(self, t_s: npt.ArrayLike) -> FloatArray:
        """Return the battery charge at `t_s`, percent, from idle drain and time spent recording."""
        t = np.asarray(t_s, dtype=np.float64)
        edges = self.segment_edges_s
        recorded_s = np.interp(t, edges, self.recorded_cum_s) if len(edges) else np.zeros_like(t)
        cfg = self.config
        used = cfg.battery_idle_pct_per_day * self.calendar_day(t)
        used = used + cfg.battery_pct_per_recorded_h * recorded_s / 3600.0
        return np.asarray(np.clip(100.0 - used, 0.0, 100.0))


def _daily_hours(count: int, first_h: float, last_h: float) -> FloatArray:
    if count <= 1:
        return np.array([first_h])[:count]
    return np.asarray(np.linspace(first_h, last_h, count))


def _segments(lo: FloatArray, hi: FloatArray, tests: FloatArray, end_s: float) -> list[Segment]:
    """Merge overlapping recording windows and cut them at the ends of load tests."""
    keep = (lo < end_s) & (hi > 0.0)
    lo, hi = np.maximum(lo[keep], 0.0), np.minimum(hi[keep], end_s)
    if len(lo) == 0:
        return []
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    first = np.flatnonzero(np.r_[True, lo[1:] > reach[:-1]])
    starts, ends = lo[first], np.maximum.reduceat(hi, first)
    test_lo, test_hi = tests[:, 0], tests[:, 1]
    edges = np.unique(np.concatenate([starts, ends, test_lo, test_hi]))
    a, b = edges[:-1], edges[1:]
    window = np.searchsorted(starts, a, side="right") - 1
    inside = (window >= 0) & (b <= ends[np.maximum(window, 0)])
    test = np.searchsorted(test_lo, a, side="right") - 1
    in_test = (test >= 0) & (b <= test_hi[np.maximum(test, 0)]) if len(test_lo) else test < -1
    return [
        Segment(float(x), float(y), bool(t))
        for x, y, t in zip(a[inside], b[inside], in_test[inside], strict=True)
    ]


@dataclass(frozen=True)
class _Calendar:
    """Converts the clinic's calendar (day since osteotomy day, hour UTC) to wall seconds."""

    tod_s: float
    scale: float

    def wall(self, day: npt.ArrayLike, hour: npt.ArrayLike) -> FloatArray:
        cal_s = np.asarray(day) * S_PER_DAY + np.asarray(hour) * 3600.0 - self.tod_s
        return np.asarray(cal_s / self.scale, dtype=np.float64)

    def day(self, t_s: npt.ArrayLike) -> FloatArray:
        return np.asarray(np.asarray(t_s, dtype=np.float64) * self.scale / S_PER_DAY)


def _prescribed_s(config: DeviceConfig, cal: _Calendar) -> FloatArray:
    # Steps evenly spread over 08:00-20:00, from the day the latency ends.
    n_steps = max(1, round(config.target_mm / config.step_mm))
    k = np.arange(n_steps)
    slots_h = _daily_hours(config.steps_per_day, 8.0, 20.0)
    # Never on the osteotomy day itself, whatever the latency.
    day = max(math.ceil(config.latency_days), 1) + k // config.steps_per_day
    return cal.wall(day, slots_h[k % config.steps_per_day])


def _distraction(
    config: DeviceConfig,
    sc: Scenario,
    physics: DevicePhysics,
    cal: _Calendar,
    rng: np.random.Generator,
) -> tuple[StepTable, FloatArray, FloatArray, FloatArray]:
    """Return the steps done, whether each was prescribed, missed step times, extra step times."""
    prescribed_s = _prescribed_s(config, cal)
    draws = rng.random(len(prescribed_s))
    no_steps = np.zeros(len(prescribed_s), dtype=bool)
    missed = draws < sc.probability if sc.anomaly == "missed_step" else no_steps
    missed[0] = False  # the first step is done in clinic, so a treatment always has one
    extra = draws < sc.probability if sc.anomaly == "extra_step" else no_steps
    extra_s = prescribed_s[extra] + _EXTRA_STEP_DELAY_S / cal.scale
    step_s = np.concatenate([prescribed_s[~missed], extra_s])
    order = np.argsort(step_s, kind="stable")
    is_prescribed = np.r_[np.ones(int(np.sum(~missed))), np.zeros(len(extra_s))][order]
    step_s = step_s[order]
    delta_mm = np.full(len(step_s), config.step_mm)
    gained_mm = np.cumsum(delta_mm)
    days_in = np.maximum(cal.day(step_s) - cal.day(prescribed_s[0]), 0.0)
    k_first, k_50 = config.tissue_n_per_mm
    k_inst = k_first + (k_50 - k_first) * gained_mm / _REFERENCE_GAIN_MM
    k_inst = k_inst * sc.tissue_factor * (1.0 + sc.premature_growth_per_day * days_in)
    coefficients = bachmeier_coefficients(
        np.arange(1, len(step_s) + 1),
        tau_fast_s=physics.tau_fast_s,
        a_fast_scale=physics.a_fast_scale,
    )
    # The device's drive turns the prescribed steps; an extra step is a manual turn.
    ramp_s = np.where(is_prescribed > 0, physics.step_ramp_s, physics.manual_ramp_s)
    steps = StepTable(step_s, delta_mm, ramp_s, k_inst, *coefficients)
    return steps, is_prescribed, prescribed_s[missed], extra_s


def _probes(
    config: DeviceConfig,
    sc: Scenario,
    physics: DevicePhysics,
    probe_s: FloatArray,
    days: tuple[float, float, float],
) -> StepTable:
    """Each probe elongates by `probe_mm`, holds, and shortens back: two rows per probe."""
    consolidation_day, healed_day, scale = days
    ratio = regenerate_ratio(
        probe_s * scale / S_PER_DAY,
        sc.healing_curve,
        consolidation_day=consolidation_day,
        healed_day=healed_day,
    )
    a_inf, a_fast, a_slow, tau_f, tau_s = bachmeier_coefficients(
        np.full(len(probe_s), FIT_MAX_STEP),
        tau_fast_s=physics.tau_fast_s,
        a_fast_scale=physics.a_fast_scale,
    )
    # A probe loads the mature regenerate: its equilibrium stiffness is the regenerate's.
    k_inst = ratio * config.device_stiffness_n_per_mm / a_inf
    n = len(probe_s)
    return StepTable(
        t_s=np.ravel(np.column_stack([probe_s, probe_s + _PROBE_HOLD_S])),
        delta_mm=np.tile([config.probe_mm, -config.probe_mm], n),
        ramp_s=np.full(2 * n, physics.step_ramp_s),
        k_inst_n_per_mm=np.repeat(k_inst, 2),
        a_inf=np.repeat(a_inf, 2),
        a_fast=np.repeat(a_fast, 2),
        a_slow=np.repeat(a_slow, 2),
        tau_fast_s=np.repeat(tau_f, 2),
        tau_slow_s=np.repeat(tau_s, 2),
    )


def _injected(
    config: DeviceConfig, sc: Scenario, step_s: FloatArray, days: tuple[float, float, float, float]
) -> tuple[list[Anomaly], float | None, tuple[float, float] | None]:
    """Place the scenario's anomaly: return it, the fall time and the separation, if any."""
    distraction_day, consolidation_day, healed_day, scale = days
    if sc.anomaly is None or sc.anomaly in ("missed_step", "extra_step"):
        return [], None, None
    span = (distraction_day, consolidation_day)
    if sc.anchor == "consolidation":
        span = (consolidation_day, healed_day)
    onset_s = (span[0] + sc.onset_fraction * (span[1] - span[0])) * S_PER_DAY / scale
    overload_s: float | None = None
    release: tuple[float, float] | None = None
    if sc.anomaly == "separation":
        # The tissue gives way during a step: 10 s after the step nearest the onset.
        onset_s = float(step_s[np.argmin(np.abs(step_s - onset_s))]) + 10.0
        release = (onset_s, sc.magnitude)
    if sc.anomaly == "overload":
        overload_s = onset_s
    detail: dict[str, Any] = {"magnitude": sc.magnitude} if sc.magnitude else {}
    if sc.probability:
        detail["probability"] = sc.probability
    end_s = onset_s + sc.duration_days * S_PER_DAY / scale
    return [Anomaly(sc.anomaly, onset_s, end_s, detail)], overload_s, release


def build_timeline(config: DeviceConfig, *, start_ns: int, end_ns: int) -> Timeline:
    """Lay out one device's treatment from the osteotomy at `start_ns` up to `end_ns`.

    Args:
        config: the device.
        start_ns: the osteotomy, UTC epoch ns.
        end_ns: "now", UTC epoch ns; nothing is planned to be recorded after it.

    Returns:
        The plan, in wall seconds since the osteotomy.

    Raises:
        ValueError: when end_ns is not after start_ns.
    """
    if end_ns <= start_ns:
        raise ValueError(f"end_ns {end_ns} is not after start_ns {start_ns}")
    sc = scenario(config.scenario)
    rng = np.random.default_rng([config.seed, 0])
    cal = _Calendar(tod_s=(start_ns % (86_400 * NS_PER_S)) / NS_PER_S, scale=config.time_scale)

    physics = draw_physics(
        seed=config.seed,
        step_source=config.step_source,
        step_ramp_s=config.step_ramp_s,
        tau_fast_s=config.tau_fast_s,
        a_fast_scale=config.a_fast_scale,
        force_polarity=sc.force_polarity,
    )
    steps, is_prescribed, missed_s, extra_s = _distraction(config, sc, physics, cal, rng)
    distraction_day = float(cal.day(steps.t_s[0]))
    consolidation_day = float(cal.day(steps.t_s[-1]))
    gain_cm = float(np.sum(steps.delta_mm)) / 10.0
    healed_day = max(
        config.healing_index_days_per_cm * sc.healing_index_factor * gain_cm,
        consolidation_day + 7.0,
    )
    removal_s = math.inf
    if sc.healing_curve != "non_healing":
        removal_s = float(cal.wall(math.ceil(healed_day + _REMOVAL_DELAY_DAYS), 10.0))
    horizon_s = min(
        (end_ns - start_ns) / NS_PER_S,
        removal_s,
        config.max_treatment_days * S_PER_DAY / cal.scale,
    )
    days = np.arange(1, math.ceil(float(cal.day(horizon_s))) + 2)

    # Probes daily during consolidation at 13:00, then every 2 h (emulator choice).
    probe_days = days[days > consolidation_day]
    probe_hours = 13.0 + 2.0 * np.arange(config.probes_per_day)
    probe_s = cal.wall(
        np.repeat(probe_days, len(probe_hours)), np.tile(probe_hours, len(probe_days))
    )
    probe_s = probe_s[probe_s > steps.t_s[-1] + config.window_after_s]
    probes = _probes(config, sc, physics, probe_s, (consolidation_day, healed_day, cal.scale))

    tests_s = cal.wall(days, 11.0)
    gait_hours = _daily_hours(config.gait_bouts_per_day, 9.5, 17.5)
    gait_s = cal.wall(np.repeat(days, len(gait_hours)), np.tile(gait_hours, len(days)))

    anomalies, overload_s, release = _injected(
        config, sc, steps.t_s, (distraction_day, consolidation_day, healed_day, cal.scale)
    )
    anomalies += [Anomaly("missed_step", t, t, {"delta_mm": config.step_mm}) for t in missed_s]
    anomalies += [Anomaly("extra_step", t, t, {"delta_mm": config.step_mm}) for t in extra_s]

    test_span_s = 2 * _TEST_QUIET_S + 2 * _TEST_RAMP_S + _TEST_HOLD_S
    tests_s = tests_s[tests_s + test_span_s <= horizon_s]
    periodic_s = np.arange(0.0, horizon_s * cal.scale, config.periodic_every_s) / cal.scale
    around = np.concatenate([steps.t_s, probe_s])
    lo = [around - config.window_before_s, tests_s, gait_s, periodic_s]
    hi = [around + config.window_after_s, tests_s + test_span_s, gait_s + _GAIT_BOUT_S]
    hi.append(periodic_s + config.periodic_window_s)
    if overload_s is not None:
        lo.append(np.array([overload_s - _OVERLOAD_WINDOW_S[0]]))
        hi.append(np.array([overload_s + _OVERLOAD_WINDOW_S[1]]))
    tests = np.column_stack([tests_s, tests_s + test_span_s])
    segments = _segments(np.concatenate(lo), np.concatenate(hi), tests, horizon_s)
    lengths = np.array([[0.0, s.end_s - s.start_s] for s in segments]).reshape(-1)

    grid_days = np.arange(0.0, float(cal.day(horizon_s)) + 1.0, 0.02)
    grid_ratio = regenerate_ratio(
        grid_days, sc.healing_curve, consolidation_day=consolidation_day, healed_day=healed_day
    )
    phases = [("osteotomy", 0.0), ("latency", 0.0), ("distraction", float(steps.t_s[0]))]
    phases.append(("consolidation", float(steps.t_s[-1] + steps.ramp_s[-1])))
    phases.append(("removal", removal_s))
    timeline = Timeline(
        config=config,
        scenario=sc,
        physics=physics,
        start_ns=start_ns,
        end_s=horizon_s,
        steps=steps,
        step_source=[config.step_source if p else "manual" for p in is_prescribed],
        step_prescribed=is_prescribed.astype(bool),
        missed_s=missed_s,
        probes=probes,
        tests_s=tests_s,
        gait_s=gait_s,
        overload_s=overload_s,
        phases=[(name, t) for name, t in phases if t <= horizon_s],
        anomalies=sorted((a for a in anomalies if a.onset_s <= horizon_s), key=lambda a: a.onset_s),
        segments=segments,
        consolidation_day=consolidation_day,
        healed_day=healed_day,
        recorded_cum_s=np.cumsum(lengths),
        release=release,
        segment_edges_s=np.array([[s.start_s, s.end_s] for s in segments]).reshape(-1),
        ratio_grid=(grid_days, grid_ratio),
    )
    return _battery_cut(timeline)


def _battery_cut(timeline: Timeline) -> Timeline:
    # A flat battery ends the recording: cut at the first segment that would start empty.
    starts = np.array([s.start_s for s in timeline.segments])
    if len(starts) == 0:
        return timeline
    empty = np.flatnonzero(timeline.battery_pct(starts) <= 0.0)
    if len(empty) == 0:
        return timeline
    cut = int(empty[0])
    end_s = float(starts[cut])
    return replace(
        timeline,
        end_s=end_s,
        segments=timeline.segments[:cut],
        recorded_cum_s=timeline.recorded_cum_s[: 2 * cut],
        segment_edges_s=timeline.segment_edges_s[: 2 * cut],
        tests_s=timeline.tests_s[timeline.tests_s < end_s],
        phases=[p for p in timeline.phases if p[1] <= end_s] + [("battery_depleted", end_s)],
        anomalies=[a for a in timeline.anomalies if a.onset_s <= end_s],
    )
