"""Least-squares slopes of a patient's own trajectories, per day (the alert rules' growth,
premature-consolidation and delayed-consolidation judgements, alerts/rules.py)."""

import math
from collections.abc import Iterable

__all__ = ["slope_per_day", "slope_with_error"]

_DAY_NS = 86_400 * 1_000_000_000


def slope_per_day(points: Iterable[tuple[int, float]]) -> float:
    """Least-squares slope of (t_ns, value) points, value units per day; NaN below 2 times."""
    return slope_with_error(points)[0]


def slope_with_error(points: Iterable[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares slope of (t_ns, value) points and its standard error, both per day.

    Non-finite values are skipped. The slope is NaN below 2 distinct times; the standard
    error (from the residuals, n - 2 degrees of freedom) is NaN below 3 points.
    """
    pts = [(t / _DAY_NS, v) for t, v in points if math.isfinite(v)]
    if len(pts) < 2:
        return math.nan, math.nan
    mean_t = sum(t for t, _ in pts) / len(pts)
    mean_v = sum(v for _, v in pts) / len(pts)
    sxx = sum((t - mean_t) ** 2 for t, _ in pts)
    if sxx == 0.0:
        return math.nan, math.nan
    slope = sum((t - mean_t) * (v - mean_v) for t, v in pts) / sxx
    if len(pts) < 3:
        return slope, math.nan
    residual = sum((v - mean_v - slope * (t - mean_t)) ** 2 for t, v in pts)
    return slope, math.sqrt(residual / (len(pts) - 2) / sxx)
