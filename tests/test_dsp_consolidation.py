"""Consolidation trend, index and adherence on plain values."""

import math

import numpy as np
import pytest

from dsp.adherence import Protocol, daily_adherence
from dsp.consolidation import ConsolidationConfig, consolidation_index, fit_trend


def test_trend_projects_the_day_an_exponential_stiffening_reaches_ten_percent() -> None:
    """A stiffness ratio growing as e^(0.2 t) is projected to reach load share 10 % on time."""
    day = np.arange(0.0, 6.0)
    ratio = 0.5 * np.exp(0.2 * day)
    trend = fit_trend(day, 1.0 / (1.0 + ratio), config=ConsolidationConfig(trend_days=10.0))
    assert trend is not None
    expected = math.log(9.0 / 0.5) / 0.2
    assert trend.projected_day == pytest.approx(expected, rel=1e-9)
    assert trend.slope_per_day == pytest.approx(0.2, rel=1e-9)


def test_flat_shares_give_no_projected_day() -> None:
    """Load shares that do not fall give a trend without a projected date."""
    trend = fit_trend([0.0, 1.0, 2.0, 3.0, 4.0], [0.9, 0.91, 0.9, 0.91, 0.9])
    assert trend is not None
    assert math.isnan(trend.projected_day) or trend.projected_day > 4.0 + 30.0


def test_too_few_points_give_no_trend() -> None:
    """Fewer daily shares than min_points give no trend."""
    assert fit_trend([0.0, 1.0], [0.9, 0.8]) is None


@pytest.mark.parametrize(
    ("share", "index"),
    [(1.0, 0.0), (0.1, 1.0), (0.05, 1.0), (0.55, 0.5)],
    ids=["all-load", "criterion", "beyond", "halfway"],
)
def test_consolidation_index_runs_from_zero_to_one(share: float, index: float) -> None:
    """The index is 0 at full load share and 1 at the removal criterion."""
    assert consolidation_index(share) == pytest.approx(index)


@pytest.mark.parametrize(
    ("done", "missed", "extra"),
    [(4, 0, 0), (3, 1, 0), (5, 0, 1)],
    ids=["adherent", "missed", "extra"],
)
def test_adherence_counts_missed_and_extra_steps(done: int, missed: int, extra: int) -> None:
    """Steps against a 4 x 0.25 mm protocol are counted as missed or extra."""
    adh = daily_adherence(
        done, done * 0.25, protocol=Protocol(), prescribed_today=True, gained_mm=0.0
    )
    assert (adh.missed_steps, adh.extra_steps, adh.steps_prescribed) == (missed, extra, 4)


def test_last_distraction_day_asks_only_for_what_is_left() -> None:
    """With 9.5 of 10 mm gained, the protocol asks for 2 steps, not 4."""
    adh = daily_adherence(
        2, 0.5, protocol=Protocol(target_mm=10.0), prescribed_today=True, gained_mm=9.5
    )
    assert adh.steps_prescribed == 2
    assert adh.ratio == pytest.approx(1.0)
