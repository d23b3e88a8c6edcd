"""The independent physics generator (tests/physics.py) against its own formulas."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from physics import (
    NS_PER_S,
    RAMP_BUCKETS,
    RATES_HZ,
    LoadCase,
    StepCase,
    Tissue,
    bachmeier_tissue,
    family,
    frames,
    load_family,
    ramp_bucket,
    ramp_disp_mm,
    ramp_force_n,
    superposed_force_n,
)

TISSUE = Tissue(k_inst_n_per_mm=80.0, a_inf=0.15, a_f=0.5, tau_f_s=0.8, tau_s_s=120.0)
ONSET_NS = 1_700_000_000 * NS_PER_S + 123_456_789


def _step(**kw: object) -> StepCase:
    base: dict[str, object] = {
        "tissue": TISSUE,
        "delta_mm": 0.5,
        "delta_announced_mm": 0.5,
        "ramp_s": 2.0,
        "onset_ns": ONSET_NS,
        "stamp_ns": ONSET_NS,
        "rate_hz": 50.0,
        "t0_ns": ONSET_NS - 8 * NS_PER_S - 7_777,
        "force_noise_n": 0.0,
        "disp_noise_mm": 0.0,
    }
    base.update(kw)
    return StepCase(**base)  # type: ignore[arg-type]


def test_generator_imports_only_numpy() -> None:
    """tests/physics.py imports the standard library and numpy, nothing of osteotel."""
    tree = ast.parse((Path(__file__).parent / "physics.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in names}
    assert roots <= {"itertools", "math", "collections", "dataclasses", "typing", "numpy"}


@pytest.mark.parametrize("ramp_s", [0.3, 2.0, 7.0, 45.0, 150.0], ids=lambda r: f"ramp{r:g}s")
def test_closed_form_equals_numerical_superposition(ramp_s: float) -> None:
    """The ramp's closed form equals Boltzmann superposition of 20,000 sudden sub-steps."""
    t = np.concatenate(
        [[-1.0, 0.0], np.linspace(0.01, ramp_s, 7), ramp_s + np.array([0.1, 1, 5, 60, 590])]
    )
    closed = ramp_force_n(t, TISSUE, 0.4, ramp_s)
    brute = superposed_force_n(t, TISSUE, 0.4, ramp_s, n_sub=20_000)
    # A sub-step of 0.4/20000 mm is worth at most k * that: the sum's one-slice resolution.
    assert_allclose(closed, brute, rtol=0.0, atol=2.0 * TISSUE.k_inst_n_per_mm * 0.4 / 20_000)
    assert closed[0] == 0.0


def test_short_ramp_tends_to_the_sudden_step() -> None:
    """As the ramp shortens, its force after the ramp tends to k delta G(t)/G(0)."""
    t = np.array([0.5, 2.0, 30.0, 300.0])
    sudden = ramp_force_n(t, TISSUE, 0.25, 0.0)
    assert_allclose(sudden, 0.25 * TISSUE.relaxation(t), rtol=1e-12)
    for ramp_s, rtol in ((1e-2, 1e-2), (1e-4, 1e-4)):
        assert_allclose(ramp_force_n(t, TISSUE, 0.25, ramp_s), sudden, rtol=rtol)
    assert ramp_force_n(np.array([0.0]), TISSUE, 0.25, 0.0)[0] == pytest.approx(80.0 * 0.25)


def test_ramp_peak_is_below_the_sudden_step_and_settles_to_k_eq() -> None:
    """A ramped step peaks below k_inst delta (relaxing as it moves) and settles to k_eq delta."""
    t = np.linspace(0.0, 5000.0, 200_001)
    for ramp_s in (0.5, 2.0, 20.0):
        force = ramp_force_n(t, TISSUE, 1.0, ramp_s)
        assert force.max() < TISSUE.k_inst_n_per_mm
        assert force[-1] == pytest.approx(TISSUE.k_eq_n_per_mm, rel=1e-6)
        # The peak comes at the ramp's end: the force only rises during the ramp.
        assert abs(t[np.argmax(force)] - ramp_s) <= 0.05


