"""The rules of distraction steps and probes: distraction force, stiffness and force drops,
premature consolidation and whether it can be judged (docs/alerts.md)."""

import math
import statistics
from collections.abc import Iterable

from alerts.inputs import StepInput, finite
from alerts.model import Observation, Severity
from alerts.rulebase import DAY_NS, RuleBase, StepMemory, Track
from alerts.thresholds import Thresholds
from alerts.trend import slope_with_error
from devices.registry import Device

__all__ = ["StepRules"]


class StepRules(RuleBase):
    """Judges a step or probe record against the patient's recent steps."""

    def _step(self, d: Device, track: Track, th: Thresholds, est: StepInput) -> list[Observation]:
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
            StepMemory(
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

    def _premature(self, d: Device, track: Track, th: Thresholds, t_ns: int) -> list[Observation]:
        # Relative to the patient's own trajectory: the growth rate of ln k_inst is scale-free,
        # so it needs no absolute force and holds for any gain, site or tissue. Not on k_peak:
        # the relaxation's fast share falls step by step (Bachmeier 2022), so on a slow ramp
        # k_peak grows several times faster than the tissue's stiffness.
        window_ns = round(th.premature_window_days * DAY_NS)
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
