"""The estimator's clinical rules on plain values, without a fleet."""

import math

import pytest

from dsp.rules import (
    is_loosening,
    is_poor_regenerate,
    is_separation,
    qualifies_for_removal,
    share_flags,
    steps_sign,
)


@pytest.mark.parametrize(
    ("f_residual_n", "previous", "hit"),
    [(150.0, [700.0, 791.0], True), (600.0, [700.0, 791.0], False), (2.0, [6.0], False),
     (math.nan, [791.0], False), (150.0, [], False)],
    ids=["sudden_drop", "small_drop", "below_5_n", "no_force", "first_step"],
)  # fmt: skip
def test_separation_is_a_sudden_drop_of_the_force_before_a_step(
    f_residual_n: float, previous: list[float], hit: bool
) -> None:
    """791 -> 150 N is a separation; a drop to 600 N, a 4 N drop or no history is not."""
    assert is_separation(f_residual_n, previous, drop=0.5, min_n=5.0) is hit


def test_poor_regenerate_needs_four_soft_steps() -> None:
    """The median of the last four steps' upper ends (k_inst + 2 SE) below the limit flags;
    three steps decide nothing."""
    assert is_poor_regenerate([20.0, 8.0, 9.0, 7.0, 9.5], limit_n_per_mm=10.0)
    assert not is_poor_regenerate([8.0, 9.0, 7.0], limit_n_per_mm=10.0)
    assert not is_poor_regenerate([8.0, 30.0, 31.0, 32.0], limit_n_per_mm=10.0)


def test_loosening_is_a_drop_below_the_devices_own_history() -> None:
    """A device stiffness 5 % below the median of its last tests is loosening at 2 %; one
    within 2 %, or with fewer than three tests behind it, is not."""
    history = [1000.0, 1010.0, 990.0]
    assert is_loosening(950.0, history, drop=0.02)
    assert not is_loosening(985.0, history, drop=0.02)
    assert not is_loosening(500.0, history[:2], drop=0.02)


def test_the_sign_of_the_steps_needs_enough_of_them() -> None:
    """Falling steps give -1, rising +1, too few 0."""
    assert steps_sign([-20.0, -22.0, 5.0], min_steps=3) == -1
    assert steps_sign([20.0, 22.0, -5.0], min_steps=3) == 1
    assert steps_sign([20.0, 22.0], min_steps=3) == 0


@pytest.mark.parametrize(
    ("share", "resid_sd_n", "ref_range_n", "flags"),
    [(0.5, 1.0, 500.0, set()), (-0.94, 1.0, 500.0, {"implausible"}),
     (1.3, 1.0, 500.0, {"implausible"}), (1.02, 1.0, 500.0, set()),
     (0.5, 40.0, 500.0, {"poor_fit"}), (0.5, 1.0, 60.0, {"low_load_variation"})],
    ids=["usable", "negative", "above_one", "within_margin", "patient_moved", "little_load"],
)  # fmt: skip
def test_share_flags_name_why_a_share_cannot_be_used(
    share: float, resid_sd_n: float, ref_range_n: float, flags: set[str]
) -> None:
    """Each flag follows its rule; a share a hair above 1 stays usable within the margin."""
    got = share_flags(
        share, 0.005, resid_sd_n, ref_range_n, margin=0.03, max_resid_fraction=0.05,
        min_load_range_n=100.0,
    )  # fmt: skip
    assert got == flags


@pytest.mark.parametrize(
    ("share", "share_std", "qualifies"),
    [
        (0.05, 0.01, True), (0.09, 0.01, False), (0.01, 0.01, True), (-0.004, 0.003, True),
        (-0.09, 0.01, False), (-0.94, 0.01, False),
    ],
    ids=["clear", "too_close_to_10", "near_0", "healed_a_hair_below_0", "wrong_sign_near_10",
         "wrong_sign"],
)  # fmt: skip
def test_a_share_qualifies_below_ten_percent_in_magnitude_by_two_se(
    share: float, share_std: float, qualifies: bool
) -> None:
    """|share| + 2 SE < 10 %: a healed share of 0 counts whichever side it reads; a share at
    the criterion's edge, of either sign, does not."""
    assert qualifies_for_removal(share, share_std, removal_share=0.10) is qualifies
