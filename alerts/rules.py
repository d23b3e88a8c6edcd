"""The alert rules: from estimates, events, hub status, frames and the clock to `Observation`s.

One `RuleBook` holds each device's recent trajectory (bounded) and judges every input against
the device's thresholds (alerts.thresholds). Rules, their ids and inputs (docs/alerts.md):

| rule | severity | input | fires when |
|---|---|---|---|
| distraction_force | warning/critical | step | force before the step plus its jump over a limit |
| premature_consolidation | warning | step | step stiffness growing faster than the limit (/day) |
| delayed_consolidation | warning | daily | load share falling too slowly, or projected too late |
| stiffness_drop | critical | step, probe, daily | k_peak / k_inst below half the recent median |
| force_drop | critical | step | residual force below half the patient's recent median |
| overload | warning | telemetry | frame peak far above the patient's daily loading |
| missed_steps, extra_steps | warning | daily | steps against the prescribed rhythm |
| sensor_fault | warning | quality, daily | flatline, saturation, spikes, ... persisting |
| data_gap | warning | telemetry | frames missing (sequence gaps) within an hour |
| device_fault | warning | fault event | the device reports a fault (clears on reboot) |
| device_silent | warning | clock | nothing from the device for `silent_after_s` |
| hub_offline | warning | hub status | the hub is offline (for `hub_offline_for_s`) |
| battery_low | warning/critical | battery event, frame | charge below the limits |
| readiness | info | load share, daily | the DSP's readiness rule holds (it can be withdrawn) |
| sign_inconsistent | info | load share, daily | the device's steps and loading disagree in sign |
| poor_regenerate | warning | daily | the DSP's day flag: recent steps softer than the limit |
| estimates_incomplete | info | catchup | ingest could not read part of the stored history |
| stiffness_unmeasured | info | step | too few measured k_inst to judge premature growth |

Patient-relative rules compare with the patient's own history (drops, overload, delayed).
Everything is plain Python on small deques: per input a few dozen operations.
"""

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from alerts.inputs import (
    CatchupInput,
    DailyInput,
    Estimate,
    LoadShareInput,
    QualityInput,
    StepInput,
    finite,
)
from alerts.model import RULES, Observation, Severity
from alerts.thresholds import AlertOverrides, Thresholds
from alerts.trend import slope_per_day, slope_with_error
from devices.contract import Battery, Event, Fault, Frame, HubStatus, Reboot
from devices.registry import Device, Registry

__all__ = ["RULES", "RuleBook", "UnknownDeviceError"]

_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
_HOUR_NS = 3_600 * _NS
_SLOPE_CLEAR = 0.75  # a slope rule resolves below 3/4 of its limit (hysteresis)
_HISTORY = 200  # steps, daily records and gap entries kept per device


class UnknownDeviceError(LookupError):
    """A message names a device the registry does not know (or from another hub)."""


class _StepMemory(NamedTuple):
    """What the step rules keep of one distraction step."""

    t_ns: int
    k_inst_n_per_mm: float  # NaN unless measured (not `low_snr`)
    f_residual_n: float
    k_peak_n_per_mm: float
    ramp_s: float


@dataclass
class _Track:
    """Per-device memory of the rules."""

    steps: deque[_StepMemory] = field(default_factory=lambda: deque(maxlen=_HISTORY))
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


