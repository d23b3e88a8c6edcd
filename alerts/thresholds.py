"""Rule thresholds: defaults from the papers of docs/domain.md, overridden per deployment,
anatomical site and device.

Precedence, lowest first: the defaults below; `SITE_DEFAULTS` for the device's anatomical
site; the registry's `[alerts]` table (the deployment); `[alerts.site.<site>]`; the device's
own `alerts` table. The protocol itself (rhythm, rate, target) comes from the device's
`protocol` in the registry and is used by the adherence rules directly.

Registry shape (docs/alerts.md):

    [alerts]                       # the whole deployment
    silent_after_s = 1800
    [alerts.site.mandible]         # every mandibular device
    force_warning_n = 150.0
    [[device]]
    id = "DX-0001"
    ...
    alerts = { force_critical_n = 800.0 }   # or a [device.alerts] sub-table

`devices.registry.Registry` does not read these keys; `load_overrides` reads them from the same
file.
"""

import tomllib
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from devices.registry import Device
from osteotel.errors import ConfigError

__all__ = ["SITE_DEFAULTS", "AlertOverrides", "Thresholds", "load_overrides"]

Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Thresholds(BaseModel):
    """Every number the rules compare against; units in the names.

    The comments name the docs/domain.md figure each default stands on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Distraction force (soft-tissue tension, frame overload). Adult tibia: peak and resting
    # force rise to about 300 N over a lengthening (Simpson 1996); congenital cases above
    # 1000 N failed frames. Warning at twice the adult figure, critical at frame failure.
    force_warning_n: Positive = 600.0
    force_critical_n: Positive = 1000.0
    # Hysteresis: the alert resolves below this fraction of the threshold it crossed.
    force_clear_fraction: Fraction = 0.9

    # Premature consolidation, judged against the patient's own trajectory: the growth rate of
    # the step stiffness k_inst (relative, per day; scale-free, so site and tissue do not
    # matter). Normal growth: ~3 %/day (the emulator's calibration to Simpson 1996, docs/domain.md:
    # 16 -> 42 N/mm over 50 mm at 1 mm/day). Dog tibia: "> 200 N by week 2" is premature
    # against a linear rise to 111-155 N by week 4 (Aronson 1994), i.e. <= 78 N at week 2: the
    # force per step is >= 200/78 = 2.6 times normal after 14 days, an excess growth of
    # ln(2.6)/14 = 6.8 %/day on top of the normal 3 %/day: limit 10 %/day. It fires when the
    # growth is above the limit by two standard errors of the fitted slope.
    premature_k_growth_per_day: Positive = 0.10
    premature_window_days: Positive = 7.0
    premature_min_steps: Annotated[int, Field(ge=3)] = 8

    # Delayed consolidation / nonunion: load share not falling as projected. Plate elasticity
    # falls to 10 % at ~19.3 weeks (Seide 2012): ~4.7 % per week from 100 %; under half that
    # over three weeks of consolidation is slow.
    delayed_min_drop_per_week: Positive = 0.02
    delayed_window_days: Positive = 21.0
    delayed_min_tests: Annotated[int, Field(ge=2)] = 3
    # Healing index about 30-50 days per cm gained: a projected removal later than the slow
    # end of that range after consolidation began is delayed.
    delayed_healing_index_days_per_cm: Positive = 50.0
    # Stiffening is sigmoid (Seide 2012): neither is judged before consolidation has lasted
    # as long as the fast end of the healing index (30 days per cm gained) allows.
    delayed_min_days_per_cm: Positive = 30.0

    # Sudden drops against the patient's own last steps (separation: 791 -> 150 N in a human
    # tibia; loosening shows as a stiffness drop). Critical: these are not healing.
    drop_fraction: Fraction = 0.5
    drop_clear_fraction: Fraction = 0.7
    drop_baseline_steps: Annotated[int, Field(ge=3)] = 8
    force_drop_min_n: Positive = 50.0
    # A probe is 0.02 mm: on the soft regenerate its answer (k_inst x 0.02 mm, under 1 N) is
    # within the sensor noise. Its stiffness is judged only when its fit converged and explains
    # this share of the relaxation's variance (signal variance >= 9 x the noise's).
    probe_min_fit_r2: Fraction = 0.9

    # Overload (a fall): a force spike far above the patient's daily loading. Daily loading =
    # the largest hourly force maximum of the last 24 h (the day's walking). Never below
    # walking itself (about 345 N in sheep): the first walk after surgery is no fall.
    overload_ratio: Annotated[float, Field(gt=1)] = 2.0
    overload_min_n: Positive = 345.0
    overload_min_hours: Annotated[int, Field(ge=1, le=24)] = 6

    # Adherence: any missed or extra step against the prescribed rhythm (docs/domain.md:
    # non-adherence is "steps missing or extra against the prescribed rhythm").
    missed_steps_per_day: Annotated[int, Field(ge=1)] = 1
    extra_steps_per_day: Annotated[int, Field(ge=1)] = 1

    # Sensor faults: a fault must persist this long in the data before it alerts (one glitch
    # is noise): problem stretches that follow each other within this time make one episode.
    sensor_fault_for_s: Annotated[float, Field(ge=0)] = 300.0
    spike_fraction: Fraction = 0.001
    # Data gaps: frames missing (sequence numbers skipped) within an hour.
    gap_frames_per_hour: Annotated[int, Field(ge=1)] = 60

    # Silence. Not a docs/domain.md figure: a connected hub sends frames every second or so, so
    # a quarter of an hour without anything is a broken link, not a quiet patient.
    silent_after_s: Positive = 900.0
    hub_offline_for_s: Annotated[float, Field(ge=0)] = 300.0

    # Battery, percent.
    battery_warning_pct: Annotated[float, Field(gt=0, le=100)] = 20.0
    battery_critical_pct: Annotated[float, Field(gt=0, le=100)] = 10.0
    battery_clear_pct: Annotated[float, Field(gt=0, le=100)] = 25.0

    # Readiness (info): load share below 10 % (Aarnes 2005), judged on share + 2 standard
    # errors so one lucky test does not call it; resolves above 15.6 %, the dynamic load
    # share at clinical healing.
    ready_share: Fraction = 0.10
    ready_clear_share: Fraction = 0.156

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.force_warning_n >= self.force_critical_n:
            raise ValueError("force_warning_n must be below force_critical_n")
        if self.battery_critical_pct > self.battery_warning_pct:
            raise ValueError("battery_critical_pct must not exceed battery_warning_pct")
        if self.battery_clear_pct < self.battery_warning_pct:
            raise ValueError("battery_clear_pct must not be below battery_warning_pct")
        if self.drop_clear_fraction <= 1 - self.drop_fraction:
            raise ValueError("drop_clear_fraction must be above 1 - drop_fraction")
        return self


SITE_DEFAULTS: dict[str, dict[str, float]] = {
    # Mandibular distractors: about 36 N per 0.5 mm turn, device failure near 236 N.
    "mandible": {"force_warning_n": 150.0, "force_critical_n": 200.0, "force_drop_min_n": 10.0},
}
"""Defaults that differ by anatomical site, applied before any registry override."""


class AlertOverrides(BaseModel):
    """The override tables read from the registry file, not yet merged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment: dict[str, Any] = {}
    site: dict[str, dict[str, Any]] = {}
    device: dict[str, dict[str, Any]] = {}

    def for_device(self, device: Device) -> Thresholds:
        """The thresholds in force for `device`.

        Raises:
            ConfigError: an override names an unknown key or a bad value.
        """
        merged: dict[str, Any] = {
            **SITE_DEFAULTS.get(device.site, {}),
            **self.deployment,
            **self.site.get(device.site, {}),
            **self.device.get(device.id, {}),
        }
        try:
            return Thresholds.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(
                f"alert thresholds of device {device.id}: {where}: {first['msg']}"
            ) from exc


