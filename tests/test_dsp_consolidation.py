"""Consolidation trend, index and adherence on plain values."""

import math

import numpy as np
import pytest

from dsp.adherence import Protocol, daily_adherence
from dsp.consolidation import ConsolidationConfig, consolidation_index, fit_trend


def test_trend_projects_the_day_an_exponential_stiffening_reaches_ten_percent() -> None:
    """A stiffness ratio growing as e^(0.2 t) over six days is projected to reach load share
    10 % on time, with a band around it."""
    day = np.arange(0.0, 6.0)
    ratio = 0.5 * np.exp(0.2 * day)
    trend = fit_trend(day, 1.0 / (1.0 + ratio), config=ConsolidationConfig(trend_days=10.0,
                      max_horizon_factor=4.0))  # fmt: skip
    assert trend is not None
    assert trend.status == "ok"
    expected = math.log(9.0 / 0.5) / 0.2
    assert trend.projected_day == pytest.approx(expected, rel=1e-9)
    assert trend.slope_per_day == pytest.approx(0.2, rel=1e-9)
    assert trend.projected_lo_day <= trend.projected_day <= trend.projected_hi_day


def test_a_date_beyond_twice_the_data_span_is_not_projected() -> None:
    """The same trend seen over three days reaches 10 % 11 days after its last share: further
    than twice its span, so no date."""
    day = np.arange(0.0, 4.0)
    trend = fit_trend(day, 1.0 / (1.0 + 0.5 * np.exp(0.2 * day)))
    assert trend is not None
    assert trend.status == "too_far"
    assert math.isnan(trend.projected_day)


def test_flat_shares_give_no_projected_day() -> None:
    """Load shares that do not fall give a trend without a projected date."""
    trend = fit_trend([0.0, 1.0, 2.0, 3.0, 4.0], [0.9, 0.91, 0.9, 0.91, 0.9])
    assert trend is not None
    assert trend.status == "not_significant"
    assert math.isnan(trend.projected_day)


def test_shares_on_two_days_are_not_a_trend() -> None:
    """Four shares on two days give a slope but no projection."""
    trend = fit_trend([0.1, 0.6, 1.1, 1.6], [0.5, 0.45, 0.3, 0.25])
    assert trend is not None
    assert trend.n_days == 2
    assert trend.status == "insufficient_days"
    assert math.isnan(trend.projected_day)
    assert fit_trend([0.0], [0.9]) is None


def test_an_uncertain_share_weighs_less() -> None:
    """A share with a large standard error barely moves the line the precise ones draw."""
    day = [0.0, 1.0, 2.0, 3.0]
    clean = [0.5, 0.4, 0.3, 0.2]
    outlier = [0.5, 0.4, 0.9, 0.2]
    precise = fit_trend(day, clean, [0.01] * 4)
    weighted = fit_trend(day, outlier, [0.01, 0.01, 0.5, 0.01])
    plain = fit_trend(day, outlier, [0.01] * 4)
    assert precise is not None
    assert weighted is not None
    assert plain is not None
    assert abs(weighted.slope_per_day - precise.slope_per_day) < 0.05
    assert abs(plain.slope_per_day - precise.slope_per_day) > 0.1


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