def test_prony_amplitudes_sum_to_one() -> None:
    """The three shares sum to 1, so G(0) = k_inst and G(inf) = k_inst a_inf."""
    assert TISSUE.a_inf + TISSUE.a_f + TISSUE.a_s == pytest.approx(1.0)
    assert float(TISSUE.relaxation(0.0)) == pytest.approx(TISSUE.k_inst_n_per_mm)
    assert float(TISSUE.relaxation(1e6)) == pytest.approx(TISSUE.k_eq_n_per_mm)
    for case in family(3, 60):
        t = case.tissue
        assert t.a_inf + t.a_f + t.a_s == pytest.approx(1.0)
        assert min(t.a_inf, t.a_f, t.a_s) > 0.0


def test_bachmeier_fit_at_steps_one_ten_thirty() -> None:
    """The published fit gives tau_s ~68, 134, 283 s at steps 1, 10, 30."""
    taus = [bachmeier_tissue(i, 50.0).tau_s_s for i in (1, 10, 30)]
    assert taus == pytest.approx([67.62, 134.4, 282.8], abs=0.1)
    assert bachmeier_tissue(1, 50.0).a_f == pytest.approx(0.694)


def test_disp_ramps_linearly_and_a_sudden_step_takes_one_sample() -> None:
    """The displacement rises linearly over the ramp; a sudden step jumps between two samples."""
    assert_allclose(ramp_disp_mm(np.array([-1.0, 0.0, 1.0, 2.0, 9.0]), 0.5, 2.0),
                    [0.0, 0.0, 0.25, 0.5, 0.5])  # fmt: skip
    t, _, disp = _step(ramp_s=0.0).samples()
    jumps = np.flatnonzero(np.diff(disp) > 0)
    assert jumps.size == 1
    assert t[jumps[0]] < ONSET_NS <= t[jumps[0] + 1]


def test_samples_sit_on_t0_grid_and_noise_has_its_sd() -> None:
    """Samples are t0 + k/rate on any ns grid; noise has the requested sd on both channels."""
    case = _step(force_noise_n=0.5, disp_noise_mm=0.003, rate_hz=25.0)
    t, force, disp = case.samples()
    assert t[0] == case.t0_ns
    assert set(np.diff(t).tolist()) == {40_000_000}
    clean_f, clean_d = case.clean(t)
    assert np.std(force - clean_f) == pytest.approx(0.5, rel=0.05)
    assert np.std(disp - clean_d) == pytest.approx(0.003, rel=0.05)
    assert (t[-1] - ONSET_NS) / NS_PER_S == pytest.approx(case.post_s, abs=0.04)


def test_gap_removes_samples_and_frames_do_not_span_it() -> None:
    """A data gap removes its samples, and no frame spans it."""
    case = _step(gap_start_s=100.0, gap_s=12.5)
    t, _, _ = case.samples()
    dt = np.diff(t)
    assert (dt > 20_000_000).sum() == 1
    assert dt.max() / NS_PER_S == pytest.approx(12.5, abs=0.03)
    for a, b in frames(t, case.rate_hz):
        assert t[b - 1] - t[a] == (b - a - 1) * 20_000_000
        assert b - a <= 50


def test_previous_step_adds_its_relaxation() -> None:
    """A previous step still relaxing adds its decaying force; truth's f_before includes it."""
    case = _step(prev_age_s=90.0, prev_delta_mm=0.3)
    alone = _step()
    t = case.sample_times_ns()
    extra = case.clean(t)[0] - alone.clean(t)[0]
    tau_prev = (t - ONSET_NS) / NS_PER_S + 90.0
    assert_allclose(extra, ramp_force_n(tau_prev, TISSUE, 0.3, 2.0), rtol=1e-12)
    assert np.all(np.diff(extra) <= 1e-12)  # decaying over this step's window
    at_onset = float(ramp_force_n(np.array([90.0]), TISSUE, 0.3, 2.0)[0])
    assert case.truth()["f_before_n"] == pytest.approx(100.0 + at_onset, rel=1e-9)


def test_stamp_and_announced_delta_errors_within_bounds() -> None:
    """The family's event stamps are within +/- 0.5 s and announced deltas within the error."""
    cases = family(5, 120, announce_err=0.2)
    offsets = [(c.stamp_ns - c.onset_ns) / NS_PER_S for c in cases]
    assert max(map(abs, offsets)) <= 0.5
    assert max(offsets) > 0.3
    assert min(offsets) < -0.3
    ratios = [c.delta_announced_mm / c.delta_mm for c in cases]
    assert 0.8 <= min(ratios) < 0.95
    assert 1.05 < max(ratios) <= 1.2


