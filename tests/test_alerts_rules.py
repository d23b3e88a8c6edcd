"""The alert rules on plain values: each fires on its anomaly and stays quiet on normal input."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alerts.inputs import parse_estimate
from alerts.model import Observation, Severity
from alerts.rules import RuleBook, UnknownDeviceError
from alerts.thresholds import AlertOverrides, load_overrides
from alerts.trend import slope_per_day, slope_with_error
from devices.contract import Battery, Fault, Frame, HubStatus, Reboot
from devices.registry import Registry
from osteotel.errors import ConfigError

S = 1_000_000_000
DAY = 86_400 * S
T0 = 1_700_000_000 * S
REGISTRY = Registry.load(Path(__file__).parent.parent / "deploy" / "registry.example.toml")


def book(overrides: AlertOverrides | None = None) -> RuleBook:
    return RuleBook(REGISTRY, overrides, now_ns=T0)


def est(kind: str, t_ns: int, device: str = "DX-0001", **fields: Any) -> Any:
    import json  # noqa: PLC0415

    hub = REGISTRY.devices[device].hub
    patient = REGISTRY.devices[device].patient
    body = {"v": 1, "device": device, "hub": hub, "patient": patient, "t_ns": t_ns, "kind": kind}
    return parse_estimate(json.dumps(body | fields).encode())


def fired(observations: list[Observation], rule: str) -> list[Observation]:
    return [o for o in observations if o.rule == rule and o.trigger]


@pytest.mark.parametrize(
    ("peak_n", "severity"),
    [(650.0, Severity.WARNING), (1200.0, Severity.CRITICAL)],
    ids=["warning", "critical"],
)
def test_high_distraction_force_fires(peak_n: float, severity: Severity) -> None:
    """A step peak above the limb limits fires distraction_force with the matching severity."""
    [o] = fired(book().estimate(est("step", T0, f_peak_n=peak_n)), "distraction_force")
    assert (o.severity, o.value) == (severity, peak_n)


def test_distraction_force_is_the_peak_the_step_reached() -> None:
    """The fitted peak at the ramp's end is the tension: 1,020 N fires critical; a slow ramp's
    sudden-step equivalent (f_inst_n 1,200 N) over a 300 N peak it never reached does not."""
    tense = est("step", T0, f_peak_n=1020.0, f_inst_n=1100.0, f_residual_n=960.0)
    [o] = fired(book().estimate(tense), "distraction_force")
    assert (o.severity, o.value) == (Severity.CRITICAL, 1020.0)
    slow = est("step", T0, f_peak_n=300.0, f_inst_n=1200.0, f_residual_n=250.0)
    assert fired(book().estimate(slow), "distraction_force") == []


def test_normal_force_is_quiet() -> None:
    """A 300 N peak, the adult tibia's usual end value, does not fire."""
    assert fired(book().estimate(est("step", T0, f_peak_n=300.0)), "distraction_force") == []


def test_mandible_has_lower_force_limits() -> None:
    """A 180 N peak fires on a mandibular device (failure near 236 N) but not on a tibia."""
    rules = book()
    assert fired(rules.estimate(est("step", T0, "DX-0003", f_peak_n=180.0)), "distraction_force")
    assert not fired(
        rules.estimate(est("step", T0, "DX-0001", f_peak_n=180.0)), "distraction_force"
    )


def test_force_hysteresis() -> None:
    """Just under the limit is neither a trigger nor a clear; well under it clears."""
    rules = book()
    rules.estimate(est("step", T0, f_peak_n=650.0))
    [between] = rules.estimate(est("step", T0 + S, f_peak_n=580.0))
    assert (between.trigger, between.clear) == (False, False)
    [below] = rules.estimate(est("step", T0 + 2 * S, f_peak_n=500.0))
    assert below.clear


def test_device_override_changes_limit() -> None:
    """A per-device override in the registry lowers the warning limit for that device only."""
    overrides = AlertOverrides(device={"DX-0001": {"force_warning_n": 250.0}})
    assert fired(book(overrides).estimate(est("step", T0, f_peak_n=300.0)), "distraction_force")


