"""Consolidation: how far the regenerate has taken over the load, its trend, and when the
removal criterion will be met.

The daily load share s (dsp.loadshare) is turned into the regenerate-to-device stiffness ratio
r = (1 - s) / s (springs in parallel), whose logarithm rises about linearly while the
regenerate stiffens along the early part of a sigmoid healing curve (Seide 2012, DOMAIN.md).
A weighted line through ln r over the last `trend_days` is extrapolated to the ratio of the
removal criterion, load share below 10 % (Aarnes 2005, J Orthop Res; DOMAIN.md), i.e. r = 9.
"""

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CONSOLIDATION_VERSION",
    "ConsolidationConfig",
    "Trend",
    "consolidation_index",
    "fit_trend",
    "stiffness_ratio",
]

CONSOLIDATION_VERSION = "dsp.consolidation/1"

_Z_BAND = 2.0  # the band is +/- 2 standard errors of the projected day


@dataclass(frozen=True, kw_only=True)
class ConsolidationConfig:
    """Settings of the consolidation trend.

    Attributes:
        removal_share: load share below which the device may come off; 0.10 (Aarnes 2005,
            DOMAIN.md "Consolidation").
        trend_days: the trend line is fitted over the load shares of this many last days.
        min_points: a trend needs at least this many daily load shares.
        share_floor: shares are clipped to [share_floor, 1 - share_floor] before the
            logarithm, so a noisy 0 % or 100 % does not become infinite.
        max_projection_days: a projected date further away than this is not reported.
    """

    removal_share: float = 0.10
    trend_days: float = 5.0
    min_points: int = 4
    share_floor: float = 0.005
    max_projection_days: float = 365.0

    def __post_init__(self) -> None:
        if not 0.0 < self.removal_share < 1.0:
            raise ValueError(f"removal_share={self.removal_share} must be in (0, 1)")
        if not (self.trend_days > 0.0 and self.min_points >= 2):
            raise ValueError("trend_days must be > 0 and min_points >= 2")
        if not 0.0 < self.share_floor < 0.5:
            raise ValueError(f"share_floor={self.share_floor} must be in (0, 0.5)")


@dataclass(frozen=True, kw_only=True)
class Trend:
    """The consolidation trend of one device.

    Attributes:
        slope_per_day: d ln(r) / dt, r the regenerate-to-device stiffness ratio (1/day);
            positive while the regenerate stiffens.
        slope_std_per_day: its standard error (1/day).
        share_now: the trend line's load share at the last point (1 = all the load).
        projected_day: the day (same scale as the input days) on which the line reaches the
            removal criterion; NaN if it does not rise or is beyond max_projection_days.
        projected_lo_day, projected_hi_day: the band of +/- 2 standard errors around it (NaN
            when the slope is not significantly positive the upper end is NaN).
        n_points: daily shares in the fit.
    """

    slope_per_day: float
    slope_std_per_day: float
    share_now: float
    projected_day: float
    projected_lo_day: float
    projected_hi_day: float
    n_points: int


def stiffness_ratio(
    share: float | NDArray[np.float64], *, floor: float = 0.005
) -> NDArray[np.float64]:
    """The regenerate-to-device stiffness ratio (1 - s) / s of load shares s, clipped at floor."""
    s = np.clip(np.asarray(share, dtype=np.float64), floor, 1.0 - floor)
    return np.asarray((1.0 - s) / s)


def consolidation_index(share: float, *, removal_share: float = 0.10) -> float:
    """Consolidation index in [0, 1]: 0 while the device carries all the load, 1 once the load
    share reaches the removal criterion (linear in the load share between the two).

    Args:
        share: load share (1 = all of the load through the device); NaN gives NaN.
        removal_share: load share of the removal criterion (0.10, Aarnes 2005).
    """
    if not math.isfinite(share):
        return math.nan
    return min(max((1.0 - share) / (1.0 - removal_share), 0.0), 1.0)


def fit_trend(
    day: NDArray[np.float64] | list[float],
    share: NDArray[np.float64] | list[float],
    *,
    config: ConsolidationConfig | None = None,
) -> Trend | None:
    """Fit the consolidation trend to daily load shares and project the removal date.

    Args:
        day: time of each load share (days, any origin, ascending).
        share: the load shares (1 = all the load); non-finite ones are skipped.
        config: settings; defaults if None.

    Returns:
        The trend, or None with fewer than `min_points` finite shares in the last
        `trend_days`.
    """
    cfg = config or ConsolidationConfig()
    d = np.asarray(day, dtype=np.float64)
    s = np.asarray(share, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(s)
    d, s = d[ok], s[ok]
    if d.size == 0:
        return None
    recent = d >= d[-1] - cfg.trend_days
    d, s = d[recent], s[recent]
    if d.size < cfg.min_points:
        return None
    y = np.log(stiffness_ratio(s, floor=cfg.share_floor))
    d0 = d[-1]
    x = d - d0
    x_mean, y_mean = float(x.mean()), float(y.mean())
    sxx = float(np.sum((x - x_mean) ** 2))
    if sxx <= 0.0:
        return None
    slope = float(np.sum((x - x_mean) * (y - y_mean))) / sxx
    resid = y - (y_mean + slope * (x - x_mean))
    dof = max(d.size - 2, 1)
    sigma2 = float(np.sum(resid**2)) / dof
    slope_std = math.sqrt(sigma2 / sxx)
    y_now = y_mean + slope * (0.0 - x_mean)
    y_now_std = math.sqrt(sigma2 * (1.0 / d.size + x_mean**2 / sxx))
    share_now = 1.0 / (1.0 + math.exp(y_now))
    y_goal = math.log((1.0 - cfg.removal_share) / cfg.removal_share)
    projected = lo = hi = math.nan
    if slope > 0.0:
        ahead = (y_goal - y_now) / slope
        if ahead <= cfg.max_projection_days:
            projected = d0 + max(ahead, 0.0)
            # First-order error of (y_goal - y_now) / slope from the slope's and level's errors.
            std = math.hypot(y_now_std / slope, ahead * slope_std / slope)
            lo = projected - _Z_BAND * std
            hi = projected + _Z_BAND * std if slope > _Z_BAND * slope_std else math.nan
    return Trend(
        slope_per_day=slope,
        slope_std_per_day=slope_std,
        share_now=share_now,
        projected_day=projected,
        projected_lo_day=lo,
        projected_hi_day=hi,
        n_points=int(d.size),
    )
