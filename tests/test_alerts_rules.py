"""The alert rules on plain values: each fires on its anomaly and stays quiet on normal input."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alerts.inputs import parse_estimate
from alerts.model import Observation, Severity
from alerts.rules import RuleBook, UnknownDeviceError, slope_per_day
from alerts.thresholds import AlertOverrides, load_overrides
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


def steps(rules: RuleBook, residuals: list[float], *, k: float = 50.0) -> list[Observation]:
    out: list[Observation] = []
    for i, f in enumerate(residuals):
        out += rules.estimate(
            est("step", T0 + i * DAY // 4, k_inst_n_per_mm=k, f_residual_n=f, f_peak_n=f + 20)
        )
    return out


def test_premature_consolidation_fires_on_fast_rise() -> None:
    """Residual force rising 20 N/day (faster than 14 N/day) fires premature_consolidation."""
    out = steps(book(), [10.0 + 5.0 * i for i in range(12)])  # 4 steps/day: 20 N/day
    assert fired(out, "premature_consolidation")


def test_normal_rise_is_quiet() -> None:
    """Residual force rising 5 N/day, a normal lengthening, does not fire."""
    out = steps(book(), [10.0 + 1.25 * i for i in range(12)])
    assert not fired(out, "premature_consolidation")


def test_stiffness_drop_fires_against_own_history() -> None:
    """A step stiffness a third of the patient's recent median fires stiffness_drop (critical)."""
    rules = book()
    steps(rules, [100.0] * 8, k=60.0)
    [o] = fired(rules.estimate(est("step", T0 + 3 * DAY, k_inst_n_per_mm=20.0)), "stiffness_drop")
    assert o.severity is Severity.CRITICAL


def test_stiffness_drop_baseline_stays_frozen() -> None:
    """While a drop alert is active, further low values do not become the new normal."""
    rules = book()
    steps(rules, [100.0] * 8, k=60.0)
    for i in range(10):
        out = rules.estimate(est("step", T0 + (3 + i) * DAY, k_inst_n_per_mm=20.0))
    assert not [o for o in out if o.rule == "stiffness_drop" and o.clear]
    [back] = [
        o
        for o in rules.estimate(est("step", T0 + 20 * DAY, k_inst_n_per_mm=55.0))
        if o.rule == "stiffness_drop"
    ]
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


def test_readiness_is_info_and_needs_margin() -> None:
    """A load share of 6 +/- 1 % is ready (info); 9 +/- 2 % is not yet."""
    rules = book()
    assert not fired(rules.estimate(est("load_share", T0, share=0.09, share_std=0.02)), "readiness")
    [o] = fired(
        rules.estimate(est("load_share", T0 + DAY, share=0.06, share_std=0.01)), "readiness"
    )
    assert o.severity is Severity.INFO


def test_sensor_fault_waits_for_duration() -> None:
    """A flatline fires sensor_fault with a for-duration; a clean report clears it."""
    rules = book()
    [o] = fired(rules.estimate(est("quality", T0, flatline=True, n_samples=6000)), "sensor_fault")
    assert o.for_s == 300.0
    [ok] = rules.estimate(est("quality", T0 + 60 * S, n_samples=6000))
    assert ok.clear


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


def test_slope_per_day() -> None:
    """The slope of points one day apart rising by 3 is 3 per day."""
    assert slope_per_day([(0, 1.0), (DAY, 4.0), (2 * DAY, 7.0)]) == pytest.approx(3.0)