def test_overrides_are_read_from_registry_file(tmp_path: Path) -> None:
    """The [alerts] tables and a device's alerts table are read and merged in order."""
    text = (Path(__file__).parent.parent / "deploy" / "registry.example.toml").read_text()
    text = text.replace('id = "DX-0002"', 'id = "DX-0002"\nalerts = { silent_after_s = 60.0 }')
    text += "\n[alerts]\nsilent_after_s = 1800.0\n[alerts.site.mandible]\nforce_warning_n = 120.0\n"
    path = tmp_path / "registry.toml"
    path.write_text(text)
    overrides = load_overrides(path)
    devices = REGISTRY.devices
    assert overrides.for_device(devices["DX-0001"]).silent_after_s == 1800.0
    assert overrides.for_device(devices["DX-0002"]).silent_after_s == 60.0
    assert overrides.for_device(devices["DX-0003"]).force_warning_n == 120.0


def test_unknown_override_key_is_a_config_error(tmp_path: Path) -> None:
    """A misspelt threshold in the registry fails at load, naming the key."""
    path = tmp_path / "registry.toml"
    path.write_text("[alerts]\nforce_warnig_n = 1.0\n")
    with pytest.raises(ConfigError, match="force_warnig_n"):
        load_overrides(path)


RAMP_S = 0.5  # the drive's ramp of every step here


def steps(rules: RuleBook, residuals: list[float], *, k: float = 50.0) -> list[Observation]:
    out: list[Observation] = []
    for i, f in enumerate(residuals):
        out += rules.estimate(
            est(
                "step",
                T0 + i * DAY // 4,
                k_inst_n_per_mm=k,
                k_peak_n_per_mm=k,
                ramp_s=RAMP_S,
                f_residual_n=f,
                f_peak_n=f + 20,
            )
        )
    return out


# Step-to-step scatter of fitted k_inst on a soft regenerate: about +/- 15 %.
SCATTER = [1.0, 1.15, 0.88, 1.05, 0.9, 1.12, 0.95, 1.0, 0.86, 1.1, 0.97, 1.04] * 3


