"""Adherence: the distraction steps done on a day against the prescribed protocol.

The classic limb protocol is 1 mm/day as 4 steps of 0.25 mm (docs/domain.md "The treatment");
it is the default when no protocol is known (a capture analysed without a registry).
"""

import math
from dataclasses import dataclass

__all__ = ["ADHERENCE_VERSION", "Adherence", "Protocol", "daily_adherence"]

ADHERENCE_VERSION = "dsp.adherence/1"


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """A prescribed distraction.

    Attributes:
        steps_per_day: prescribed steps per day (rhythm); 4 for the classic limb protocol.
        step_mm: prescribed elongation per step (mm); 0.25 (docs/domain.md).
        target_mm: prescribed total gain (mm); None if unknown, then distraction is taken
            to have ended after a quiet spell (see EstimatorConfig.consolidation_after_s).
    """

    steps_per_day: int = 4
    step_mm: float = 0.25
    target_mm: float | None = None

    def __post_init__(self) -> None:
        if not (self.steps_per_day >= 1 and self.step_mm > 0.0):
            raise ValueError("steps_per_day must be >= 1 and step_mm > 0")
        if self.target_mm is not None and not self.target_mm > 0.0:
            raise ValueError(f"target_mm={self.target_mm} must be > 0")

    @property
    def rate_mm_per_day(self) -> float:
        """Prescribed elongation per day (mm/day)."""
        return self.steps_per_day * self.step_mm


@dataclass(frozen=True, kw_only=True)
class Adherence:
    """One day's distraction against the protocol.

    Attributes:
        steps_done: distraction steps recorded that day.
        steps_prescribed: steps the protocol asked for that day (0 outside distraction).
        mm_done: elongation recorded that day (mm).
        mm_prescribed: elongation prescribed that day (mm).
        ratio: mm_done / mm_prescribed; NaN when nothing was prescribed.
        missed_steps: prescribed steps not done (>= 0).
        extra_steps: steps beyond the prescription (>= 0).
    """

    steps_done: int
    steps_prescribed: int
    mm_done: float
    mm_prescribed: float
    ratio: float
    missed_steps: int
    extra_steps: int


def daily_adherence(
    steps_done: int, mm_done: float, *, protocol: Protocol, prescribed_today: bool, gained_mm: float
) -> Adherence:
    """Compare one day's steps with the protocol.

    Args:
        steps_done: distraction steps recorded that day.
        mm_done: their total elongation (mm).
        protocol: the prescription.
        prescribed_today: whether the protocol asked for steps that day (a distraction day).
        gained_mm: total elongation before that day (mm); the last day of a distraction with
            a target asks only for what is left.

    Returns:
        The day's adherence.
    """
    steps_prescribed = protocol.steps_per_day if prescribed_today else 0
    if prescribed_today and protocol.target_mm is not None:
        left = max(protocol.target_mm - gained_mm, 0.0)
        # A remainder of 1e-9 mm is rounding, not a step still owed.
        steps_prescribed = min(steps_prescribed, math.ceil(left / protocol.step_mm - 1e-6))
    mm_prescribed = steps_prescribed * protocol.step_mm
    return Adherence(
        steps_done=steps_done,
        steps_prescribed=steps_prescribed,
        mm_done=mm_done,
        mm_prescribed=mm_prescribed,
        ratio=mm_done / mm_prescribed if mm_prescribed > 0.0 else math.nan,
        missed_steps=max(steps_prescribed - steps_done, 0),
        extra_steps=max(steps_done - steps_prescribed, 0),
    )
