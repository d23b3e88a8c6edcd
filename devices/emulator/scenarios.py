"""What can happen to one device during its treatment: the named scenarios.

A scenario changes the biology (how fast the regenerate stiffens, how stiff the distraction
tissue is) and/or injects one kind of anomaly at a place in the treatment chosen relative to
its phases, so that the same scenario shows up in a 20-day test run and in a 200-day treatment.
Every injected anomaly is written to the ground truth with its onset and end.

A scenario may also mount the force sensor the other way (`force_polarity = -1`: the hub
reports -force) and name what the DSP is expected to conclude (`expected_flags`), which the
ground truth's device header carries for tests and reports.
"""

from dataclasses import dataclass
from typing import Literal

from devices.emulator.physics import HealingCurve

__all__ = ["SCENARIOS", "Anchor", "AnomalyKind", "Scenario", "scenario"]

AnomalyKind = Literal[
    "separation",
    "loosening",
    "overload",
    "missed_step",
    "extra_step",
    "sensor_dropout",
    "sensor_spikes",
    "sensor_flatline",
    "sensor_saturation",
    "sensor_drift",
    "transport_loss",
    "transport_duplicate",
    "transport_reorder",
    "transport_late",
    "clock_jump",
    "hub_offline",
]

Anchor = Literal["distraction", "consolidation"]
"""The phase an anomaly's onset is placed in, at `onset_fraction` of that phase's length."""


@dataclass(frozen=True)
class Scenario:
    """One way a treatment can go.

    Attributes:
        name: the key in `SCENARIOS`.
        summary: one line for docs and logs.
        healing_curve: how the regenerate stiffens in consolidation (Seide 2012).
        healing_index_factor: multiplies the device's healing index (days per cm).
        tissue_factor: multiplies the distraction tissue's instantaneous stiffness.
        premature_growth_per_day: extra relative stiffness growth per day of distraction.
        anomaly: the anomaly injected, if any.
        anchor: the phase the onset is placed in.
        onset_fraction: where in that phase the onset falls (0 = its start, 1 = its end).
        duration_days: how long the anomaly lasts, calendar days (0 = instantaneous).
        magnitude: the anomaly's size; its meaning and unit depend on `anomaly` (see docs).
        probability: per-frame or per-step probability for anomalies that hit at random.
        force_polarity: +1, or -1 when the force sensor is mounted the other way round (every
            force the hub reports is negated; the registry can correct it with a negative
            force_gain, docs/registry.md).
        expected_flags: LoadShareRecord/DailyRecord flags the DSP must raise for this device
            when ingest applies the registry's calibration unchanged (docs/emulator.md).
    """

    name: str
    summary: str
    healing_curve: HealingCurve = "sigmoid"
    healing_index_factor: float = 1.0
    tissue_factor: float = 1.0
    premature_growth_per_day: float = 0.0
    anomaly: AnomalyKind | None = None
    anchor: Anchor = "distraction"
    onset_fraction: float = 0.5
    duration_days: float = 0.0
    magnitude: float = 0.0
    probability: float = 0.0
    force_polarity: float = 1.0
    expected_flags: tuple[str, ...] = ()


def _scenarios(*items: Scenario) -> dict[str, Scenario]:
    return {item.name: item for item in items}