class RuleBook:
    """Judges inputs against thresholds and remembers what the patient-relative rules need."""

    def __init__(
        self, registry: Registry, overrides: AlertOverrides | None = None, *, now_ns: int
    ) -> None:
        """Set up the rules for every device of `registry`.

        Args:
            registry: devices (hub, patient, site, protocol).
            overrides: threshold overrides from the registry file; none when None.
            now_ns: start time, UTC epoch ns: silence is counted from here for devices not
                yet heard from.

        Raises:
            ConfigError: an override is invalid for some device.
        """
        self._started_ns = now_ns
        self._tracks: dict[str, _Track] = {}
        self._emitted: dict[tuple[str, str], tuple[bool, bool]] = {}
        self.update(registry, overrides)

    def update(self, registry: Registry, overrides: AlertOverrides | None = None) -> None:
        """Take a reloaded registry; trajectories of known devices are kept.

        Raises:
            ConfigError: an override is invalid for some device (nothing is changed then).
        """
        overrides = overrides or AlertOverrides()
        thresholds = {d.id: overrides.for_device(d) for d in registry.devices.values()}
        self._registry = registry
        self._thresholds = thresholds

    def forget_emitted(self) -> None:
        """Emit the next observation of every rule even if it repeats the last one."""
        self._emitted.clear()

    def thresholds(self, device: str) -> Thresholds:
        """The thresholds in force for `device`."""
        return self._thresholds[device]

    def _device(self, device: str, hub: str | None = None) -> tuple[Device, _Track]:
        config = self._registry.devices.get(device)
        if config is None or (hub is not None and config.hub != hub):
            raise UnknownDeviceError(f"device {device!r} (hub {hub!r}) is not in the registry")
        return config, self._tracks.setdefault(device, _Track(last_seen_ns=self._started_ns))

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

    def seen(self, device: str, t_ns: int) -> None:
        """Note that `device` was heard from at `t_ns` (any message)."""
        _, track = self._device(device)
        track.last_seen_ns = max(track.last_seen_ns, t_ns)

    # --- estimates ----------------------------------------------------------------------------

    def estimate(self, est: Estimate) -> list[Observation]:
        """Judge one estimate.

        Raises:
            UnknownDeviceError: the device is not in the registry or not on that hub.
        """
        config, track = self._device(est.device, est.hub)
        if isinstance(est, CatchupInput):
            return self._catchup(config, est)  # ingest's word, not the device's: not "seen"
        track.last_seen_ns = max(track.last_seen_ns, est.t_ns)
        th = self._thresholds[config.id]
        if isinstance(est, StepInput):
            return self._step(config, track, th, est)
        if isinstance(est, LoadShareInput):
            return self._load_share(config, th, est)
        if isinstance(est, QualityInput):
            return self._quality(config, track, th, est)
        return self._daily(config, track, th, est)

    def _catchup(self, d: Device, est: CatchupInput) -> list[Observation]:
        # Ingest's catch-up at its start (ingest/catchup.py): a device whose stored history it
        # could not read goes on with trends that lack part of it. Not the device's fault and
        # no danger in itself, but readiness and the projection build on those trends.
        since = (
            datetime.fromtimestamp(est.from_ns // _NS, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
            if est.from_ns > 0
            else "the start of its data"
        )
        consequence = (
            "so the trends lack part of the history and readiness or the projected removal "
            "may come late or not at all; an engineer should look"
        )
        if est.status == "truncated":
            summary = (
                f"the device's estimates were rebuilt from {since} on only: older stored data "
                f"lie beyond ingest's rebuild_max_days and were not read, {consequence}"
            )
        elif est.status == "store_unreachable":
            summary = (
                "ingest could not read the device's stored data at its start (InfluxDB "
                f"unreachable): its estimates go on without what was stored since {since}, "
                f"{consequence}"
            )
        else:
            summary = f"ingest read the device's stored history at its start ({est.status})"
        # Only a rebuild read the whole history again: a `caught_up` start goes on from the
        # checkpoint, whose trends still lack what was not read, so it changes nothing here.
        incomplete = est.status in {"truncated", "store_unreachable"}
        if not (incomplete or est.status == "rebuilt"):
            return []
        return self._obs(
            d, "estimates_incomplete", est.t_ns, incomplete, not incomplete, Severity.INFO,
            None, summary,
        )  # fmt: skip

    def _step(self, d: Device, track: _Track, th: Thresholds, est: StepInput) -> list[Observation]:
        out: list[Observation] = []
        # Distraction force is the tension lengthening puts on the tissue: the peak the step
        # really reached, f_peak_n, the fitted curve at the ramp's end (docs/dsp.md). It is a
        # fit to the whole relaxation, so a walk overlapping the step (~1,600 N through an
        # emulated tibia, the overload rule's business) does not set it, and it is what the
        # drive's speed let the tissue feel, not the sudden-step equivalent f_inst_n a slow
        # motor never applies. A probe's 0.02 mm on a consolidated regenerate measures its
        # stiffness, and says nothing of tension.
        peak = est.f_peak_n
        if est.kind == "step" and finite(peak):
            severity = Severity.CRITICAL if peak >= th.force_critical_n else Severity.WARNING
            limit = th.force_critical_n if severity is Severity.CRITICAL else th.force_warning_n
            out += self._obs(
                d, "distraction_force", est.t_ns, peak >= th.force_warning_n,
                peak < th.force_warning_n * th.force_clear_fraction, severity, peak,
                f"peak distraction force {peak:.0f} N (limit {limit:.0f} N)",
            )  # fmt: skip
        if est.kind == "probe":
            # A probe's 0.02 mm answer is a few N until the regenerate is stiff: on the soft
            # one it is inside the noise. Only a converged fit that explains the relaxation
            # (R^2 >= 0.9: signal variance >= 9 x the noise's) has a peak worth judging.
            if est.fit_status != "ok" or not est.fit_r2 >= th.probe_min_fit_r2:
                return out
            out += self._peak_drop(d, track.probes, est, th, "peak stiffness (probe)")
            track.probes.append((est.k_peak_n_per_mm, est.ramp_s))
            return out
        # A distraction step moves the force by several N: its residual force is judged on
        # every step (a failed fit there is the tissue doing something else, a separation).
        out += self._peak_drop(
            d, [(s.k_peak_n_per_mm, s.ramp_s) for s in track.steps], est, th,
            "peak step stiffness",
        )  # fmt: skip
        residuals = [s.f_residual_n for s in track.steps]
        # The DSP judges a separation on the step itself (the force before it below half of
        # the last steps' and >= 5 N lower, docs/dsp.md): then the drop needs no absolute
        # size here, which early in distraction, when the residual force is tens of N, the
        # 50 N floor for limbs would never see.
        min_drop = 0.0 if "separation" in est.flags else th.force_drop_min_n
        out += self._drop(
            d, "force_drop", est.t_ns, est.f_residual_n, residuals, th, min_drop,
            "residual force", "N",
        )  # fmt: skip
        # k_inst is the growth rule's input only where it is a measurement: the DSP marks
        # `low_snr` a k_inst whose standard error exceeds 8 % of it or that rests on a held
        # tau_fast, so every k_inst the rule reads is known within 8 %.
        measured = "low_snr" not in est.flags
        track.steps.append(
            _StepMemory(
                est.t_ns, est.k_inst_n_per_mm if measured else math.nan, est.f_residual_n,
                est.k_peak_n_per_mm, est.ramp_s,
            )
        )  # fmt: skip
        return out + self._premature(d, track, th, est.t_ns)

    def _peak_drop(
        self,
        d: Device,
        history: Iterable[tuple[float, float]],
        est: StepInput,
        th: Thresholds,
        what: str,
    ) -> list[Observation]:
        # A sudden loss of stiffness (loosening, separation) is judged on k_peak, the force the
        # step or probe really reached at its ramp's end per mm: it is measured whatever the
        # drive's ramp, where k_inst is not (a ramp of many tau_fast leaves it `low_snr`). On
        # the independent physics, a loosening to 30 % was seen by the steps' k_inst on 11 of
        # 48 devices and by their k_peak on all 48 (tests/test_alerts_physics.py). k_peak
        # depends on the ramp as much as on the tissue: compared only with similar ramps.
        comparable = [
            k_peak
            for k_peak, ramp_s in history
            if math.isclose(ramp_s, est.ramp_s, rel_tol=0.25, abs_tol=1.0)
        ]
        return self._drop(
            d, "stiffness_drop", est.t_ns, est.k_peak_n_per_mm, comparable, th, 0.0, what, "N/mm"
        )

    def _premature(self, d: Device, track: _Track, th: Thresholds, t_ns: int) -> list[Observation]:
        # Relative to the patient's own trajectory: the growth rate of ln k_inst is scale-free,
        # so it needs no absolute force and holds for any gain, site or tissue. Not on k_peak:
        # the relaxation's fast share falls step by step (Bachmeier 2022), so on a slow ramp
        # k_peak grows several times faster than the tissue's stiffness.
        window_ns = round(th.premature_window_days * _DAY_NS)
        window = [s for s in track.steps if s.t_ns > t_ns - window_ns]
        recent = [(s.t_ns, math.log(s.k_inst_n_per_mm)) for s in window if s.k_inst_n_per_mm > 0]
        # (a step whose k_inst is no measurement is kept as NaN, and k > 0 leaves it out)
        if len(window) < th.premature_min_steps:
            return []
        # Enough steps to judge, too few of them measured: say so, never stay silent. Raised
        # below the growth rule's count or half the steps, cleared at both the count and
        # three quarters: a device measuring about half its steps does not flap.
        measured, steps = len(recent), len(window)
        out = self._obs(
            d, "stiffness_unmeasured", t_ns,
            measured < th.premature_min_steps or 2 * measured < steps,
            measured >= th.premature_min_steps and 4 * measured >= 3 * steps,
            Severity.INFO, float(measured),
            f"k_inst measured on {measured} of the last {steps} steps (the growth rule needs "
            f"{th.premature_min_steps}): premature consolidation is judged on few steps or not "
            "at all; the steps' ramps are long against the fast relaxation, or the force signal "
            "is noisy",
        )  # fmt: skip
        if len(recent) < th.premature_min_steps:
            return out
        growth, error = slope_with_error(recent)
        if not (finite(growth) and finite(error)):
            return out
        limit = math.log1p(th.premature_k_growth_per_day)
        # Two standard errors either way: one noisy day of step fits neither fires nor clears.
        rate = math.expm1(growth)
        return out + self._obs(
            d, "premature_consolidation", t_ns, growth - 2.0 * error > limit,
            growth + 2.0 * error < limit, Severity.WARNING, rate,
            f"step stiffness growing {100 * rate:.0f} %/day over {len(recent)} steps "
            f"(limit {100 * th.premature_k_growth_per_day:g} %/day)",
        )  # fmt: skip

    def _drop(  # noqa: PLR0917 - the two drop rules differ only in these values
        self,
        d: Device,
        rule: str,
        t_ns: int,
        value: float,
        history: list[float],
        th: Thresholds,
        min_drop: float,
        what: str,
        unit: str,
    ) -> list[Observation]:
        track = self._tracks[d.id]
        recent = [v for v in history[-th.drop_baseline_steps :] if finite(v)]
        if not finite(value) or (rule not in track.frozen and len(recent) < 3):
            return []
        baseline = track.frozen.get(rule, statistics.median(recent) if recent else math.nan)
        if not finite(baseline) or baseline <= 0.0:
            return []
        trigger = value < (1.0 - th.drop_fraction) * baseline and baseline - value >= min_drop
        clear = value >= th.drop_clear_fraction * baseline
        if rule == "stiffness_drop" and track.device_loose:
            clear = False  # the device's own stiffness is still down (`_loosening`)
        if trigger:
            track.frozen[rule] = baseline
        elif clear:
            track.frozen.pop(rule, None)
        return self._obs(
            d, rule, t_ns, trigger, clear, Severity.CRITICAL, value,
            f"{what} {value:.1f} {unit}, down from the patient's recent {baseline:.1f} {unit}",
        )  # fmt: skip

    def _load_share(self, d: Device, th: Thresholds, est: LoadShareInput) -> list[Observation]:
        # Readiness is the DSP's decision, one rule in one place (docs/dsp.md): two days of
        # usable shares below 10 % in magnitude by 2 standard errors, in consolidation, re-judged on
        # every test. A raw share is never judged here: a wrongly signed -94 % once read as
        # "below the removal criterion".
        out = self._sign_rule(d, est.t_ns, "sign_inconsistent" in est.flags)
        if not est.usable:
            return out
        met = est.removal_criterion_met
        share = est.share
        return out + self._obs(
            d, "readiness", est.t_ns, met, not met, Severity.INFO, share,
            f"load share {100 * share:.1f} % (+/- {200 * est.share_std:.1f} % at 2 SE) on the "
            f"second day: the removal criterion of {100 * th.ready_share:g} % is met"
            if met else f"load share {100 * share:.1f} %: the removal criterion is not met",
        )  # fmt: skip

    def _sign_rule(self, d: Device, t_ns: int, inconsistent: bool) -> list[Observation]:
        return self._obs(
            d, "sign_inconsistent", t_ns, inconsistent, not inconsistent, Severity.INFO, None,
            "the device's force rises and falls with the wrong sign (distraction steps against "
            "weight-bearing): check the sensor's mounting and the registry's force_gain; no "
            "removal decision is made from its load shares",
        )  # fmt: skip

    def _quality(
        self, d: Device, track: _Track, th: Thresholds, est: QualityInput
    ) -> list[Observation]:
        spiky = est.n_samples > 0 and est.n_spikes > th.spike_fraction * est.n_samples
        problems = [
            name
            for name, bad in (
                ("flatline", est.flatline),
                ("saturation", est.n_saturated > 0),
                ("spikes", spiky),
                ("non-finite", est.n_nonfinite > 0),
                ("drift", est.drift),
            )
            if bad
        ]
        # A saturated, frozen, non-finite or drifting reading is a fault as it stands; a spike
        # may be one glitch. The DSP sends a record per problem stretch and nothing while the
        # signal is clean, so spikes persist in the data's time: stretches that follow each
        # other within `sensor_fault_for_s` make one episode, a fault once it lasts that long.
        definite = any(p != "spikes" for p in problems)
        persist_ns = round(th.sensor_fault_for_s * _NS)
        first_ns = est.t_ns if est.t_start_ns is None else est.t_start_ns
        last_ns = max(first_ns, est.t_ns if est.t_end_ns is None else est.t_end_ns)
        start_ns, end_ns = track.episodes.get(est.channel, (first_ns, last_ns))
        if first_ns - end_ns > persist_ns:
            start_ns = first_ns  # a new episode: the last one ended long before
        if problems:
            end_ns = max(end_ns, last_ns)
            track.episodes[est.channel] = (start_ns, end_ns)
            if definite or end_ns - start_ns >= persist_ns:
                track.faulty_channels.add(est.channel)
        elif est.channel in track.faulty_channels:
            track.faulty_channels.discard(est.channel)
            track.episodes.pop(est.channel, None)
        return self._sensor_fault(d, est.t_ns, problems)

    def _sensor_fault(self, d: Device, t_ns: int, problems: list[str]) -> list[Observation]:
        track = self._tracks[d.id]
        faulty = sorted(track.faulty_channels)
        return self._obs(
            d, "sensor_fault", t_ns, bool(faulty), not faulty and not track.episodes,
            Severity.WARNING, float(len(faulty)),
            f"sensor fault on {', '.join(faulty) or 'no channel'}: {', '.join(problems) or 'ok'}",
        )  # fmt: skip

    def _daily(
        self, d: Device, track: _Track, th: Thresholds, est: DailyInput
    ) -> list[Observation]:
        out: list[Observation] = []
        missed, extra = est.missed_steps, est.extra_steps
        out += self._obs(
            d, "missed_steps", est.t_ns, missed >= th.missed_steps_per_day, missed == 0,
            Severity.WARNING, float(missed),
            f"{missed} of {est.steps_prescribed} prescribed distraction steps missed on that day",
        )  # fmt: skip
        out += self._obs(
            d, "extra_steps", est.t_ns, extra >= th.extra_steps_per_day, extra == 0,
            Severity.WARNING, float(extra),
            f"{extra} distraction steps beyond the {est.steps_prescribed} prescribed on that day",
        )  # fmt: skip
        out += self._loosening(d, track, est)
        if est.phase in ("consolidation", "ready") and self._emitted.get(
            (d.id, "stiffness_unmeasured"), (False, True)
        ) != (False, True):
            # Distraction is over: there is no growth left to judge.
            out += self._obs(
                d, "stiffness_unmeasured", est.t_ns, False, True, Severity.INFO, None,
                "distraction is over: no step growth to judge",
            )  # fmt: skip
        if "signal_quality" not in est.flags and (track.faulty_channels or track.episodes):
            # A whole day without a problem stretch: every channel is clean again.
            track.faulty_channels.clear()
            track.episodes.clear()
            out += self._sensor_fault(d, est.t_ns, [])
        out += self._sign_rule(d, est.t_ns, "sign_inconsistent" in est.flags)
        # The DSP's own judgement (docs/dsp.md): the last four steps' k_inst below its limit
        # beyond their error; a day without the flag clears it.
        poor = "poor_regenerate" in est.flags
        out += self._obs(
            d, "poor_regenerate", est.t_ns, poor, not poor, Severity.WARNING, None,
            "distraction steps softer than the poor-regenerate limit beyond their error: "
            "the regenerate may be poor (review the rate of distraction)",
        )  # fmt: skip
        if est.phase in ("ready", "consolidation"):
            ready = est.phase == "ready"
            out += self._obs(
                d, "readiness", est.t_ns, ready, not ready, Severity.INFO, est.load_share,
                "the removal criterion holds (two days of load shares below it)"
                if ready else "the removal criterion no longer holds",
            )  # fmt: skip
        if est.phase != "consolidation":
            return out
        if track.consolidation_start_ns is None:
            track.consolidation_start_ns = est.t_ns
        if finite(est.load_share):
            track.daily_shares.append((est.t_ns, est.load_share))
        window_ns = round(th.delayed_window_days * _DAY_NS)
        recent = [(t, s) for t, s in track.daily_shares if t > est.t_ns - window_ns]
        # Stiffening is sigmoid (docs/domain.md, Seide 2012): a normal consolidation starts flat.
        # Nothing is late before the fastest normal healing (healing index 30 days/cm) could
        # have reached removal, counted from the start of consolidation.
        judged = not finite(est.gained_mm) or est.t_ns - track.consolidation_start_ns >= round(
            th.delayed_min_days_per_cm * est.gained_mm / 10 * _DAY_NS
        )
        drop_per_week = (
            -7.0 * slope_per_day(recent)
            if judged and len(recent) >= th.delayed_min_tests
            else math.nan
        )
        slow = finite(drop_per_week) and drop_per_week < th.delayed_min_drop_per_week
        late = False
        if judged and finite(est.gained_mm):
            allowed_ns = round(th.delayed_healing_index_days_per_cm * est.gained_mm / 10 * _DAY_NS)
            deadline_ns = track.consolidation_start_ns + allowed_ns
            # A projected date only where the trend supports one; "too_far" says the date lies
            # beyond the horizon the data support, which is late if the horizon already is.
            if est.projection_status == "ok" and est.projected_ready_ns > 0:
                late = est.projected_ready_ns > deadline_ns
            elif est.projection_status == "too_far" and est.projection_horizon_ns > 0:
                late = est.projection_horizon_ns > deadline_ns
        if not (finite(drop_per_week) or late):
            return out
        recovering = (
            not finite(drop_per_week)
            or drop_per_week >= th.delayed_min_drop_per_week / _SLOPE_CLEAR
        )
        out += self._obs(
            d, "delayed_consolidation", est.t_ns, slow or late, recovering and not late,
            Severity.WARNING, drop_per_week,
            f"load share falling {100 * drop_per_week:.1f} %/week over {len(recent)} days "
            f"(expected at least {100 * th.delayed_min_drop_per_week:g} %/week)"
            + ("; projected removal later than the healing index allows" if late else ""),
        )  # fmt: skip
        return out

    def _loosening(self, d: Device, track: _Track, est: DailyInput) -> list[Observation]:
        # Loosening shows as a stiffness drop (docs/domain.md): the DSP's `loosening` flag is the
        # device's own stiffness in the weight-bearing test below its recent median. It shares
        # `stiffness_drop` with the tissue's drop; each clears only when the other is not up.
        loose = "loosening" in est.flags
        if not (loose or track.device_loose):
            return []
        track.device_loose = loose
        return self._obs(
            d, "stiffness_drop", est.t_ns, loose,
            not loose and "stiffness_drop" not in track.frozen, Severity.CRITICAL, None,
            "device stiffness in the weight-bearing test below its recent median (loosening)",
        )  # fmt: skip

    # --- events, status, frames, clock ---------------------------------------------------------

    def event(self, hub: str, event: Event) -> list[Observation]:
        """Judge one device event.

        Raises:
            UnknownDeviceError: the device is not in the registry or not on `hub`.
        """
        config, track = self._device(event.device, hub)
        track.last_seen_ns = max(track.last_seen_ns, event.t_ns)
        th = self._thresholds[config.id]
        if isinstance(event, Battery):
            return self._battery(config, th, event.t_ns, event.pct)
        if isinstance(event, Fault):
            return self._obs(
                config, "device_fault", event.t_ns, True, False, Severity.WARNING, None,
                f"device reports fault {event.code}: {event.detail}"[:200],
            )  # fmt: skip
        if isinstance(event, Reboot):
            return self._obs(
                config, "device_fault", event.t_ns, False, True, Severity.WARNING, None,
                "device restarted",
            )  # fmt: skip
        return []

    def _battery(self, d: Device, th: Thresholds, t_ns: int, pct: float) -> list[Observation]:
        if not finite(pct):
            return []
        critical = pct < th.battery_critical_pct
        return self._obs(
            d, "battery_low", t_ns, pct < th.battery_warning_pct, pct >= th.battery_clear_pct,
            Severity.CRITICAL if critical else Severity.WARNING, pct,
            f"battery at {pct:.0f} % (warning below {th.battery_warning_pct:g} %)",
        )  # fmt: skip

    def status(self, status: HubStatus) -> list[Observation]:
        """Judge a hub's online status: one observation per device of the hub."""
        out: list[Observation] = []
        for config in self._registry.devices.values():
            if config.hub != status.hub:
                continue
            th = self._thresholds[config.id]
            out += self._obs(
                config, "hub_offline", status.t_ns, not status.online, status.online,
                Severity.WARNING, None, f"hub {status.hub} is offline", th.hub_offline_for_s,
            )  # fmt: skip
        return out

    def frame(self, hub: str, frame: Frame) -> list[Observation]:
        """Judge one telemetry frame: overload, sequence gaps, battery.

        Raises:
            UnknownDeviceError: the device is not in the registry or not on `hub`.
        """
        config, track = self._device(frame.device, hub)
        t_ns = frame.t_last_ns
        track.last_seen_ns = max(track.last_seen_ns, t_ns)
        th = self._thresholds[config.id]
        out: list[Observation] = []
        if frame.battery_pct is not None:
            out += self._battery(config, th, t_ns, frame.battery_pct)
        if track.last_seq is not None and frame.seq > track.last_seq + 1:
            track.gaps.append((t_ns, frame.seq - track.last_seq - 1))
        # A lower seq is a device restart (or a late frame): no gap to count.
        track.last_seq = frame.seq
        missing = sum(n for t, n in track.gaps if t > t_ns - _HOUR_NS)
        out += self._obs(
            config, "data_gap", t_ns, missing >= th.gap_frames_per_hour, missing == 0,
            Severity.WARNING, float(missing), f"{missing} frames missing in the last hour",
        )  # fmt: skip
        magnitudes = [abs(f) for f in frame.force_n.tolist() if math.isfinite(f)]
        if not magnitudes:
            return out
        peak = max(magnitudes)
        hour = t_ns // _HOUR_NS
        track.hourly_max_n[hour] = max(track.hourly_max_n.get(hour, 0.0), peak)
        for old in [h for h in track.hourly_max_n if h <= hour - 25]:
            del track.hourly_max_n[old]
        past = [v for h, v in track.hourly_max_n.items() if hour - 24 <= h < hour]
        if len(past) < th.overload_min_hours:
            return out
        # Daily loading is the day's walking, a few bouts: the largest hourly peak of the last
        # 24 h. A median of hourly peaks is the resting force, which every bout would exceed.
        loading = max(past)
        limit = max(th.overload_ratio * loading, th.overload_min_n)
        out += self._obs(
            config, "overload", t_ns, peak > limit, peak <= limit, Severity.WARNING, peak,
            f"force spike {peak:.0f} N against a daily loading of {loading:.0f} N",
        )  # fmt: skip
        return out

    def tick(self, now_ns: int) -> list[Observation]:
        """Judge silence: every device not heard from for `silent_after_s`."""
        out: list[Observation] = []
        for config in self._registry.devices.values():
            _, track = self._device(config.id)
            th = self._thresholds[config.id]
            quiet_s = (now_ns - track.last_seen_ns) / _NS
            out += self._obs(
                config, "device_silent", now_ns, quiet_s > th.silent_after_s,
                quiet_s <= th.silent_after_s, Severity.WARNING, quiet_s,
                f"nothing from the device for {quiet_s / 60:.0f} min "
                f"(expected within {th.silent_after_s / 60:g} min)",
            )  # fmt: skip
        return out
