"""The emulator's streams: reproducible, ordered, physically shaped, and showing each scenario."""

import functools
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devices.codec import encode_event, encode_frame_json
from devices.contract import Frame
from devices.emulator.generator import DeviceConfig, Emitted, generate
from devices.emulator.groundtruth import dumps, ground_truth, write_ground_truth
from devices.emulator.physics import bachmeier_coefficients
from devices.emulator.scenarios import SCENARIOS
from devices.emulator.timeline import Timeline, build_timeline

START_NS = 1_760_000_000 * 10**9  # 08:53:20 UTC
DAY_NS = 86_400 * 10**9
S = 10**9


@dataclass(frozen=True)
class Run:
    config: DeviceConfig
    end_ns: int
    emitted: list[Emitted]
    truth: list[dict[str, Any]]
    timeline: Timeline

    def frames(self) -> list[Frame]:
        return [e.frame for e in self.emitted if e.frame is not None]

    def events(self, kind: str) -> list[Any]:
        return [e.event for e in self.emitted if e.event is not None and e.event.type == kind]

    def samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every sample once (duplicates dropped), in device-clock time order."""
        unique = {(f.seq, f.t0_ns): f for f in self.frames()}
        frames = sorted(unique.values(), key=lambda f: f.t0_ns)
        t_ns = np.concatenate([f.timestamps_ns() for f in frames])
        force = np.concatenate([f.force_n for f in frames])
        disp = np.concatenate([f.disp_mm for f in frames])
        return t_ns, force, disp

    def anomaly(self, kind: str) -> dict[str, Any]:
        (record,) = [r for r in self.truth if r["type"] == "anomaly" and r["kind"] == kind]
        return record

    def transported(self, fate: str) -> list[dict[str, Any]]:
        return [r for r in self.truth if r["type"] == "transport" and r["fate"] == fate]


@functools.cache
def run(scenario: str, *, target_mm: float = 5.0, days: float = 30.0, seed: int = 7) -> Run:
    config = DeviceConfig(
        device="DX-0001",
        hub="HUB-A",
        scenario=scenario,
        rate_hz=10.0,
        target_mm=target_mm,
        seed=seed,
    )
    end_ns = START_NS + round(days * DAY_NS)
    emitted = list(generate(config, start_ns=START_NS, end_ns=end_ns))
    truth = list(ground_truth(config, start_ns=START_NS, end_ns=end_ns))
    timeline = build_timeline(config, start_ns=START_NS, end_ns=end_ns)
    return Run(config, end_ns, emitted, truth, timeline)


def _digest(emitted: list[Emitted]) -> str:
    h = hashlib.sha256()
    for e in emitted:
        h.update(str(e.t_ns).encode())
        if e.frame is not None:
            h.update(encode_frame_json(e.frame))
        elif e.event is not None:
            h.update(encode_event(e.event))
        else:
            h.update(repr(e.online).encode())
    return h.hexdigest()


def _window(t_ns: np.ndarray, values: np.ndarray, lo_ns: int, hi_ns: int) -> np.ndarray:
    return values[(t_ns >= lo_ns) & (t_ns < hi_ns)]


def _test_slopes(r: Run, channel: str) -> list[tuple[float, float]]:
    """Per load test: (day, slope): +d force / d ref_load (the load share) for "force_n", and
    -d disp / d ref_load (the device's compliance times the share, mm/N) for "disp_mm"."""
    by_test: dict[int, list[Frame]] = {}
    for f in r.frames():
        if f.ref_load_n is not None:
            by_test.setdefault((f.t0_ns - START_NS) // DAY_NS, []).append(f)
    out = []
    for day, frames in sorted(by_test.items()):
        ref = np.concatenate([f.ref_load_n for f in frames if f.ref_load_n is not None])
        y = np.concatenate([getattr(f, channel) for f in frames])
        slope = float(np.polyfit(ref, y, 1)[0])
        out.append((float(day), slope if channel == "force_n" else -slope))
    return out


def _fit_tau_s(t_s: np.ndarray, force_n: np.ndarray) -> float:
    """Best single-exponential time constant (grid search, linear amplitudes)."""
    best = (np.inf, 0.0)
    for tau_s in np.geomspace(20.0, 1500.0, 500):
        basis = np.column_stack([np.ones_like(t_s), np.exp(-t_s / tau_s)])
        _, residual, *_ = np.linalg.lstsq(basis, force_n, rcond=None)
        best = min(best, (float(residual[0]), float(tau_s)))
    return best[1]


# --- reproducibility and the shape of the stream -----------------------------------------------


def test_same_seed_gives_byte_identical_output(tmp_path: Path) -> None:
    """Two runs with the same seed encode to the same bytes, ground truth included."""
    config = DeviceConfig(device="DX-0002", hub="HUB-A", rate_hz=5.0, target_mm=2.0, seed=11)
    kwargs = {"start_ns": START_NS, "end_ns": START_NS + 12 * DAY_NS}
    first = _digest(list(generate(config, **kwargs)))
    second = _digest(list(generate(config, **kwargs)))
    other = _digest(list(generate(DeviceConfig(**{**config.__dict__, "seed": 12}), **kwargs)))
    assert first == second
    assert first != other
    write_ground_truth(tmp_path / "a.jsonl", config, **kwargs)
    write_ground_truth(tmp_path / "b.jsonl", config, **kwargs)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_items_come_in_publish_order_and_never_after_now() -> None:
    """Publish times never decrease, and neither they nor any sample lie after end_ns."""
    r = run("normal")
    times = [e.t_ns for e in r.emitted]
    assert times == sorted(times)
    assert times[-1] <= r.end_ns
    assert max(f.t_last_ns for f in r.frames()) <= r.end_ns


def test_frames_never_cross_a_recording_window() -> None:
    """Every frame lies inside one recording segment and holds at most frame_samples samples."""
    r = run("normal")
    starts = np.array([r.timeline.wall_ns(s.start_s) for s in r.timeline.segments])
    ends = np.array([r.timeline.wall_ns(s.end_s) for s in r.timeline.segments])
    for f in r.frames():
        k = int(np.searchsorted(starts, f.t0_ns, side="right")) - 1
        assert starts[k] <= f.t0_ns
        assert f.t_last_ns <= ends[k]
        assert 1 <= f.n <= r.config.frame_samples


def test_normal_stream_has_contiguous_seq_and_no_faults() -> None:
    """In normal healing seq counts up by one with no gap and the device reports no fault."""
    r = run("normal")
    seqs = [f.seq for f in r.frames()]
    assert seqs == list(range(len(seqs)))
    assert r.events("fault") == []
    assert len(r.events("distraction_step")) == 20


def test_load_test_frames_carry_the_reference_load_between_events() -> None:
    """ref_load_n is present exactly on frames between load_test_start and load_test_end."""
    r = run("normal")
    starts = [e.t_ns for e in r.events("load_test_start")]
    ends = [e.t_ns for e in r.events("load_test_end")]
    assert len(starts) == len(ends) > 20
    for f in r.frames():
        k = int(np.searchsorted(starts, f.t0_ns, side="right")) - 1
        inside = k >= 0 and f.t_last_ns <= ends[k]
        assert (f.ref_load_n is not None) == inside


def test_compressed_time_finishes_the_treatment_before_now() -> None:
    """With time_scale 50 a whole treatment fits in a day and nothing is stamped after end_ns."""
    config = DeviceConfig(
        device="DX-0003", hub="HUB-B", rate_hz=5.0, target_mm=5.0, time_scale=50.0
    )
    end_ns = START_NS + DAY_NS
    emitted = list(generate(config, start_ns=START_NS, end_ns=end_ns))
    truth = list(ground_truth(config, start_ns=START_NS, end_ns=end_ns))
    assert [r["phase"] for r in truth if r["type"] == "phase"][-1] == "removal"
    assert max(e.t_ns for e in emitted) <= end_ns
    assert len([e for e in emitted if e.event and e.event.type == "distraction_step"]) == 20


@pytest.mark.parametrize(
    ("field", "value"),
    [("rate_hz", 0.5), ("rate_hz", 1001.0), ("frame_samples", 0), ("scenario", "nope")],
    ids=["rate-low", "rate-high", "no-samples", "unknown-scenario"],
)
def test_config_rejects_values_out_of_range(field: str, value: object) -> None:
    """A DeviceConfig with a value out of range cannot be built."""
    with pytest.raises(ValueError, match=field if field != "scenario" else "unknown scenario"):
        DeviceConfig(device="DX-0001", hub="HUB-A", **{field: value})  # type: ignore[arg-type]


def test_mandible_steps_follow_its_protocol() -> None:
    """A mandible device turns 2 x 0.5 mm a day with its own tissue stiffness (36 N per turn)."""
    config = DeviceConfig(
        device="DX-0003",
        hub="HUB-B",
        site="mandible",
        rate_hz=5.0,
        steps_per_day=2,
        target_mm=3.0,
        step_source="manual",
    )
    kwargs = {"start_ns": START_NS, "end_ns": START_NS + 12 * DAY_NS}
    steps = [
        e.event
        for e in generate(config, **kwargs)
        if e.event and e.event.type == "distraction_step"
    ]
    truth = [x for x in ground_truth(config, **kwargs) if x["type"] == "step"]
    assert [(s.delta_mm, s.source) for s in steps] == [(0.5, "manual")] * 6
    assert {x["k_inst_n_per_mm"] for x in truth} == {72.0}


# --- the published shapes -----------------------------------------------------------------------


def test_peak_and_residual_force_grow_to_about_300_n() -> None:
    """Peak force per step and residual force rise along a 50 mm tibia lengthening to ~300 N."""
    r = run("normal", target_mm=50.0, days=58.0)
    t_ns, force, _ = r.samples()
    steps = [e.t_ns for e in r.events("distraction_step")]
    assert len(steps) == 200
    peaks, residuals = [], []
    for number in (10, 50, 100, 150, 200):
        t0 = steps[number - 1]
        residuals.append(float(np.mean(_window(t_ns, force, t0 - 25 * S, t0))))
        peaks.append(float(np.max(_window(t_ns, force, t0, t0 + 30 * S))))
    assert peaks == sorted(peaks)
    assert residuals == sorted(residuals)
    assert 250.0 < residuals[-1] < 350.0  # Simpson 1996: ~300 N
    assert 250.0 < peaks[-1] < 380.0


@pytest.mark.parametrize("number", [10, 30], ids=["step-10", "step-30"])
def test_slow_relaxation_time_constant_is_in_the_published_range(number: int) -> None:
    """tau_s fitted on emulator output after step i is within 25 % of 7.42 i + 60.2 s."""
    r = run("normal", target_mm=50.0, days=58.0)
    t_ns, force, _ = r.samples()
    t0 = r.events("distraction_step")[number - 1].t_ns
    keep = (t_ns >= t0 + 10 * S) & (t_ns < t0 + 600 * S)
    tau_s = _fit_tau_s((t_ns[keep] - t0) / 1e9, force[keep])
    expected_s = float(bachmeier_coefficients([number])[4][0])
    assert tau_s == pytest.approx(expected_s, rel=0.25)
    truth = [x for x in r.truth if x["type"] == "step" and x["number"] == number]
    assert truth[0]["tau_slow_s"] == pytest.approx(expected_s)


def test_load_share_falls_below_ten_percent_in_normal_healing() -> None:
    """The load share measured in daily tests starts near 1 and ends below 0.1."""
    shares = [share for _, share in _test_slopes(run("normal"), "force_n")]
    assert shares[0] > 0.9
    assert shares[-1] < 0.1
    truth = [x["load_share"] for x in run("normal").truth if x["type"] == "load_share"]
    assert truth[-1] == pytest.approx(shares[-1], abs=0.05)


def test_load_share_stays_high_in_nonunion() -> None:
    """In a nonunion the measured load share never falls below 0.7."""
    shares = [share for _, share in _test_slopes(run("nonunion"), "force_n")]
    assert min(shares) > 0.7


def test_delayed_union_shares_more_load_than_normal_late_on() -> None:
    """Late in consolidation a delayed union still puts more load on the device than normal."""
    delayed = dict(_test_slopes(run("delayed_union"), "force_n"))
    normal = dict(_test_slopes(run("normal"), "force_n"))
    day = max(set(delayed) & set(normal))
    assert normal[day] < 0.1
    assert delayed[day] > 0.25


def _unloaded_force(r: Run) -> np.ndarray:
    """Force samples outside walking bouts and weight-bearing tests: the distraction force."""
    t_ns, force, _ = r.samples()
    loaded = np.zeros(len(t_ns), dtype=bool)
    for start_s, span_s in [(t, 60.0) for t in r.timeline.gait_s] + [
        (t, 26.0) for t in r.timeline.tests_s
    ]:
        start_ns = r.timeline.wall_ns(float(start_s))
        loaded |= (t_ns >= start_ns) & (t_ns < start_ns + round(span_s * S))
    return force[~loaded]


def test_premature_consolidation_passes_200_n_within_two_weeks() -> None:
    """Premature consolidation drives the force above 200 N by week 2 of distraction; normal not."""
    premature = _unloaded_force(run("premature_consolidation", target_mm=50.0, days=21.0))
    normal = _unloaded_force(run("normal", target_mm=50.0, days=21.0))
    assert premature.max() > 200.0
    assert normal.max() < 120.0


def test_weight_bearing_adds_to_the_force_and_shortens_the_device() -> None:
    """In every load test force rises by share x load and disp falls by share x load / k_device."""
    r = run("normal", target_mm=20.0, days=46.0)
    truth = {(x["t_ns"] - START_NS) // DAY_NS: x for x in r.truth if x["type"] == "load_share"}
    shares = _test_slopes(r, "force_n")
    compliance = dict(_test_slopes(r, "disp_mm"))
    assert len(shares) > 30
    for day, share in shares:
        expected = truth[int(day)]
        assert share == pytest.approx(expected["load_share"], abs=0.03)
        k_dev = expected["k_device_n_per_mm"]
        assert compliance[day] == pytest.approx(expected["load_share"] / k_dev, abs=1e-4)


def test_force_never_goes_below_zero_in_normal_healing() -> None:
    """Along a normal 20 mm lengthening the force stays above zero but for sensor noise."""
    r = run("normal", target_mm=20.0, days=46.0)
    _, force, _ = r.samples()
    # Before the first step the device carries nothing: noise (0.5 N), drift and temperature.
    assert force.min() > -4.0


# --- each scenario is visible in its stream -----------------------------------------------------


def _separation(r: Run) -> None:
    t_ns, force, _ = r.samples()
    onset = r.anomaly("separation")["onset_ns"]
    before = np.mean(_window(t_ns, force, onset - 40 * S, onset - 12 * S))
    after = np.mean(_window(t_ns, force, onset + 60 * S, onset + 120 * S))
    assert after < 0.5 * before


def _loosening(r: Run) -> None:
    onset_day = (r.anomaly("loosening")["onset_ns"] - START_NS) / DAY_NS
    compliance = dict(_test_slopes(r, "disp_mm"))
    normal = dict(_test_slopes(run("normal", target_mm=20.0, days=46.0), "disp_mm"))
    late = [d for d in compliance if d > onset_day + 10]
    assert late
    assert all(compliance[d] > 1.2 * normal[d] for d in late)
    # Hysteresis: displacement lags load, so a walking bout traces a loop with an area.
    assert _gait_loop_area(r, late[-1]) > 5 * _gait_loop_area(
        run("normal", target_mm=20.0, days=46.0), late[-1]
    )


def _gait_loop_area(r: Run, day: float) -> float:
    """|closed integral of disp dF| over the first walking bout of `day` (N mm)."""
    t_ns, force, disp = r.samples()
    start_ns = r.timeline.wall_ns(float(r.timeline.gait_s[int(day) * 3 - 3]))
    # Whole 1.1 s gait cycles only, so the path ends where it started.
    keep = (t_ns >= start_ns) & (t_ns <= start_ns + round(54 * 1.1 * S))
    d, f = disp[keep] - disp[keep].mean(), force[keep]
    # Trapezoids, so that a straight line (no hysteresis) encloses no area.
    return abs(float(np.sum(0.5 * (d[:-1] + d[1:]) * np.diff(f))))


def _overload(r: Run) -> None:
    t_ns, force, _ = r.samples()
    onset = r.anomaly("overload")["onset_ns"]
    assert abs(int(t_ns[np.argmax(force)]) - onset) < S
    assert force.max() > 1500.0
    assert run("normal", target_mm=20.0, days=46.0).samples()[1].max() < 700.0


def _reversed(r: Run) -> None:
    header = r.truth[0]
    assert header["force_polarity"] == -1.0
    assert header["expected_flags"] == ["sign_inconsistent"]
    normal = run("normal", target_mm=20.0, days=46.0)
    # The same device mounted the other way: steps and weight-bearing both lower the force.
    shares = [share for _, share in _test_slopes(r, "force_n")]
    assert max(shares) < 0.0
    assert _unloaded_force(r).max() < 4.0
    assert _unloaded_force(r).min() == pytest.approx(-_unloaded_force(normal).max(), rel=0.05)


def _missed(r: Run) -> None:
    missed = [x for x in r.truth if x["type"] == "anomaly" and x["kind"] == "missed_step"]
    assert missed
    assert len(r.events("distraction_step")) == 80 - len(missed)


def _extra(r: Run) -> None:
    extra = [x for x in r.truth if x["type"] == "anomaly" and x["kind"] == "extra_step"]
    manual = [e for e in r.events("distraction_step") if e.source == "manual"]
    assert extra
    assert len(manual) == len(extra)
    assert len(r.events("distraction_step")) == 80 + len(extra)


def _dropout(r: Run) -> None:
    a = r.anomaly("sensor_dropout")
    codes = [e.code for e in r.events("fault")]
    assert codes == ["sensor_dropout", "sensor_recovered"]
    assert not [f for f in r.frames() if a["onset_ns"] <= f.t0_ns < a["end_ns"]]
    seqs = [f.seq for f in r.frames()]
    assert seqs == list(range(len(seqs)))


def _in_fault(r: Run, kind: str) -> tuple[np.ndarray, np.ndarray]:
    t_ns, force, _ = r.samples()
    a = r.anomaly(kind)
    inside = (t_ns >= a["onset_ns"]) & (t_ns < a["end_ns"])
    return force[inside], force[~inside]


def _spikes(r: Run) -> None:
    inside, outside = _in_fault(r, "sensor_spikes")
    assert np.sum(np.abs(np.diff(inside)) > 250.0) > 10
    assert np.sum(np.abs(np.diff(outside)) > 250.0) == 0


def _flatline(r: Run) -> None:
    inside, outside = _in_fault(r, "sensor_flatline")
    assert len(inside) > 1000
    assert len(np.unique(inside)) == 1
    assert len(np.unique(outside)) > 100


def _saturation(r: Run) -> None:
    inside, outside = _in_fault(r, "sensor_saturation")
    assert np.sum(np.abs(inside) == r.config.force_full_scale_n) > 100
    assert np.abs(outside).max() < r.config.force_full_scale_n


def _drift(r: Run) -> None:
    t_ns, force, _ = r.samples()
    a = r.anomaly("sensor_drift")
    before = np.median(_window(t_ns, force, a["onset_ns"] - DAY_NS // 4, a["onset_ns"]))
    late = np.median(_window(t_ns, force, a["end_ns"] - DAY_NS // 4, a["end_ns"]))
    assert late - before > 50.0


def _loss(r: Run) -> None:
    lost = r.transported("lost")
    seqs = sorted(f.seq for f in r.frames())
    gaps = int(np.sum(np.diff(seqs) - 1))
    assert lost
    assert gaps == len(lost)


def _duplicate(r: Run) -> None:
    duplicated = r.transported("duplicated")
    counts = Counter((f.seq, f.t0_ns) for f in r.frames())
    assert duplicated
    assert sum(c - 1 for c in counts.values()) == len(duplicated)


def _reorder(r: Run) -> None:
    reordered = {x["seq"] for x in r.transported("reordered")}
    seqs = [f.seq for f in r.frames()]
    swapped = {a for a, b in itertools.pairwise(seqs) if a > b}
    assert reordered
    assert swapped == {s + 1 for s in reordered}


def _late(r: Run) -> None:
    late = r.transported("late")
    delayed = [e for e in r.emitted if e.frame and e.t_ns - e.frame.t_last_ns >= 30 * S]
    assert late
    assert len(delayed) == len(late)


def _clock_jump(r: Run) -> None:
    a = r.anomaly("clock_jump")
    assert len(r.events("reboot")) == 1
    frames = [e for e in r.emitted if e.frame is not None]
    behind = [e for e in frames if e.t_ns - e.frame.t_last_ns > 3000 * S]  # type: ignore[union-attr]
    assert behind
    assert all(a["onset_ns"] <= e.t_ns < a["end_ns"] + S for e in behind)
    assert [e.frame.seq for e in frames].count(0) == 2  # type: ignore[union-attr]


def _hub_offline(r: Run) -> None:
    a = r.anomaly("hub_offline")
    status = [(e.t_ns, e.online) for e in r.emitted if e.kind == "status"]
    assert status == [(a["onset_ns"], False), (a["end_ns"], True)]
    assert not [e for e in r.emitted if a["onset_ns"] < e.t_ns < a["end_ns"]]
    forwarded = [e for e in r.emitted if e.frame and e.t_ns == a["end_ns"]]
    t0s = [e.frame.t0_ns for e in forwarded]  # type: ignore[union-attr]
    assert len(forwarded) > 100
    assert t0s == sorted(t0s)


_CHECKS: dict[str, tuple[Callable[[Run], None], float, float]] = {
    "separation": (_separation, 20.0, 46.0),
    "loosening": (_loosening, 20.0, 46.0),
    "overload": (_overload, 20.0, 46.0),
    "missed_steps": (_missed, 20.0, 46.0),
    "extra_steps": (_extra, 20.0, 46.0),
    "sensor_dropout": (_dropout, 5.0, 30.0),
    "sensor_spikes": (_spikes, 5.0, 30.0),
    "sensor_flatline": (_flatline, 5.0, 30.0),
    "sensor_saturation": (_saturation, 5.0, 30.0),
    "sensor_drift": (_drift, 5.0, 30.0),
    "transport_loss": (_loss, 5.0, 30.0),
    "transport_duplicate": (_duplicate, 5.0, 30.0),
    "transport_reorder": (_reorder, 5.0, 30.0),
    "transport_late": (_late, 5.0, 30.0),
    "clock_jump": (_clock_jump, 5.0, 30.0),
    "hub_offline": (_hub_offline, 5.0, 30.0),
    "reversed_force_sensor": (_reversed, 20.0, 46.0),
}


@pytest.mark.parametrize("name", sorted(_CHECKS), ids=str)
def test_scenario_is_visible_in_its_stream(name: str) -> None:
    """Each anomaly scenario leaves its signature in the published stream."""
    check, target_mm, days = _CHECKS[name]
    check(run(name, target_mm=target_mm, days=days))


def test_every_scenario_is_covered_and_recorded() -> None:
    """Every scenario is tested here, and each injected anomaly has a ground-truth record."""
    biology = {"normal", "premature_consolidation", "delayed_union", "nonunion"}
    assert set(SCENARIOS) == biology | set(_CHECKS)
    for name in _CHECKS:
        r = run(name, target_mm=_CHECKS[name][1], days=_CHECKS[name][2])
        kinds = {x["kind"] for x in r.truth if x["type"] == "anomaly"}
        anomaly = SCENARIOS[name].anomaly
        assert anomaly is None or anomaly in kinds
        assert r.truth[0]["expected_flags"] == list(SCENARIOS[name].expected_flags)


def test_ground_truth_is_sorted_json_lines() -> None:
    """Ground-truth records are ordered by t_ns and each one dumps to a single JSON line."""
    truth = run("transport_loss").truth
    times = [x["t_ns"] for x in truth]
    assert times == sorted(times)
    assert truth[0]["type"] == "device"
    assert all("\n" not in dumps(x) for x in truth)


@pytest.mark.parametrize("seed", [7, 3], ids=["ramp-1s", "ramp-65s"])
def test_steps_ramp_over_the_drawn_time_and_ground_truth_records_it(seed: int) -> None:
    """disp_mm ramps each step over the device's drawn ramp, which the ground truth records."""
    r = run("normal", seed=seed)
    header = r.truth[0]
    ramp_s = header["step_ramp_s"]
    assert ramp_s == pytest.approx(r.timeline.physics.step_ramp_s, abs=1e-6)
    steps = [x for x in r.truth if x["type"] == "step"]
    assert {x["ramp_s"] for x in steps} == {round(ramp_s, 6)}
    assert header["tau_fast_s"] == pytest.approx(steps[0]["tau_fast_s"])
    t_ns, _, disp = r.samples()
    t0 = steps[10]["t_ns"]
    before = float(np.mean(_window(t_ns, disp, t0 - 20 * S, t0)))
    t_rel_s = (t_ns - t0) / 1e9
    moving = (t_rel_s > -1.0) & (t_rel_s < ramp_s + 5.0)
    rose = disp[moving] - before
    # Time from 10 % to 90 % of the step, against 80 % of the ramp (0.1 s samples, 2 um noise).
    t_10 = t_rel_s[moving][np.argmax(rose > 0.1 * 0.25)]
    t_90 = t_rel_s[moving][np.argmax(rose > 0.9 * 0.25)]
    assert t_90 - t_10 == pytest.approx(0.8 * ramp_s, rel=0.03, abs=0.25)
