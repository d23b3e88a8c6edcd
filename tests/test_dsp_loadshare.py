"""Load share: accuracy on synthetic standing tests, kernel against reference, streaming
against batch, and the test window."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from reference import ref_loadshare

from dsp.loadshare import LoadShareTracker, load_share

RATE_HZ = 100.0
T0_NS = 1_700_000_000_000_000_000


def standing_test(
    rng: np.random.Generator, share: float, *, f_offset_n: float = 120.0, sign: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Device force and scale reading (N) of three stand-and-step-off cycles of 60 s, with
    0.5 N rms force noise and 2 N rms scale noise."""
    t = np.arange(int(180 * RATE_HZ)) / RATE_HZ
    body_n = 700.0
    ref = body_n * 0.5 * (1.0 - np.cos(2.0 * np.pi * t / 60.0))
    force = f_offset_n + sign * share * ref
    return force + rng.normal(0.0, 0.5, t.size), ref + rng.normal(0.0, 2.0, t.size)


@pytest.mark.parametrize(
    ("share", "sign"),
    [(0.95, 1.0), (0.5, 1.0), (0.156, 1.0), (0.08, 1.0), (0.3, -1.0)],
    ids=["fresh", "half", "clinical_healing", "below_removal", "wrong_sign"],
)
def test_load_share_is_within_three_hundredths(share: float, sign: float) -> None:
    """The estimated share is the slope as the force shows it, within 0.03 and 4 standard
    errors: a device whose force falls under load gives a negative share, never a small one."""
    force, ref = standing_test(np.random.default_rng(int(share * 1000)), share, sign=sign)
    est = load_share(force, ref)
    assert est.status == "ok"
    assert abs(est.share - sign * share) <= 0.03
    assert abs(est.share - sign * share) <= 4.0 * est.share_std + 1e-3
    assert abs(est.f_offset_n - 120.0) < 2.0
    # What the load does not explain: the force's noise and the share of the scale's noise.
    assert est.resid_sd_n == pytest.approx(math.hypot(0.5, share * 2.0), rel=0.1)
    assert est.version == "dsp.loadshare/2"


def test_samples_outside_the_test_are_ignored() -> None:
    """Only samples between start and end count; the span reports the test's first and last."""
    rng = np.random.default_rng(4)
    force, ref = standing_test(rng, 0.4)
    # Junk before and after the test would ruin the slope if it counted.
    force[:1000] = 900.0
    force[-1000:] = -900.0
    tracker = LoadShareTracker(2)
    t_begin = T0_NS + 1000 * 10**7
    t_end = T0_NS + (force.size - 1000) * 10**7
    tracker.start(1, t_begin)
    for k in range(0, force.size, 250):
        if T0_NS + k * 10**7 >= t_end:
            tracker.end(1, t_end)
        tracker.frame(1, force[k : k + 250], ref[k : k + 250], T0_NS + k * 10**7, RATE_HZ)
    est = tracker.estimate(1)
    assert abs(est.share - 0.4) < 0.03
    assert est.t_start_ns == t_begin
    assert est.t_end_ns == t_end - 10**7
    assert est.n_samples == force.size - 2000
    assert tracker.estimate(0).status == "too_few_samples"


def test_a_flat_reference_load_has_no_share() -> None:
    """A reference load that never varies gives status no_load_variation and a NaN share."""
    est = load_share(np.full(500, 50.0) + np.arange(500) * 1e-3, np.full(500, 700.0))
    assert est.status == "no_load_variation"
    assert math.isnan(est.share)


@pytest.mark.parametrize(
    ("array", "where", "value"),
    [
        (None, None, math.nan),
        ("force", [0], math.nan),
        ("ref", [50, 51], math.inf),
        ("force", list(range(100, 200)), -math.inf),
        ("ref", [-1], math.nan),
    ],
    ids=["none", "nan_force_first", "inf_ref_pair", "neg_inf_force_run", "nan_ref_last"],
)
def test_kernel_matches_reference(array: str | None, where: list[int] | None, value: float) -> None:
    """Slope, standard error, intercept and r^2 equal numpy's polyfit, with non-finite pairs
    skipped wherever they fall."""
    force, ref = standing_test(np.random.default_rng(5), 0.3)
    if array is not None:
        (force if array == "force" else ref)[where] = value
    est = load_share(force, ref)
    expected = ref_loadshare(force, ref)
    assert est.n_samples == expected["n"]
    assert_allclose(est.share, expected["slope"], rtol=1e-9)
    assert_allclose(est.share_std, expected["se"], rtol=1e-6)
    assert_allclose(est.f_offset_n, expected["intercept"], rtol=1e-9)
    assert_allclose(est.r2, expected["r2"], rtol=1e-9)


finite_or_not = st.one_of(st.floats(-1e4, 1e4), st.sampled_from([math.nan, math.inf]))


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(finite_or_not, finite_or_not), max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_streaming_state_equals_batch_on_every_prefix(
    pairs: list[tuple[float, float]], cuts: list[int]
) -> None:
    """After every frame (empty, one-sample or longer, with NaN and inf) the state equals a
    tracker fed the whole prefix as one frame."""
    force = np.array([p[0] for p in pairs], dtype=np.float64)
    ref = np.array([p[1] for p in pairs], dtype=np.float64)
    bounds = sorted({0, force.size, *(min(c, force.size) for c in cuts)})
    stream = LoadShareTracker(1)
    stream.start(0, T0_NS)
    for a, b in itertools.pairwise(bounds):
        stream.frame(0, force[a:b], ref[a:b], T0_NS + a * 10**7, RATE_HZ)
        batch = LoadShareTracker(1)
        batch.start(0, T0_NS)
        batch.frame(0, force[:b], ref[:b], T0_NS, RATE_HZ)
        assert_array_equal(stream.int_state, batch.int_state)
        assert_array_equal(stream.float_state, batch.float_state)
        assert repr(stream.estimate(0)) == repr(batch.estimate(0))