def test_family_spans_the_ranges_of_real_devices() -> None:
    """Every rate and ramp bucket occurs, and every parameter lies in its stated range."""
    cases = family(7, 300)
    assert {c.rate_hz for c in cases} == set(RATES_HZ)
    assert {ramp_bucket(c.ramp_s) for c in cases} == {name for name, _, _ in RAMP_BUCKETS}
    ramps = [c.ramp_s for c in cases]
    assert min(ramps) == 0.0
    assert max(ramps) > 100.0
    assert min(r for r in ramps if r > 0) < 0.2
    for c in cases:
        t = c.tissue
        assert 0.3 <= t.tau_f_s <= 5.0
        assert 60.0 <= t.tau_s_s <= 300.0
        assert t.tau_s_s >= 10.0 * t.tau_f_s
        assert 0.05 <= t.a_f <= 0.75
        assert 0.02 <= t.a_inf <= 0.3
        assert 15.0 <= t.k_inst_n_per_mm <= 400.0
        assert 0.1 <= c.delta_mm <= 1.0
        assert 0.05 <= c.force_noise_n <= 1.0
        truth = c.truth()
        assert truth["k_eq_n_per_mm"] == pytest.approx(t.k_inst_n_per_mm * t.a_inf)


def test_family_is_reproducible_from_its_seed() -> None:
    """The same seed draws the same cases and the same samples."""
    a, b = family(11, 5), family(11, 5)
    assert a == b
    assert_allclose(a[2].samples()[1], b[2].samples()[1])
    assert family(12, 5) != a


def _load(**kw: object) -> LoadCase:
    base: dict[str, object] = {
        "share": 0.35,
        "load_n": 500.0,
        "rate_hz": 50.0,
        "t0_ns": ONSET_NS,
        "force_noise_n": 0.0,
        "disp_noise_mm": 0.0,
        "ref_noise_n": 0.0,
    }
    base.update(kw)
    return LoadCase(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("polarity", "variant", "sign"),
    [(1.0, "correct", 1.0), (-1.0, "correct", -1.0), (1.0, "load_relieves", -1.0)],
    ids=["correct", "polarity_minus", "load_relieves"],
)
def test_load_test_slope_is_the_share_with_the_variant_sign(
    polarity: float, variant: str, sign: float
) -> None:
    """Noise-free, d(force)/d(load) is +share for the contract, -share for either variant."""
    case = _load(polarity=polarity, variant=variant)
    _, force, disp, ref = case.samples()
    slope = np.polyfit(ref, force, 1)[0]
    assert slope == pytest.approx(sign * 0.35, rel=1e-9)
    assert case.measured_sign == sign
    # The device shortens under load by share * load / k_device whatever the force channel says.
    k_device = -np.polyfit(disp, ref * 0.35, 1)[0]
    assert k_device == pytest.approx(case.k_device_n_per_mm, rel=1e-9)


def test_load_trapezoid_ramps_holds_and_returns() -> None:
    """The load rests at 0, ramps over 5 s to its plateau, holds 20 s and returns to 0."""
    case = _load()
    t, _, _, ref = case.samples()
    s = (t - case.t0_ns) / NS_PER_S
    assert_allclose(ref[s < 3.0], 0.0)
    assert_allclose(ref[(s >= 8.0) & (s <= 28.0)], 500.0)
    assert_allclose(ref[s >= 33.0], 0.0)
    assert float(np.interp(5.5, s, ref)) == pytest.approx(250.0)
    assert case.end_ns > t[-1]


def test_load_family_mixes_variants_over_the_ranges() -> None:
    """Half the load tests are correct devices, the rest split between the two wrong signs."""
    cases = load_family(4, 40)
    kinds = [(c.polarity, c.variant) for c in cases]
    assert kinds.count((1.0, "correct")) == 20
    assert kinds.count((-1.0, "correct")) == 10
    assert kinds.count((1.0, "load_relieves")) == 10
    assert all(0.02 <= c.share <= 1.0 and 300.0 <= c.load_n <= 700.0 for c in cases)
    assert not math.isclose(min(c.share for c in cases), max(c.share for c in cases))