def load_overrides(path: Path) -> AlertOverrides:
    """Read the `[alerts]` tables and every device's `alerts` table from the registry file.

    Args:
        path: the registry TOML file.

    Returns:
        The overrides (empty when the file has none).

    Raises:
        ConfigError: the file cannot be read or parsed, or a table has the wrong shape.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read alert overrides: {exc}") from exc
    top = dict(document.get("alerts", {}))
    sites = top.pop("site", {})
    devices = {
        str(item.get("id")): item["alerts"]
        for item in document.get("device", [])
        if isinstance(item, dict) and "alerts" in item
    }
    tables = {"[alerts]": top} | {f"[alerts.site.{k}]": v for k, v in sites.items()}
    tables |= {f"device {k} alerts": v for k, v in devices.items()}
    for where, table in tables.items():
        # Unknown keys fail at start-up; values are checked per device by `for_device`.
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {where} must be a table")
        unknown = sorted(set(table) - set(Thresholds.model_fields))
        if unknown:
            raise ConfigError(f"{path}: {where}: unknown alert thresholds {unknown}")
    try:
        overrides = AlertOverrides(deployment=top, site=sites, device=devices)
    except ValidationError as exc:
        raise ConfigError(f"{path}: alert overrides: {exc.errors()[0]['msg']}") from exc
    return overrides
