"""What every alert rule shares: a device's memory (`Track`) and how a rule speaks
(`RuleBase._obs`: one observation, skipped when a quiet rule says the same again).

The rules themselves are split by their input: alerts.steprules (distraction steps and
probes), alerts.dailyrules (the DSP's daily records) and alerts.rules (`RuleBook`: everything
else, and the entry points).
"""

import math
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from alerts.model import Observation, Severity
from alerts.thresholds import Thresholds
from devices.registry import Device, Registry

__all__ = ["DAY_NS", "NS_PER_S", "RuleBase", "StepMemory", "Track", "UnknownDeviceError"]

NS_PER_S = 1_000_000_000
DAY_NS = 86_400 * NS_PER_S
_HISTORY = 200  # steps, daily records and gap entries kept per device


class UnknownDeviceError(LookupError):
    """A message names a device the registry does not know (or from another hub)."""


class StepMemory(NamedTuple):
    """What the step rules keep of one distraction step."""

    t_ns: int
    k_inst_n_per_mm: float  # NaN unless measured (not `low_snr`)
    f_residual_n: float
    k_peak_n_per_mm: float
    ramp_s: float


@dataclass
class Track:
    """Per-device memory of the rules."""

    steps: deque[StepMemory] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    probes: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    daily_shares: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    consolidation_start_ns: int | None = None
    hourly_max_n: dict[int, float] = field(default_factory=dict)
    last_seq: int | None = None
    gaps: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    faulty_channels: set[str] = field(default_factory=set)
    # Per channel, the current problem episode: (first problem ns, last problem ns).
    episodes: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The DSP's daily `loosening` flag (device stiffness drop in the load test) is raised.
    device_loose: bool = False
    last_seen_ns: int = 0
    # Baselines frozen while a drop alert is active, so the low values do not become normal.
    frozen: dict[str, float] = field(default_factory=dict)


class RuleBase:
    """The state every rule reads and the way every rule speaks (`RuleBook` sets them up)."""

    _registry: Registry
    _thresholds: dict[str, Thresholds]
    _started_ns: int
    _tracks: dict[str, Track]
    _emitted: dict[tuple[str, str], tuple[bool, bool]]

    def _device(self, device: str, hub: str | None = None) -> tuple[Device, Track]:
        config = self._registry.devices.get(device)
        if config is None or (hub is not None and config.hub != hub):
            raise UnknownDeviceError(f"device {device!r} (hub {hub!r}) is not in the registry")
        return config, self._tracks.setdefault(device, Track(last_seen_ns=self._started_ns))

    def _obs(  # noqa: PLR0917 - one call per rule reads best with every part in view
        self,
        device: Device,
        rule: str,
        t_ns: int,
        trigger: bool,
        clear: bool,
        severity: Severity,
        value: float | None,
        summary: str,
        for_s: float = 0.0,
    ) -> list[Observation]:
        key = (device.id, rule)
        # A quiet rule that says the same again changes nothing: skip the database round trip.
        if not trigger and self._emitted.get(key) == (trigger, clear):
            return []
        self._emitted[key] = (trigger, clear)
        return [
            Observation(
                device=device.id,
                hub=device.hub,
                patient=device.patient,
                rule=rule,
                t_ns=t_ns,
                trigger=trigger,
                clear=clear,
                severity=severity,
                value=value if value is None or math.isfinite(value) else None,
                summary=summary,
                for_s=for_s,
            )
        ]

    def _sign_rule(self, d: Device, t_ns: int, inconsistent: bool) -> list[Observation]:
        return self._obs(
            d, "sign_inconsistent", t_ns, inconsistent, not inconsistent, Severity.INFO, None,
            "the device's force rises and falls with the wrong sign (distraction steps against "
            "weight-bearing): check the sensor's mounting and the registry's force_gain; no "
            "removal decision is made from its load shares",
        )  # fmt: skip

    def _sensor_fault(self, d: Device, t_ns: int, problems: list[str]) -> list[Observation]:
        track = self._tracks[d.id]
        faulty = sorted(track.faulty_channels)
        return self._obs(
            d, "sensor_fault", t_ns, bool(faulty), not faulty and not track.episodes,
            Severity.WARNING, float(len(faulty)),
            f"sensor fault on {', '.join(faulty) or 'no channel'}: {', '.join(problems) or 'ok'}",
        )  # fmt: skip
