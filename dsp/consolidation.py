"""Consolidation: how far the regenerate has taken over the load, its trend, and when the
removal criterion will be met.

A load share s (dsp.loadshare) is turned into the regenerate-to-device stiffness ratio
r = (1 - s) / s (springs in parallel), whose logarithm rises about linearly while the
regenerate stiffens along the early part of a sigmoid healing curve (Seide 2012, JBJS Br
94:398). A line through ln r over the last `trend_days`, each share weighted by the inverse of
its variance, is extrapolated to the ratio of the removal criterion, load share below 10 %
(Aarnes 2005, J Orthop Res), i.e. r = 9 -- only when the data support it: shares on at least
`min_days` different days, a slope above two of its standard errors, and a date no further
ahead than `max_horizon_factor` times the span of the shares behind it. Only shares the
estimator found usable (dsp.estimator) come here.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CONSOLIDATION_VERSION",
    "ConsolidationConfig",
    "ProjectionStatus",
    "Trend",
    "consolidation_index",
    "fit_trend",
    "stiffness_ratio",
]

CONSOLIDATION_VERSION = "dsp.consolidation/2"

ProjectionStatus = Literal["ok", "insufficient_days", "not_significant", "too_far"]

_Z_BAND = 2.0  # the band is +/- 2 standard errors of the projected day


@dataclass(frozen=True, kw_only=True)
class ConsolidationConfig:
    """Settings of the consolidation trend.

    Attributes:
        removal_share: load share below which the device may come off; 0.10 (Aarnes 2005).
        trend_days: the trend line is fitted over the load shares of this many last days: 10,
            so a projection may reach 20 days ahead; ln r bends along a sigmoid healing curve,
            and a 14-day window puts emulated normal healers' dates 4.5 days late (1 day
            with 10).
        min_days: a trend needs shares on at least this many different UTC days.
        share_floor: shares are clipped to [share_floor, 1 - share_floor] before the
            logarithm, so a noisy 0 % or 100 % does not become infinite.
        share_std_floor: a share's standard error counts as at least this much in the
            weights: a standing test's regression error (often below 0.001) says nothing of
            how the patient stood from one day to the next.
        max_horizon_factor: a date further ahead than this times the span of the shares
            behind the trend is not projected (status "too_far").
        max_projection_days: nor one further than this (days).
    """

    removal_share: float = 0.10
    trend_days: float = 10.0
    min_days: int = 3
    share_floor: float = 0.005
    share_std_floor: float = 0.01
    max_horizon_factor: float = 2.0
    max_projection_days: float = 365.0

    def __post_init__(self) -> None:
        if not 0.0 < self.removal_share < 1.0:
            raise ValueError(f"removal_share={self.removal_share} must be in (0, 1)")
        if not (self.trend_days > 0.0 and self.min_days >= 2):
            raise ValueError("trend_days must be > 0 and min_days >= 2")
        if not 0.0 < self.share_floor < 0.5:
            raise ValueError(f"share_floor={self.share_floor} must be in (0, 0.5)")
        if not (self.share_std_floor > 0.0 and self.max_horizon_factor > 0.0):
            raise ValueError("share_std_floor and max_horizon_factor must be > 0")


@dataclass(frozen=True, kw_only=True)
class Trend:
    """The consolidation trend of one device.

    Attributes:
        slope_per_day: d ln(r) / dt, r the regenerate-to-device stiffness ratio (1/day);
            positive while the regenerate stiffens.
        slope_std_per_day: its standard error (1/day).
        share_now: the trend line's load share at the last point (1 = all the load).
        projected_day: the day (same scale as the input days) on which the line reaches the
            removal criterion; NaN unless status is "ok".
        projected_lo_day, projected_hi_day: the band of +/- 2 standard errors around it (NaN
            unless status is "ok").
        horizon_day: the furthest day a projection may reach (the last share's day plus
            max_horizon_factor times the shares' span); with status "too_far" the line
            reaches the criterion only after it.
        n_points: shares in the fit.
        n_days: different UTC days among them.
        status: "ok" (projected), "insufficient_days" (fewer than min_days), "not_significant"
            (slope not above two standard errors), "too_far" (beyond the horizon).
    """

    slope_per_day: float
    slope_std_per_day: float
    share_now: float
    projected_day: float
    projected_lo_day: float
    projected_hi_day: float
    horizon_day: float
    n_points: int
    n_days: int
    status: ProjectionStatus


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
    share_std: NDArray[np.float64] | list[float] | None = None,
    *,
    config: ConsolidationConfig | None = None,
) -> Trend | None:
    """Fit the consolidation trend to load shares and project the removal date.

    Args:
        day: time of each load share (days since the UTC epoch, ascending).
        share: the load shares (1 = all the load); non-finite ones are skipped.
        share_std: their standard errors (None: all equal); each counts as at least
            share_std_floor.
        config: settings; defaults if None.

    Returns:
        The trend, or None with fewer than two finite shares in the last `trend_days`.
    """
    cfg = config or ConsolidationConfig()
    d = np.asarray(day, dtype=np.float64)
    s = np.asarray(share, dtype=np.float64)
    se = np.zeros_like(s) if share_std is None else np.asarray(share_std, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(s)
    d, s, se = d[ok], s[ok], np.where(np.isfinite(se[ok]), se[ok], 0.0)
    if d.size == 0:
        return None
    recent = d >= d[-1] - cfg.trend_days
    d, s, se = d[recent], s[recent], se[recent]
    if d.size < 2 or float(np.ptp(d)) <= 0.0:
        return None
    s = np.clip(s, cfg.share_floor, 1.0 - cfg.share_floor)
    y = np.log((1.0 - s) / s)
    # d ln r / d s = -1 / (s (1 - s)): the delta method carries each share's variance to ln r.
    var_y = (np.maximum(se, cfg.share_std_floor) / (s * (1.0 - s))) ** 2
    w = 1.0 / var_y
    x = d - d[-1]
    x_mean = float(np.sum(w * x) / np.sum(w))
    y_mean = float(np.sum(w * y) / np.sum(w))
    sxx = float(np.sum(w * (x - x_mean) ** 2))
    slope = float(np.sum(w * (x - x_mean) * (y - y_mean))) / sxx
    resid = y - (y_mean + slope * (x - x_mean))
    # The stated variances, scaled up (never down) by the scatter the line leaves.
    scale = max(1.0, float(np.sum(w * resid**2)) / (d.size - 2)) if d.size > 2 else 1.0
    slope_std = math.sqrt(scale / sxx)
    y_now = y_mean - slope * x_mean
    y_now_std = math.sqrt(scale * (1.0 / float(np.sum(w)) + x_mean**2 / sxx))
    n_days = int(np.unique(np.floor(d)).size)
    y_goal = math.log((1.0 - cfg.removal_share) / cfg.removal_share)
    projected = lo = hi = math.nan
    status: ProjectionStatus = "ok"
    ahead = (y_goal - y_now) / slope if slope > 0.0 else math.inf
    horizon = min(cfg.max_horizon_factor * float(np.ptp(d)), cfg.max_projection_days)
    if n_days < cfg.min_days:
        status = "insufficient_days"
    elif not slope > _Z_BAND * slope_std:
        status = "not_significant"
    elif ahead > horizon:
        status = "too_far"
    else:
        projected = float(d[-1]) + max(ahead, 0.0)
        # First-order error of (y_goal - y_now) / slope from the slope's and level's errors.
        std = math.hypot(y_now_std / slope, ahead * slope_std / slope)
        lo = projected - _Z_BAND * std
        hi = projected + _Z_BAND * std
    return Trend(
        slope_per_day=slope,
        slope_std_per_day=slope_std,
        share_now=1.0 / (1.0 + math.exp(y_now)),
        projected_day=projected,
        projected_lo_day=lo,
        projected_hi_day=hi,
        horizon_day=float(d[-1]) + horizon,
        n_points=int(d.size),
        n_days=n_days,
        status=status,
    )