SCENARIOS: dict[str, Scenario] = _scenarios(
    Scenario("normal", "Normal healing: sigmoid stiffening, load share below 10 % on time."),
    # docs/domain.md "What goes wrong": premature consolidation, dog > 200 N by week 2.
    Scenario(
        "premature_consolidation",
        "The regenerate stiffens during distraction: force per step climbs too fast.",
        healing_index_factor=0.6,
        premature_growth_per_day=0.5,
    ),
    # docs/domain.md: poor regenerate keeps force low (dog ~60 N at week 3); Seide 2012 "slow".
    Scenario(
        "delayed_union",
        "Poor regenerate: low distraction force and slow stiffening, healing index doubled.",
        healing_curve="slow",
        healing_index_factor=2.0,
        tissue_factor=0.5,
    ),
    Scenario(
        "nonunion",
        "The regenerate never takes over: load share stays above 70 %.",
        healing_curve="non_healing",
        tissue_factor=0.35,
    ),
    # docs/domain.md: separation / epiphysiolysis, a sudden force drop 791 -> 150 N (factor 0.19).
    Scenario(
        "separation",
        "Sudden force drop during a distraction step: earlier steps keep 19 % of their force.",
        anomaly="separation",
        onset_fraction=0.6,
        magnitude=150.0 / 791.0,
    ),
    Scenario(
        "loosening",
        "Pin loosening: device stiffness falls by up to 70 % and hysteresis grows.",
        anomaly="loosening",
        anchor="consolidation",
        onset_fraction=0.1,
        duration_days=30.0,
        magnitude=0.7,
    ),
    # Emulator choice: a fall loads the limb with 3 body weights for a fraction of a second.
    Scenario(
        "overload",
        "A fall: one load spike of 3 body weights during consolidation.",
        anomaly="overload",
        anchor="consolidation",
        onset_fraction=0.05,
        magnitude=3.0,
    ),
    Scenario(
        "missed_steps",
        "Non-adherence: 15 % of prescribed steps are not done.",
        anomaly="missed_step",
        probability=0.15,
    ),
    Scenario(
        "extra_steps",
        "Non-adherence: 8 % of prescribed steps are followed by an extra manual turn.",
        anomaly="extra_step",
        probability=0.08,
    ),
    Scenario(
        "sensor_dropout",
        "The force bridge stops answering for 12 h: the device reports a fault, sends nothing.",
        anomaly="sensor_dropout",
        onset_fraction=0.4,
        duration_days=0.5,
    ),
    Scenario(
        "sensor_spikes",
        "Single-sample force spikes of 300-1500 N for a day.",
        anomaly="sensor_spikes",
        onset_fraction=0.4,
        duration_days=1.0,
        probability=0.002,
    ),
    Scenario(
        "sensor_flatline",
        "The force reading freezes for a day.",
        anomaly="sensor_flatline",
        onset_fraction=0.4,
        duration_days=1.0,
    ),
    Scenario(
        "sensor_saturation",
        "A gain fault (x20) pins the force reading at the sensor's full scale for a day.",
        anomaly="sensor_saturation",
        onset_fraction=0.4,
        duration_days=1.0,
        magnitude=20.0,
    ),
    Scenario(
        "sensor_drift",
        "The force offset drifts by 40 N per day for two days, then is recalibrated.",
        anomaly="sensor_drift",
        onset_fraction=0.4,
        duration_days=2.0,
        magnitude=40.0,
    ),
    Scenario(
        "transport_loss",
        "5 % of frames are lost between hub and server for two days (seq gaps).",
        anomaly="transport_loss",
        onset_fraction=0.3,
        duration_days=2.0,
        probability=0.05,
    ),
    Scenario(
        "transport_duplicate",
        "5 % of frames are delivered twice for two days.",
        anomaly="transport_duplicate",
        onset_fraction=0.3,
        duration_days=2.0,
        probability=0.05,
    ),
    Scenario(
        "transport_reorder",
        "5 % of frames arrive after the next frame for two days.",
        anomaly="transport_reorder",
        onset_fraction=0.3,
        duration_days=2.0,
        probability=0.05,
    ),
    Scenario(
        "transport_late",
        "5 % of frames arrive 30 s to 15 min late for two days.",
        anomaly="transport_late",
        onset_fraction=0.3,
        duration_days=2.0,
        probability=0.05,
    ),
    # Emulator choice: after a reboot the clock restarts from a stale backup, an hour behind,
    # until the next time sync 12 h later.
    Scenario(
        "clock_jump",
        "The device reboots (seq restarts) and its clock runs 1 h behind for 12 h.",
        anomaly="clock_jump",
        onset_fraction=0.4,
        duration_days=0.5,
        magnitude=-3600.0,
    ),
    # A sensor mounted the other way round (a wrong polarity in the field): steps then lower the
    # reported force and so does weight-bearing. Uncorrected, the DSP must flag the device.
    Scenario(
        "reversed_force_sensor",
        "Normal healing, force sensor mounted the other way: the hub reports -force.",
        force_polarity=-1.0,
        expected_flags=("sign_inconsistent",),
    ),
    Scenario(
        "hub_offline",
        "The hub is offline for 12 h and forwards what it stored when it reconnects.",
        anomaly="hub_offline",
        onset_fraction=0.4,
        duration_days=0.5,
    ),
)
"""Every scenario by name; a device picks one with `DeviceConfig.scenario`."""


def scenario(name: str) -> Scenario:
    """Return the scenario called `name`.

    Raises:
        ValueError: when there is no such scenario; the message lists the known names.
    """
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
