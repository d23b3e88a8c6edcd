"""The rules of the DSP's daily records: steps against the prescription, loosening, the
day's signal quality and sign, poor regenerate, readiness and delayed consolidation
(docs/alerts.md)."""

import math

from alerts.inputs import DailyInput, finite
from alerts.model import Observation, Severity
from alerts.rulebase import DAY_NS, RuleBase, Track
from alerts.thresholds import Thresholds
from alerts.trend import slope_per_day
from devices.registry import Device

__all__ = ["DailyRules"]

# A slope rule resolves below 3/4 of its limit (hysteresis).
_SLOPE_CLEAR = 0.75


class DailyRules(RuleBase):
    """Judges a day's record against the prescription and the patient's recent days."""

    def _daily(self, d: Device, track: Track, th: Thresholds, est: DailyInput) -> list[Observation]:
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
        window_ns = round(th.delayed_window_days * DAY_NS)
        recent = [(t, s) for t, s in track.daily_shares if t > est.t_ns - window_ns]
        # Stiffening is sigmoid (docs/domain.md, Seide 2012): a normal consolidation starts flat.
        # Nothing is late before the fastest normal healing (healing index 30 days/cm) could
        # have reached removal, counted from the start of consolidation.
        judged = not finite(est.gained_mm) or est.t_ns - track.consolidation_start_ns >= round(
            th.delayed_min_days_per_cm * est.gained_mm / 10 * DAY_NS
        )
        drop_per_week = (
            -7.0 * slope_per_day(recent)
            if judged and len(recent) >= th.delayed_min_tests
            else math.nan
        )
        slow = finite(drop_per_week) and drop_per_week < th.delayed_min_drop_per_week
        late = False
        if judged and finite(est.gained_mm):
            allowed_ns = round(th.delayed_healing_index_days_per_cm * est.gained_mm / 10 * DAY_NS)
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

    def _loosening(self, d: Device, track: Track, est: DailyInput) -> list[Observation]:
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
