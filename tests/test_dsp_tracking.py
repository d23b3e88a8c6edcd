"""Continuous stiffness tracking: accuracy on a standard linear solid, kernel against the
reference, streaming against batch, and the excitation gate."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from reference import ref_rls, sample_times_ns

from dsp import _kernels as kern
from dsp.tracking import StiffnessTracker, TrackingConfig, track_stiffness

RATE_HZ = 100.0
T0_NS = 1_700_000_000_000_000_000


def sls_recording(
    rng: np.random.Generator,
    *,
    k_inst: float = 150.0,
    k_eq: float = 40.0,
    tau_s: float = 60.0,
    duration_s: float = 3600.0,
    step_every_s: float = 600.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Force (N, 0.5 N rms noise) and displacement (mm, 1 um noise) of a standard linear solid
    elongated by 0.25 mm over 1 s every step_every_s."""
    dt = 1.0 / RATE_HZ
    n = int(duration_s * RATE_HZ)
    t = np.arange(n) * dt
    x = np.zeros(n)
    for start in np.arange(100.0, duration_s, step_every_s):
        x += 0.25 * np.clip(t - start, 0.0, 1.0)
    dx = np.diff(x, prepend=0.0)
    r = np.zeros(n)
    a = math.exp(-dt / tau_s)
    for i in range(1, n):
        r[i] = a * r[i - 1] + (k_inst - k_eq) * dx[i]
    force = 50.0 + k_eq * x + r
    return force + rng.normal(0.0, 0.5, n), x + rng.normal(0.0, 0.001, n)


def test_tracker_recovers_a_standard_linear_solid() -> None:
    """On a noisy standard linear solid the tracker finds k_inst, k_eq within 5 % and tau
    within 10 %, with a confidence above one half."""
    force, disp = sls_recording(np.random.default_rng(0))
    est = track_stiffness(force, disp, T0_NS, RATE_HZ)
    assert abs(est.k_inst_n_per_mm / 150.0 - 1.0) < 0.05
    assert abs(est.k_eq_n_per_mm / 40.0 - 1.0) < 0.05
    assert abs(est.tau_s / 60.0 - 1.0) < 0.10
    assert abs(est.k_eq_n_per_mm - 40.0) < 4.0 * est.k_eq_std_n_per_mm + 1.0
    assert est.confidence > 0.5
    assert est.version == "dsp.tracking/1"


def test_tracker_follows_a_stiffening_regenerate() -> None:
    """When k_eq doubles, the estimate moves to the new value within the forgetting memory."""
    rng = np.random.default_rng(1)
    f1, x1 = sls_recording(rng, k_eq=40.0, duration_s=3600.0, step_every_s=300.0)
    f2, x2 = sls_recording(rng, k_eq=80.0, duration_s=3600.0, step_every_s=300.0)
    tracker = StiffnessTracker(1)
    first = tracker.frame(0, f1, x1, T0_NS, RATE_HZ)
    # The second segment continues from the first's displacement and force.
    x2 = x2 + x1[-1]
    f2 = f2 - f2[0] + f1[-1]
    second = tracker.frame(0, f2, x2, T0_NS + int(3600 * 1e9), RATE_HZ)
    assert abs(first.k_eq_n_per_mm / 40.0 - 1.0) < 0.1
    assert abs(second.k_eq_n_per_mm / 80.0 - 1.0) < 0.15


def test_without_excitation_nothing_is_learned() -> None:
    """With the distractor still, no block updates the estimate and confidence is zero."""
    rng = np.random.default_rng(2)
    n = 60_000
    est = track_stiffness(
        50.0 + rng.normal(0, 0.5, n), 10.0 + rng.normal(0, 0.001, n), T0_NS, RATE_HZ
    )
    assert est.n_updates == 0
    assert est.n_blocks == 1199
    assert est.confidence == 0.0
    assert math.isnan(est.k_eq_n_per_mm)


def test_state_is_small() -> None:
    """The tracker's per-device state is well under 4 KiB."""
    tracker = StiffnessTracker(5)
    assert (tracker.float_state.nbytes + tracker.int_state.nbytes) / 5 <= 4096


def test_mismatched_frames_are_rejected() -> None:
    """Force and displacement of different lengths are rejected."""
    with pytest.raises(ValueError, match="samples"):
        track_stiffness([1.0, 2.0], [1.0], T0_NS, RATE_HZ)


CFG = TrackingConfig(block_s=0.05, excite_mm=0.01, hold_s=1.0)


@pytest.mark.parametrize(
    ("array", "where", "value"),
    [
        (None, None, math.nan),
        ("force", [10], math.nan),
        ("disp", [205, 206, 207], math.nan),
        ("force", list(range(300, 340)), math.inf),
        ("disp", [999], -math.inf),
    ],
    ids=["none", "nan_force", "nan_disp_run", "inf_force_gap", "neg_inf_disp_last"],
)
def test_kernel_matches_reference(array: str | None, where: list[int] | None, value: float) -> None:
    """Theta, covariance and update count equal the plain-numpy RLS, with non-finite samples
    skipped wherever they fall."""
    rng = np.random.default_rng(3)
    force, disp = sls_recording(rng, duration_s=10.0, step_every_s=2.0, tau_s=0.5)
    force, disp = force[:1000], disp[:1000]
    if array is not None:
        (force if array == "force" else disp)[where] = value
    tracker = StiffnessTracker(1, CFG)
    tracker.frame(0, force, disp, T0_NS, RATE_HZ)
    ref = ref_rls(
        force, disp, sample_times_ns(T0_NS, RATE_HZ, 1000), 50_000_000, 0.999, 0.01, 10**9, 1e6
    )
    rf = tracker.float_state[0]
    assert tracker.int_state[0, kern.RI_N_UPDATES] == ref["updates"]
    assert_allclose(rf[kern.RF_THETA : kern.RF_THETA + 4], ref["theta"], rtol=1e-6, atol=1e-6)
    assert_allclose(rf[kern.RF_P : kern.RF_P + 16].reshape(4, 4), ref["p"], rtol=1e-5, atol=1e-3)


finite_or_not = st.one_of(st.floats(-100.0, 100.0), st.sampled_from([math.nan, math.inf]))


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(finite_or_not, st.floats(0.0, 1.0)), max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_streaming_state_equals_batch_on_every_prefix(
    pairs: list[tuple[float, float]], cuts: list[int]
) -> None:
    """After every frame (empty, one-sample or longer, with NaN and inf) the tracker state
    equals a tracker fed the whole prefix as one frame."""
    force = np.array([p[0] for p in pairs], dtype=np.float64)
    disp = np.array([p[1] for p in pairs], dtype=np.float64)
    bounds = sorted({0, force.size, *(min(c, force.size) for c in cuts)})
    stream = StiffnessTracker(1, CFG)
    for a, b in itertools.pairwise(bounds):
        stream.frame(0, force[a:b], disp[a:b], T0_NS + a * 10**7, RATE_HZ)
        batch = StiffnessTracker(1, CFG)
        batch.frame(0, force[:b], disp[:b], T0_NS, RATE_HZ)
        assert_array_equal(stream.int_state, batch.int_state)
        assert_array_equal(stream.float_state, batch.float_state)