def growing(rules: RuleBook, growth_per_day: float, n: int = 12) -> list[Observation]:
    """Four steps a day whose k_inst grows by `growth_per_day`, with SCATTER."""
    out: list[Observation] = []
    for i in range(n):
        k = 16.0 * (1.0 + growth_per_day) ** (i / 4) * SCATTER[i]
        out += rules.estimate(
            est("step", T0 + i * DAY // 4, k_inst_n_per_mm=k, f_residual_n=10.0 + i)
        )
    return out


@pytest.mark.parametrize(
    ("growth_per_day", "fires"),
    [(0.25, True), (0.03, False), (0.10, False), (-0.05, False)],
    ids=["premature-25pct", "normal-3pct", "at-limit", "softening"],
)
def test_premature_consolidation_against_own_trajectory(growth_per_day: float, fires: bool) -> None:
    """Stiffness growing 25 %/day fires premature_consolidation; 3 %/day or at 10 %/day not."""
    out = growing(book(), growth_per_day, n=12 if fires else 36)
    assert bool(fired(out, "premature_consolidation")) is fires


def test_premature_consolidation_needs_eight_steps() -> None:
    """Seven fast-growing steps are too few to judge a growth rate."""
    assert [o for o in growing(book(), 0.5, n=7) if o.rule == "premature_consolidation"] == []


def test_premature_consolidation_value_is_the_growth_rate() -> None:
    """The alert's value is the fitted relative growth per day."""
    rules = book()
    out: list[Observation] = []
    for i in range(8):
        out += rules.estimate(est("step", T0 + i * DAY // 4, k_inst_n_per_mm=16.0 * 1.5 ** (i / 4)))
    [o] = fired(out, "premature_consolidation")
    assert o.value == pytest.approx(0.5)


def low(t_ns: int, k_peak: float, ramp_s: float = RAMP_S) -> Any:
    """A step whose peak stiffness is `k_peak`; its k_inst is no measurement (`low_snr`)."""
    return est(
        "step", t_ns, k_inst_n_per_mm=k_peak, k_peak_n_per_mm=k_peak, ramp_s=ramp_s,
        flags=["low_snr"],
    )  # fmt: skip


def test_stiffness_drop_fires_against_own_history() -> None:
    """A step's peak stiffness a third of the patient's recent median fires stiffness_drop
    (critical), whether or not its k_inst is a measurement."""
    rules = book()
    steps(rules, [100.0] * 8, k=60.0)
    [o] = fired(rules.estimate(low(T0 + 3 * DAY, 20.0)), "stiffness_drop")
    assert o.severity is Severity.CRITICAL
    assert o.value == 20.0


def test_stiffness_drop_compares_only_steps_of_a_similar_ramp() -> None:
    """k_peak depends on the drive's ramp: the same tissue driven over a minute instead of
    half a second reads a third of it, and that is no drop; the next minute-long steps are
    judged against each other."""
    rules = book()
    steps(rules, [100.0] * 8, k=60.0)
    out = [o for i in range(3) for o in rules.estimate(low(T0 + (3 + i) * DAY, 20.0, 60.0))]
    assert fired(out, "stiffness_drop") == []
    [o] = fired(rules.estimate(low(T0 + 6 * DAY, 8.0, 60.0)), "stiffness_drop")
    assert o.value == 8.0


def test_stiffness_drop_baseline_stays_frozen() -> None:
    """While a drop alert is active, further low values do not become the new normal."""
    rules = book()
    steps(rules, [100.0] * 8, k=60.0)
    for i in range(10):
        out = rules.estimate(low(T0 + (3 + i) * DAY, 20.0))
    assert not [o for o in out if o.rule == "stiffness_drop" and o.clear]
    [back] = [o for o in rules.estimate(low(T0 + 20 * DAY, 55.0)) if o.rule == "stiffness_drop"]
    assert back.clear


def test_separation_force_drop_fires() -> None:
    """Residual force falling from about 790 N to 150 N fires force_drop."""
    rules = book()
    steps(rules, [790.0] * 8)
    out = rules.estimate(est("step", T0 + 3 * DAY, k_inst_n_per_mm=50.0, f_residual_n=150.0))
    assert fired(out, "force_drop")


def test_small_step_to_step_variation_is_quiet() -> None:
    """Ten percent scatter in residual force and stiffness fires no drop rule."""
    out = steps(book(), [100.0, 110.0, 95.0, 105.0, 90.0, 100.0, 108.0, 92.0, 99.0, 101.0])
    assert not fired(out, "force_drop")
    assert not fired(out, "stiffness_drop")


def daily(rules: RuleBook, day: int, **fields: Any) -> list[Observation]:
    return rules.estimate(est("daily", T0 + day * DAY, **fields))


def test_missed_and_extra_steps() -> None:
    """A day with a missed step fires missed_steps; one with an extra step fires extra_steps."""
    rules = book()
    assert fired(daily(rules, 0, steps_prescribed=4, steps_done=3, missed_steps=1), "missed_steps")
    assert fired(daily(rules, 1, steps_prescribed=4, steps_done=5, extra_steps=1), "extra_steps")
    quiet = daily(rules, 2, steps_prescribed=4, steps_done=4)
    assert not fired(quiet, "missed_steps")
    assert not fired(quiet, "extra_steps")


@pytest.mark.parametrize(
    ("drop_per_day", "fires"), [(0.001, True), (0.01, False)], ids=["stalled", "healing"]
)
def test_delayed_consolidation(drop_per_day: float, fires: bool) -> None:
    """A load share falling 0.7 %/week in consolidation fires; 7 %/week does not."""
    rules = book()
    out: list[Observation] = []
    for day in range(10):
        out += daily(rules, day, phase="consolidation", load_share=0.9 - drop_per_day * day)
    assert bool(fired(out, "delayed_consolidation")) is fires


def test_readiness_follows_the_dsp_and_can_be_withdrawn() -> None:
    """A share of 6 % the DSP has not (yet) found ready raises nothing; the DSP's verdict on
    the second day raises readiness (info); a later usable test that takes it back clears it."""
    rules = book()
    first = est("load_share", T0, share=0.06, share_std=0.01, removal_criterion_met=False)
    assert not fired(rules.estimate(first), "readiness")
    second = est("load_share", T0 + DAY, share=0.06, share_std=0.01, removal_criterion_met=True)
    [o] = fired(rules.estimate(second), "readiness")
    assert o.severity is Severity.INFO
    back = est("load_share", T0 + 2 * DAY, share=0.2, share_std=0.01)
    [cleared] = [x for x in rules.estimate(back) if x.rule == "readiness"]
    assert not cleared.trigger
    assert cleared.clear


def test_a_wrongly_signed_share_raises_no_readiness_but_tells_the_engineers() -> None:
    """A share of -94 % the DSP flagged sign_inconsistent never raises readiness, whatever it
    reads; it raises sign_inconsistent (info), which a usable share clears."""
    rules = book()
    wrong = est(
        "load_share", T0, share=-0.94, share_std=0.01, usable=False,
        flags=["implausible", "sign_inconsistent"], removal_criterion_met=False,
    )  # fmt: skip
    out = rules.estimate(wrong)
    assert fired(out, "readiness") == []
    [o] = fired(out, "sign_inconsistent")
    assert o.severity is Severity.INFO
    right = est("load_share", T0 + DAY, share=0.5, share_std=0.01)
    assert [x.clear for x in rules.estimate(right) if x.rule == "sign_inconsistent"] == [True]


def test_readiness_follows_the_dsp_phase_on_daily_records() -> None:
    """A daily record in phase ready raises readiness (info); a later one back in consolidation
    clears it; a low share in consolidation raises nothing by itself."""
    rules = book()
    low = daily(rules, 0, phase="consolidation", load_share=0.04, load_share_std=0.01)
    assert fired(low, "readiness") == []
    [o] = fired(daily(rules, 1, phase="ready", load_share=0.04), "readiness")
    assert o.severity is Severity.INFO
    [withdrawn] = [x for x in daily(rules, 2, phase="consolidation") if x.rule == "readiness"]
    assert (withdrawn.trigger, withdrawn.clear) == (False, True)


def test_an_unusable_share_neither_raises_nor_clears_readiness() -> None:
    """Once the DSP found the device ready, an unusable test (poor_fit) changes nothing:
    unusable tests never count either way."""
    rules = book()
    ready = est("load_share", T0, share=0.05, share_std=0.01, removal_criterion_met=True)
    assert fired(rules.estimate(ready), "readiness")
    noisy = est(
        "load_share", T0 + DAY, share=0.6, share_std=0.3, usable=False, flags=["poor_fit"],
        removal_criterion_met=True,
    )  # fmt: skip
    assert [x for x in rules.estimate(noisy) if x.rule == "readiness"] == []


def test_a_wrongly_signed_device_never_becomes_ready_on_its_days() -> None:
    """Days the DSP flags sign_inconsistent, with shares of -94 % it did not use, raise the
    engineers' sign_inconsistent (info) and never readiness."""
    rules = book()
    out: list[Observation] = []
    for day in range(5):
        out += rules.estimate(
            est(
                "load_share", T0 + day * DAY + 3600 * S, share=-0.94, share_std=0.02,
                usable=False, flags=["implausible", "sign_inconsistent"],
            )
        )  # fmt: skip
        out += daily(
            rules, day, phase="consolidation", flags=["sign_inconsistent", "unusable_share"],
            n_load_tests=1, n_load_tests_usable=0, projection_status="insufficient_days",
        )  # fmt: skip
    assert fired(out, "readiness") == []
    signs = fired(out, "sign_inconsistent")
    assert len(signs) == 10  # every record says so again; the engine keeps one alert
    assert {o.severity for o in signs} == {Severity.INFO}
    assert "force_gain" in signs[0].summary


@pytest.mark.parametrize(
    ("status", "fires"),
    [("ok", True), ("not_significant", False), ("insufficient_days", False)],
    ids=["ok", "not_significant", "insufficient_days"],
)
def test_delayed_consolidation_reads_a_projection_only_when_its_status_is_ok(
    status: str, fires: bool
) -> None:
    """A projected date beyond the healing index's deadline is late only when the DSP says the
    projection is supported (projection_status ok)."""
    rules = book()
    out: list[Observation] = []
    for day in range(10):
        out += daily(
            rules, day, phase="consolidation", gained_mm=2.0, load_share=0.9 - 0.05 * day,
            projected_ready_ns=T0 + 200 * DAY, projection_status=status,
        )  # fmt: skip
    assert bool(fired(out, "delayed_consolidation")) is fires


def test_a_low_snr_step_is_no_stiffness_drop_and_no_growth() -> None:
    """A step at a third of the patient's k_inst that the DSP flagged low_snr fires no
    stiffness_drop, and fast-growing low_snr steps fire no premature_consolidation."""
    rules = book()
    steps(rules, [100.0] * 8, k=60.0)
    flagged = est("step", T0 + 3 * DAY, k_inst_n_per_mm=20.0, flags=["low_snr"])
    assert fired(rules.estimate(flagged), "stiffness_drop") == []
    rules = book()
    out: list[Observation] = []
    for i in range(12):
        k = 16.0 * 1.5 ** (i / 4)
        out += rules.estimate(est("step", T0 + i * DAY // 4, k_inst_n_per_mm=k, flags=["low_snr"]))
    assert fired(out, "premature_consolidation") == []


def test_step_inputs_take_the_new_fields_and_older_payloads_still_parse() -> None:
    """A step with the issue 12 fields carries them; one without gets NaN and -1."""
    new = est(
        "step", T0, t_onset_ns=T0 - S, ramp_s=2.0, delta_event_mm=0.25, k_inst_std_n_per_mm=3.0,
        k_peak_n_per_mm=40.0, f_inst_n=120.0, flags=["tau_fast_held"],
    )  # fmt: skip
    assert (new.t_onset_ns, new.ramp_s, new.k_inst_std_n_per_mm) == (T0 - S, 2.0, 3.0)
    assert (new.k_peak_n_per_mm, new.f_inst_n, new.delta_event_mm) == (40.0, 120.0, 0.25)
    old = est("step", T0, k_inst_n_per_mm=50.0)
    assert old.t_onset_ns == -1
    assert np.isnan(old.k_inst_std_n_per_mm)
    day = est("daily", T0, projected_ready_ns=T0 + DAY)
    assert (day.projection_status, day.n_load_tests_usable) == ("ok", 0)


def quality(rules: RuleBook, t_s: float, span_s: float, **fields: Any) -> list[Observation]:
    t_ns = T0 + round(t_s * S)
    return rules.estimate(
        est("quality", t_ns, t_start_ns=t_ns, t_end_ns=t_ns + round(span_s * S), **fields)
    )


def test_lone_spike_is_no_sensor_fault() -> None:
    """One frame with one spike, hours from any other problem, raises no sensor_fault."""
    rules = book()
    out = quality(rules, 0, 9.9, n_spikes=1, n_samples=100)
    out += quality(rules, 4 * 3600, 9.9, n_spikes=1, n_samples=100)
    assert not fired(out, "sensor_fault")


def test_spikes_fire_sensor_fault_once_they_persist() -> None:
    """Spiky stretches a minute apart fire sensor_fault once they span 300 s of data."""
    rules = book()
    spiky = {"n_spikes": 2, "n_samples": 100}
    early = [o for t in range(0, 240, 60) for o in quality(rules, t, 10, **spiky)]
    assert not fired(early, "sensor_fault")
    [o] = fired(quality(rules, 290, 10, **spiky), "sensor_fault")
    assert (o.severity, o.for_s) == (Severity.WARNING, 0.0)


@pytest.mark.parametrize(
    "problem",
    [{"flatline": True}, {"n_saturated": 3}, {"n_nonfinite": 1}, {"drift": True}],
    ids=["flatline", "saturation", "non-finite", "drift"],
)
def test_definite_sensor_problem_fires_at_once(problem: dict[str, Any]) -> None:
    """A frozen, saturated, non-finite or drifting reading fires sensor_fault on its record."""
    assert fired(quality(book(), 0, 10, n_samples=100, **problem), "sensor_fault")


def test_sensor_fault_clears_after_a_clean_day() -> None:
    """A daily record without signal_quality clears a firing sensor_fault."""
    rules = book()
    assert fired(quality(rules, 0, 900, n_saturated=5, n_samples=100), "sensor_fault")
    [clear] = [o for o in daily(rules, 1, flags=[]) if o.rule == "sensor_fault"]
    assert clear.clear


def probe(t_ns: int, k_peak: float, r2: float = 0.99, **fields: Any) -> Any:
    """A probe with a converged fit, its peak stiffness `k_peak`, driven over RAMP_S."""
    return est(
        "probe", t_ns, k_peak_n_per_mm=k_peak, ramp_s=RAMP_S, fit_r2=r2, fit_status="ok",
        **fields,
    )  # fmt: skip


def probes(rules: RuleBook, ks: list[float], r2: float) -> list[Observation]:
    out: list[Observation] = []
    for i, k in enumerate(ks):
        out += rules.estimate(probe(T0 + i * DAY, k, r2))
    return out


@pytest.mark.parametrize(
    ("r2", "fires"), [(0.99, True), (0.5, False)], ids=["clean-fit", "noise-fit"]
)
def test_probe_stiffness_drop_needs_a_fit_that_explains_the_probe(r2: float, fires: bool) -> None:
    """A probe's peak stiffness a fifth of the last probes' fires only when its fit has
    R2 >= 0.9 (on the soft regenerate a probe's answer is inside the noise)."""
    out = probes(book(), [100.0, 110.0, 105.0, 20.0], r2)
    assert bool(fired(out, "stiffness_drop")) is fires


def test_probe_stiffness_drop_reads_the_peak_not_k_inst() -> None:
    """The two false drops of normal healing read k_inst at half the truth (56 and 50 N/mm,
    truth ~120) with R2 0.96: their peak stiffness held, and nothing fires. A probe whose
    k_inst is no measurement (`low_snr`, a ramp long against the fast relaxation) but whose
    peak fell to a third does fire."""
    rules = book()
    probes(rules, [112.0, 118.0, 108.0], 0.99)
    half_k_inst = probe(T0 + 3 * DAY, 110.0, 0.96, k_inst_n_per_mm=50.0, flags=["low_snr"])
    assert not fired(rules.estimate(half_k_inst), "stiffness_drop")
    loose = probe(T0 + 4 * DAY, 37.0, 0.96, k_inst_n_per_mm=40.0, flags=["low_snr"])
    assert fired(rules.estimate(loose), "stiffness_drop")


def test_device_loosening_flag_raises_stiffness_drop_until_a_day_without_it() -> None:
    """The daily loosening flag fires stiffness_drop; probes do not clear it, a clean day does."""
    rules = book()
    [o] = fired(daily(rules, 0, flags=["loosening"]), "stiffness_drop")
    assert o.severity is Severity.CRITICAL
    later = probes(rules, [100.0, 110.0, 105.0, 108.0], 0.99)
    assert not [p for p in later if p.rule == "stiffness_drop" and p.clear]
    [clear] = [x for x in daily(rules, 5, flags=[]) if x.rule == "stiffness_drop"]
    assert clear.clear


def test_battery_levels() -> None:
    """Battery below 20 % warns, below 10 % is critical, and it clears at 25 %."""
    rules = book()
    [w] = rules.event("HUB-A", Battery(device="DX-0001", t_ns=T0, pct=15.0))
    assert (w.trigger, w.severity) == (True, Severity.WARNING)
    [c] = rules.event("HUB-A", Battery(device="DX-0001", t_ns=T0, pct=5.0))
    assert c.severity is Severity.CRITICAL
    [ok] = rules.event("HUB-A", Battery(device="DX-0001", t_ns=T0, pct=30.0))
    assert ok.clear


def test_fault_event_fires_and_reboot_clears() -> None:
    """A device fault event fires device_fault; a reboot clears it."""
    rules = book()
    [f] = rules.event("HUB-A", Fault(device="DX-0001", t_ns=T0, code="E12", detail="strain gauge"))
    assert f.trigger
    [r] = rules.event("HUB-A", Reboot(device="DX-0001", t_ns=T0 + S))
    assert r.clear


def test_silent_device_fires_after_its_cadence() -> None:
    """A device not heard from for more than 15 minutes fires device_silent; a message clears."""
    rules = book()
    assert not fired(rules.tick(T0 + 900 * S), "device_silent")
    assert {o.device for o in fired(rules.tick(T0 + 901 * S), "device_silent")} == set(
        REGISTRY.devices
    )
    rules.seen("DX-0001", T0 + 902 * S)
    cleared = [o for o in rules.tick(T0 + 903 * S) if o.device == "DX-0001"]
    assert cleared[0].clear


def test_hub_offline_covers_its_devices() -> None:
    """A hub going offline fires hub_offline, with a for-duration, for each of its devices."""
    out = book().status(HubStatus(hub="HUB-A", online=False, t_ns=T0))
    assert {o.device for o in out} == {"DX-0001", "DX-0002"}
    assert all(o.trigger and o.for_s == 300.0 for o in out)


def frame(seq: int, t_ns: int, peak_n: float) -> Frame:
    force = np.full(100, 10.0)
    force[50] = peak_n
    return Frame(device="DX-0001", seq=seq, t0_ns=t_ns, rate_hz=100.0, force_n=force,
                 disp_mm=np.zeros(100))  # fmt: skip


def test_overload_fires_on_spike_far_above_daily_loading() -> None:
    """After a day of 300 N hourly peaks, an 800 N spike fires overload; 400 N does not."""
    rules = book()
    hour = 3600 * S
    for h in range(24):
        rules.frame("HUB-A", frame(h, T0 + h * hour, 300.0))
    assert not fired(rules.frame("HUB-A", frame(24, T0 + 24 * hour, 400.0)), "overload")
    [o] = fired(rules.frame("HUB-A", frame(25, T0 + 24 * hour + S, 800.0)), "overload")
    assert o.value == 800.0


def test_sequence_gaps_fire_data_gap() -> None:
    """Sixty frames missing within an hour fire data_gap; consecutive frames do not."""
    rules = book()
    assert not fired(rules.frame("HUB-A", frame(0, T0, 10.0)), "data_gap")
    assert not fired(rules.frame("HUB-A", frame(1, T0 + S, 10.0)), "data_gap")
    assert fired(rules.frame("HUB-A", frame(62, T0 + 2 * S, 10.0)), "data_gap")


def test_unknown_device_is_refused() -> None:
    """An estimate for a device on another hub than the registry's is refused."""
    with pytest.raises(UnknownDeviceError):
        book().event("HUB-B", Battery(device="DX-0001", t_ns=T0, pct=50.0))


def test_slope_with_error_is_zero_on_a_line() -> None:
    """Points exactly on a line have their slope per day and a zero standard error."""
    slope, error = slope_with_error([(i * DAY, 2.0 + 0.5 * i) for i in range(5)])
    assert slope == pytest.approx(0.5)
    assert error == pytest.approx(0.0, abs=1e-12)


def test_slope_per_day() -> None:
    """The slope of points one day apart rising by 3 is 3 per day."""
    assert slope_per_day([(0, 1.0), (DAY, 4.0), (2 * DAY, 7.0)]) == pytest.approx(3.0)
