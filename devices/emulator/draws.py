"""Per-device physics drawn from the device's seed: its drive, its tissue's relaxation, its sensor.

Published relaxation constants are one fit of one model (Bachmeier 2022, J Mech Behav Biomed
Mater 105133), not physiology: across patients and devices the step ramp, the fast time
constant and the fast share vary. Each device draws its own values once, from its seed alone
(its own random stream, so no other draw moves), and the ground truth records what was drawn.
A value set in `DeviceConfig` is taken as is instead of drawn.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "A_FAST_SCALE_RANGE",
    "MANUAL_RAMP_S",
    "MOTOR_RAMP_S",
    "TAU_FAST_S",
    "DevicePhysics",
    "draw_physics",
]

MANUAL_RAMP_S = (0.2, 0.8)
"""A manual nut turn, s: a fraction of a second (emulator choice; a quarter turn by hand)."""

MOTOR_RAMP_S = (0.3, 120.0)
"""A motor or magnet drive, s, log-uniform: from under a second to minutes (emulator choice).

Motorised distractors run from quick drives to slow, near-continuous ones (Aarnes 2002, J Orthop
Res 20:789, 1440 micro-steps a day); a log-uniform draw spreads devices evenly over the decades.
"""

TAU_FAST_S = (0.3, 3.0)
"""The fast relaxation time constant, s, log-uniform around Bachmeier 2022's 0.97 s.

One fit gives 0.97 s; across patients and devices expect about 0.3 s to several seconds
(emulator choice of the bounds). Resolving it needs >= 10 Hz around a step.
"""

A_FAST_SCALE_RANGE = (0.15, 1.0)
"""Multiplier of Bachmeier 2022's fast share a_f = 0.71 - 0.016 i, uniform.

At step 1 the published a_f is 0.694, so the devices span a_f ~ 0.10 to ~ 0.69 (the fast share
varies from under 0.1 to about 0.7 across tissue; emulator choice of the bounds). The trend in
the step number is kept.
"""


@dataclass(frozen=True)
class DevicePhysics:
    """What one device was drawn (or configured) to be.

    Attributes:
        step_ramp_s: ramp time of the device's own steps and probes, s.
        manual_ramp_s: ramp time of a manual turn (extra steps), s.
        tau_fast_s: fast relaxation time constant of its tissue, s.
        a_fast_scale: multiplier of the published fast share a_f.
        force_polarity: +1, or -1 when the force sensor is mounted the other way.
    """

    step_ramp_s: float
    manual_ramp_s: float
    tau_fast_s: float
    a_fast_scale: float
    force_polarity: float


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def draw_physics(
    *,
    seed: int,
    step_source: Literal["motor", "manual"],
    step_ramp_s: float | None,
    tau_fast_s: float | None,
    a_fast_scale: float | None,
    force_polarity: float,
) -> DevicePhysics:
    """Draw one device's physics from its seed; a value given is used instead of its draw.

    Every value is drawn whether or not it is given, in a fixed order, so setting one never
    moves another.

    Args:
        seed: the device's seed.
        step_source: who turns the device: a motor drive or the patient's hand.
        step_ramp_s, tau_fast_s, a_fast_scale: fixed values, or None to draw.
        force_polarity: +1 or -1 (from the scenario).

    Returns:
        The device's physics.
    """
    rng = np.random.default_rng([seed, 4])
    motor_ramp_s = _log_uniform(rng, MOTOR_RAMP_S)
    manual_ramp_s = float(rng.uniform(*MANUAL_RAMP_S))
    drawn_tau_fast_s = _log_uniform(rng, TAU_FAST_S)
    drawn_scale = float(rng.uniform(*A_FAST_SCALE_RANGE))
    own_ramp_s = motor_ramp_s if step_source == "motor" else manual_ramp_s
    return DevicePhysics(
        step_ramp_s=own_ramp_s if step_ramp_s is None else step_ramp_s,
        manual_ramp_s=manual_ramp_s,
        tau_fast_s=drawn_tau_fast_s if tau_fast_s is None else tau_fast_s,
        a_fast_scale=drawn_scale if a_fast_scale is None else a_fast_scale,
        force_polarity=force_polarity,
    )
