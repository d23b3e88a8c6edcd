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
The step and probe rules are in alerts.steprules, the daily records' in alerts.dailyrules,
what they share (a device's `Track`, how a rule speaks) in alerts.rulebase; `RuleBook` holds
the rest and is the one entry point.
"""

import math
from datetime import UTC, datetime

from alerts.dailyrules import DailyRules
from alerts.inputs import CatchupInput, Estimate, LoadShareInput, QualityInput, StepInput, finite
from alerts.model import RULES, Observation, Severity
from alerts.rulebase import NS_PER_S, Track, UnknownDeviceError
from alerts.steprules import StepRules
from alerts.thresholds import AlertOverrides, Thresholds
from devices.contract import Battery, Event, Fault, Frame, HubStatus, Reboot
from devices.registry import Device, Registry

__all__ = ["RULES", "RuleBook", "UnknownDeviceError"]

_HOUR_NS = 3_600 * NS_PER_S


class RuleBook(StepRules, DailyRules):
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
        self._tracks: dict[str, Track] = {}
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
            datetime.fromtimestamp(est.from_ns // NS_PER_S, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
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
        elif est.status == "capture_missing":
            summary = (
                f"ingest's capture files of hub {est.hub} begin after {since}, where the "
                "device's checkpoint left its estimator (storage tier): its estimates go on "
                f"without what was received in between, {consequence}"
            )
        else:
            summary = f"ingest read the device's stored history at its start ({est.status})"
        # Only a rebuild read the whole history again: a `caught_up` start goes on from the
        # checkpoint, whose trends still lack what was not read, so it changes nothing here.
        incomplete = est.status in {"truncated", "store_unreachable", "capture_missing"}
        if not (incomplete or est.status == "rebuilt"):
            return []
        return self._obs(
            d, "estimates_incomplete", est.t_ns, incomplete, not incomplete, Severity.INFO,
            None, summary,
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

    def _quality(
        self, d: Device, track: Track, th: Thresholds, est: QualityInput
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
        persist_ns = round(th.sensor_fault_for_s * NS_PER_S)
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
            quiet_s = (now_ns - track.last_seen_ns) / NS_PER_S
            out += self._obs(
                config, "device_silent", now_ns, quiet_s > th.silent_after_s,
                quiet_s <= th.silent_after_s, Severity.WARNING, quiet_s,
                f"nothing from the device for {quiet_s / 60:.0f} min "
                f"(expected within {th.silent_after_s / 60:g} min)",
            )  # fmt: skip
        return out
