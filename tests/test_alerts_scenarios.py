"""Emulator scenarios through the DSP into the alert rules and lifecycle, in process.

Each scenario's hub stream (`generate`) feeds a `FleetEstimator` exactly as ingest does (frames,
steps, probes, load tests); every record becomes the JSON message ingest publishes
(`estimate_message`) and is parsed as the alert service parses it; events, hub status and
frames go to the rules too. Time comes from the data: `now_ns` is each item's publish time,
and the service's tick runs every simulated minute. Onsets come from the ground truth.

Smallest configuration that keeps the physics: a 10 mm lengthening (4 x 0.25 mm/day after
7 days of latency, docs/domain.md) sampled at 10 Hz (enough to resolve the fast relaxation,
docs/domain.md), one device on its registry hub.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest

from alerts.model import Alert, AlertState, Severity
from apps.bench.treatment import run_treatment
from devices.emulator.generator import DeviceConfig
from devices.emulator.groundtruth import ground_truth
from devices.registry import Registry

_DAY_NS = 86_400 * 1_000_000_000
_START_NS = 19_700 * _DAY_NS  # an osteotomy at midnight UTC
_DEVICE, _HUB = "DX-0001", "HUB-A"
_EXAMPLE = Registry.load(Path(__file__).resolve().parents[1] / "deploy" / "registry.example.toml")
# One device only: the others would be silent from the start.
_REGISTRY = _EXAMPLE.model_copy(
    update={"devices": {_DEVICE: _EXAMPLE.devices[_DEVICE]}, "hubs": {_HUB: _EXAMPLE.hubs[_HUB]}}
)


@dataclass(frozen=True)
class _Case:
    """A scenario, the rules that may report it, how long to run and how late is too late."""

    scenario: str
    rules: frozenset[str]
    run_days: float
    window_days: float = 2.0
    onset: str = "anomaly"  # the ground-truth record the delay counts from


_CASES = (
    # Force per step climbs too fast from the start of distraction (docs/domain.md: dog > 200 N by
    # week 2): the step stiffness grows faster than the patient's normal trajectory allows;
    # the growth rate needs 8 steps over up to a week.
    _Case(
        "premature_consolidation",
        frozenset({"premature_consolidation"}),
        16.0,
        7.0,
        "distraction",
    ),
    # Poor regenerate and nonunion show in consolidation only once the fastest normal healing
    # (30 days/cm) would have passed: judged 30 days after consolidation began.
    _Case("delayed_union", frozenset({"delayed_consolidation"}), 50.0, 35.0, "consolidation"),
    _Case("nonunion", frozenset({"delayed_consolidation"}), 50.0, 35.0, "consolidation"),
    # ... while the DSP's poor_regenerate day flag (the last steps softer than its limit beyond
    # their error) tells the care team in distraction, when the rate can still be changed.
    _Case("delayed_union", frozenset({"poor_regenerate"}), 16.0, 10.0, "distraction"),
    _Case("nonunion", frozenset({"poor_regenerate"}), 16.0, 10.0, "distraction"),
    _Case("separation", frozenset({"force_drop", "stiffness_drop"}), 14.0),
    _Case("loosening", frozenset({"stiffness_drop"}), 30.0, 7.0),
    _Case("overload", frozenset({"overload"}), 20.0),
    _Case("missed_steps", frozenset({"missed_steps"}), 12.0, 2.0, "missed_step"),
    _Case("extra_steps", frozenset({"extra_steps"}), 14.0, 2.0, "extra_step"),
    _Case("sensor_flatline", frozenset({"sensor_fault"}), 13.0),
    _Case("sensor_saturation", frozenset({"sensor_fault"}), 13.0),
    _Case("sensor_spikes", frozenset({"sensor_fault"}), 13.0),
    _Case("sensor_dropout", frozenset({"device_fault", "device_silent"}), 13.0),
    _Case("hub_offline", frozenset({"hub_offline"}), 13.0),
)


def _config(scenario: str) -> DeviceConfig:
    return DeviceConfig(
        device=_DEVICE, hub=_HUB, scenario=scenario, seed=11, rate_hz=10.0, target_mm=10.0
    )


def _run(config: DeviceConfig, end_ns: int, db: Path) -> tuple[list[Alert], dict[int, int]]:
    """Emulator -> estimator (as ingest) -> estimate messages -> rules -> engine."""
    return run_treatment(config, _REGISTRY, db, start_ns=_START_NS, end_ns=end_ns)


def _onset_ns(config: DeviceConfig, end_ns: int, onset: str) -> int:
    """The first ground-truth onset of `onset`: an anomaly kind, `anomaly`, or a phase name."""
    for record in ground_truth(config, start_ns=_START_NS, end_ns=end_ns):
        if record["type"] == "anomaly" and onset in ("anomaly", record["kind"]):
            return int(record["onset_ns"])
        if record["type"] == "phase" and record["phase"] == onset:
            return int(record["t_ns"])
    raise AssertionError(f"no {onset} in the ground truth")


@pytest.mark.parametrize(
    "case", _CASES, ids=[f"{case.scenario}-{'-'.join(sorted(case.rules))}" for case in _CASES]
)
def test_each_scenario_raises_its_alert(case: _Case, tmp_path: Path) -> None:
    """The alert of the injected anomaly fires within its window after the true onset."""
    config = _config(case.scenario)
    end_ns = _START_NS + round(case.run_days * _DAY_NS)
    onset_ns = _onset_ns(config, end_ns, case.onset)
    alerts, raised = _run(config, end_ns, tmp_path / "alerts.db")
    # A record is stamped with what it measured (a step's start, a day's start): an alert
    # about the anomaly may carry a time up to one day before the onset.
    fired = sorted(
        (raised[a.id], a.rule)
        for a in alerts
        if a.rule in case.rules and a.fired_ns is not None and a.fired_ns >= onset_ns - _DAY_NS
    )
    after = [(t, rule) for t, rule in fired if t >= onset_ns]
    assert after, f"{case.scenario}: none of {sorted(case.rules)} fired; got {_summary(alerts)}"
    first_ns, rule = after[0]
    delay_days = (first_ns - onset_ns) / _DAY_NS
    print(f"\n{case.scenario} -> {rule}: detected {delay_days:.3f} days after onset")
    assert delay_days <= case.window_days, _summary(alerts)


def test_normal_healing_raises_only_the_readiness_notice(tmp_path: Path) -> None:
    """A normal treatment to removal raises no warning or critical alert, one readiness notice."""
    config = _config("normal")
    end_ns = _START_NS + 60 * _DAY_NS  # removal comes first: healed day 40 + 7 days
    removal = [r for r in ground_truth(config, start_ns=_START_NS, end_ns=end_ns)
               if r["type"] == "phase" and r["phase"] == "removal"]  # fmt: skip
    assert removal, "the emulated treatment does not reach removal"
    alerts, _ = _run(config, end_ns, tmp_path / "alerts.db")
    assert [a for a in alerts if a.severity is not Severity.INFO] == [], _summary(alerts)
    assert [(a.rule, a.state) for a in alerts if a.rule != "stiffness_unmeasured"] == [
        ("readiness", AlertState.FIRING)
    ]
    # At 10 Hz the emulated steps leave k_inst `low_snr` on most steps (7 of 28 measured at
    # the end of distraction): the care team is told premature consolidation is not judged
    # then, and the notice is gone once distraction is over.
    unmeasured = [a for a in alerts if a.rule == "stiffness_unmeasured"]
    assert unmeasured, _summary(alerts)
    assert all(a.state is not AlertState.FIRING for a in unmeasured), _summary(alerts)


def _summary(alerts: list[Alert]) -> list[str]:
    return [
        f"{a.rule}/{a.severity.value}/{a.state.value}@{(a.started_ns - _START_NS) / _DAY_NS:.2f}d"
        for a in alerts
    ]
