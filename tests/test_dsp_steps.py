"""Step response: accuracy on synthetic Prony steps, kernel against reference, streaming
against batch, and the ways a window closes."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from reference import (
    prony_curve,
    prony_ramp_curve,
    ref_pre_count,
    ref_pre_mean,
    ref_prony_peak_var,
    ref_prony_rss,
    ref_step_bins,
    ref_step_fit,
    sample_times_ns,
)

from dsp import _kernels as kern
from dsp.steps import StepConfig, StepEstimate, StepTracker, step_response

RATE_HZ = 100.0
T0_NS = 1_700_000_000_000_000_000
PRE_S = 30.0
NOISE_N = 0.5


def bachmeier(i: int) -> tuple[float, float, float, float, float]:
    """(a_inf, a_f, a_s, tau_f_s, tau_s_s) of step i (Bachmeier 2022, DOMAIN.md)."""
    a_f = 0.71 - 0.016 * i
    a_inf = 0.058 * math.log(i) + 0.0034
    return a_inf, a_f, 1.0 - a_f - a_inf, 0.97, 7.42 * i + 60.2


def synth_step(
    rng: np.random.Generator,
    i: int,
    *,
    k_inst: float = 150.0,
    delta_mm: float = 0.25,
    f_pre_n: float = 80.0,
    after_s: float = 610.0,
    noise_n: float = NOISE_N,
) -> tuple[np.ndarray, int]:
    """Force (N) with a step at T0_NS + 30 s, and the step time (ns)."""
    a_inf, a_f, a_s, tau_f, tau_s = bachmeier(i)
    n = int((PRE_S + after_s) * RATE_HZ)
    t_s = np.arange(n) / RATE_HZ - PRE_S
    rel = prony_curve(np.clip(t_s, 0.0, None), a_inf, a_f, a_s, tau_f, tau_s)
    force = f_pre_n + np.where(t_s >= 0.0, k_inst * delta_mm * rel, 0.0)
    return force + rng.normal(0.0, noise_n, n), T0_NS + int(PRE_S * 1e9)


def truth(i: int, k_inst: float = 150.0) -> dict[str, float]:
    """True k_inst, k_eq, tau_slow of a synthetic step."""
    a_inf, _, _, _, tau_s = bachmeier(i)
    return {"k_inst": k_inst, "k_eq": k_inst * a_inf, "tau_slow": tau_s}


def rel_errors(est: StepEstimate, true: dict[str, float]) -> tuple[float, float, float]:
    return (
        abs(est.k_inst_n_per_mm / true["k_inst"] - 1.0),
        abs(est.k_eq_n_per_mm / true["k_eq"] - 1.0),
        abs(est.tau_slow_s / true["tau_slow"] - 1.0),
    )


STEP_NUMBERS = [2, 5, 8, 12, 16, 20, 25, 30]


@pytest.mark.parametrize("spikes", [False, True], ids=["clean", "spiky"])
def test_accuracy_goals_met_on_noisy_prony_steps(spikes: bool) -> None:
    """At 0.5 N rms noise and 100 Hz the median errors are within 5 % k_inst, 10 % k_eq and
    20 % tau_slow, with or without spikes."""
    rng = np.random.default_rng(7)
    errors = []
    for i in STEP_NUMBERS:
        k_inst = float(rng.uniform(80.0, 300.0))
        force, t_step = synth_step(rng, i, k_inst=k_inst, f_pre_n=float(rng.uniform(20, 200)))
        if spikes:
            where = rng.choice(force.size, size=force.size // 500, replace=False)
            force[where] += rng.choice([-40.0, 40.0], size=where.size)
        est = step_response(force, T0_NS, RATE_HZ, t_step, 0.25)
        assert est.closed_by == "window"
        errors.append(rel_errors(est, truth(i, k_inst)))
    median = np.median(np.array(errors), axis=0)
    assert median[0] <= 0.05
    assert median[1] <= 0.10
    assert median[2] <= 0.20


def test_residual_force_is_the_force_before_the_step() -> None:
    """f_residual_n is the force held before the step, within noise."""
    force, t_step = synth_step(np.random.default_rng(1), 10, f_pre_n=123.0)
    est = step_response(force, T0_NS, RATE_HZ, t_step, 0.25)
    assert abs(est.f_residual_n - 123.0) < 0.2
    assert est.fit_status == "ok"
    assert est.fit_rmse_n < 0.5
    assert est.fit_r2 > 0.99


def test_a_ramped_step_gives_the_observed_peak() -> None:
    """A step driven as a 2 s ramp gives k_inst from the force peak at the ramp's end."""
    rng = np.random.default_rng(3)
    force, t_step = synth_step(rng, 10, noise_n=0.0)
    # Replace the first 2 s after the step by a linear rise to the peak reached at 2 s.
    k0 = int(PRE_S * RATE_HZ)
    k1 = k0 + int(2 * RATE_HZ)
    peak = force[k1]
    force[k0:k1] = np.linspace(force[k0 - 1], peak, k1 - k0, endpoint=False)
    force += rng.normal(0.0, NOISE_N, force.size)
    est = step_response(force, T0_NS, RATE_HZ, t_step, 0.25)
    assert abs(est.f_peak_n - peak) / (peak - 80.0) < 0.05


def test_a_step_cut_short_by_the_next_one_is_estimated_from_what_was_seen() -> None:
    """The next step closes the window as next_step; k_inst is still within 5 %."""
    rng = np.random.default_rng(5)
    force, t_step = synth_step(rng, 10, after_s=200.0)
    tracker = StepTracker(1)
    tracker.event(0, t_step, 0.25)
    tracker.event(0, t_step + 150 * 10**9, 0.25)
    found = tracker.frame(0, force, T0_NS, RATE_HZ)
    assert [e.closed_by for e in found] == ["next_step"]
    assert abs(found[0].k_inst_n_per_mm / 150.0 - 1.0) < 0.05
    assert found[0].t_end_ns < t_step + 150 * 10**9
    assert tracker.int_state[0, kern.SI_MODE] == kern.MODE_OPEN


def test_a_long_gap_closes_the_window() -> None:
    """A gap longer than max_gap_s closes the window as gap, ending at the last sample."""
    rng = np.random.default_rng(6)
    force, t_step = synth_step(rng, 10, after_s=300.0)
    tracker = StepTracker(1, StepConfig(max_gap_s=30.0))
    tracker.event(0, t_step, 0.25)
    cut = int((PRE_S + 120.0) * RATE_HZ)
    assert tracker.frame(0, force[:cut], T0_NS, RATE_HZ) == []
    t_resume = T0_NS + int((cut / RATE_HZ + 60.0) * 1e9)
    found = tracker.frame(0, force[cut:], t_resume, RATE_HZ)
    assert [e.closed_by for e in found] == ["gap"]
    assert found[0].t_end_ns == T0_NS + round((cut - 1) * 1e9 / RATE_HZ)
    assert abs(found[0].k_inst_n_per_mm / 150.0 - 1.0) < 0.05


def test_too_few_samples_give_no_fit() -> None:
    """A window with only a fraction of a second of samples reports no_data and NaN fit fields."""
    force, t_step = synth_step(np.random.default_rng(2), 10, after_s=0.1)
    est = step_response(force, T0_NS, RATE_HZ, t_step, 0.25)
    assert est.fit_status == "no_data"
    assert est.closed_by == "flush"
    assert math.isnan(est.tau_slow_s)
    assert math.isnan(est.k_eq_n_per_mm)


def test_a_step_after_the_recording_is_rejected() -> None:
    """The batch form rejects a step time after the last sample."""
    force = np.zeros(100)
    with pytest.raises(ValueError, match="after the last sample"):
        step_response(force, T0_NS, RATE_HZ, T0_NS + 10**10, 0.25)


def test_estimate_carries_provenance() -> None:
    """An estimate names the estimator version and the time span of its input."""
    force, t_step = synth_step(np.random.default_rng(4), 3)
    est = step_response(force, T0_NS, RATE_HZ, t_step, 0.25)
    assert est.version == "dsp.steps/1"
    assert est.t_start_ns == t_step - 2 * 10**9
    assert est.t_end_ns == t_step + 600 * 10**9 - round(1e9 / RATE_HZ)
    assert est.n_samples == 600 * int(RATE_HZ)


def test_state_fits_in_four_kib_per_device() -> None:
    """The per-device state of the step tracker, with a window slot of its own, is at most
    4 KiB."""
    tracker = StepTracker(3)
    per_device = (tracker.float_state.nbytes + tracker.int_state.nbytes) / 3
    assert per_device + tracker.bins[0].nbytes <= 4096


@pytest.mark.parametrize("n_devices", [1, 5, 9], ids=["one", "five", "nine"])
def test_window_slots_are_shared_and_returned(n_devices: int) -> None:
    """Devices with windows open at once each get their own slot, give the same estimates as
    a tracker per device, and the pool shrinks back once the windows close."""
    rng = np.random.default_rng(11)
    signals = [synth_step(rng, d + 1) for d in range(n_devices)]
    fleet = StepTracker(n_devices)
    for d, (_, t_step) in enumerate(signals):
        fleet.event(d, t_step, 0.25)
    half = signals[0][0].size // 2
    for d, (force, _) in enumerate(signals):
        assert fleet.frame(d, force[:half], T0_NS, RATE_HZ) == []
    slots = {int(fleet.int_state[d, kern.SI_SLOT]) for d in range(n_devices)}
    assert len(slots) == n_devices
    assert fleet.bins.shape[0] >= n_devices
    for d, (force, t_step) in enumerate(signals):
        t_half = T0_NS + round(half * 1e9 / RATE_HZ)
        found = fleet.frame(d, force[half:], t_half, RATE_HZ)
        found += [e for e in [fleet.flush(d)] if e is not None]
        assert found == [step_response(force, T0_NS, RATE_HZ, t_step, 0.25)]
    assert fleet.bins.shape[0] == 1
    assert all(fleet.window_bins(d) is None for d in range(n_devices))


@pytest.mark.parametrize(
    "kwargs",
    [{"pre_s": 5.0}, {"n_bins": 65}, {"first_bin_s": 20.0}, {"tau_slow_grid_s": (10.0, 5.0, 8)}],
    ids=["pre_too_long", "too_many_bins", "bins_beyond_window", "empty_tau_grid"],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object]) -> None:
    """Settings the state cannot hold or the fit cannot use are rejected."""
    with pytest.raises(ValueError, match="must"):
        StepConfig(**kwargs)  # type: ignore[arg-type]


def _reference_estimate(force: np.ndarray, t_step: int, cfg: StepConfig) -> dict[str, float]:
    t_ns = sample_times_ns(T0_NS, RATE_HZ, force.size)
    c_s, h = cfg.bin_shape
    bins = ref_step_bins(force, t_ns, t_step, c_s, h, cfg.n_bins, cfg.window_s)
    lf, ls = cfg.log_tau_grids()
    fit = ref_step_fit(bins, c_s, h, cfg.peak_search_s, lf, ls, cfg.min_tau_ratio, 1)
    fit["f_before"] = ref_pre_mean(force, t_ns, t_step, 250_000_000, 8)
    fit["n_before"] = ref_pre_count(force, t_ns, t_step, 250_000_000, 8)
    return fit


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (None, math.nan),
        ("before", math.nan),
        ("peak", math.nan),
        ("late", math.inf),
        ("run", -math.inf),
    ],
    ids=["none", "nan_before_step", "nan_at_peak", "inf_late", "neg_inf_run"],
)
def test_kernels_match_the_reference(where: str | None, value: float) -> None:
    """Bins, pre-step force and Prony fit of the kernels equal the numpy reference, with
    non-finite samples skipped wherever they fall."""
    force, t_step = synth_step(np.random.default_rng(11), 6, after_s=200.0)
    k_step = int(PRE_S * RATE_HZ)
    spots = {
        "before": [k_step - 3],
        "peak": [k_step, k_step + 1],
        "late": [k_step + 15_000],
        "run": list(range(k_step + 400, k_step + 460)),
    }
    if where is not None:
        force[spots[where]] = value
    cfg = StepConfig(refine_rounds=1)
    est = step_response(force, T0_NS, RATE_HZ, t_step, 0.25, config=cfg)
    ref = _reference_estimate(force, t_step, cfg)
    assert_allclose(est.f_residual_n, ref["f_before"], rtol=1e-12)
    assert_allclose(est.tau_fast_s, ref["tau_f"], rtol=1e-9)
    assert_allclose(est.tau_slow_s, ref["tau_s"], rtol=1e-9)
    assert_allclose(est.f_settled_n, ref["a_inf"], rtol=1e-7)
    assert_allclose(est.f_peak_n, ref["f_peak"], rtol=1e-7)
    assert_allclose(est.fit_rmse_n, ref["rmse"], rtol=1e-5)
    assert_allclose(est.fit_r2, ref["r2"], rtol=1e-7)
    k_std = math.sqrt(ref["peak_var"] + ref["noise_var"] / ref["n_before"]) / 0.25
    assert_allclose(est.k_inst_std_n_per_mm, k_std, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    t_s=st.lists(st.floats(0.0, 900.0), min_size=6, max_size=40, unique=True),
    log_tau_f=st.floats(math.log(0.05), math.log(20.0)),
    log_ratio=st.floats(math.log(3.0), math.log(1000.0)),
    c=st.tuples(st.floats(0.5, 5.0), st.floats(0.5, 5.0)),
    weight_seed=st.integers(0, 2**32 - 1),
)
def test_peak_variance_kernel_matches_reference(
    t_s: list[float],
    log_tau_f: float,
    log_ratio: float,
    c: tuple[float, float],
    weight_seed: int,
) -> None:
    """The peak's variance from the kernel equals numpy's weighted least-squares covariance."""
    t = np.sort(np.array(t_s))
    tau_f, tau_s = math.exp(log_tau_f), math.exp(log_tau_f + log_ratio)
    w = np.random.default_rng(weight_seed).uniform(1.0, 50.0, t.size)
    design = np.column_stack([np.ones_like(t), np.exp(-t / tau_f), np.exp(-t / tau_s)])
    # Columns that are numerically dependent make both inverses arbitrary: not a comparison.
    if np.linalg.cond(design * np.sqrt(w)[:, None]) > 1e5:
        return
    var = kern._prony_peak_var(t, w, tau_f, tau_s, c[0], c[1], 0.25)
    ref = ref_prony_peak_var(t, w, tau_f, tau_s, np.array([1.0, *c]), 0.25)
    assert_allclose(var, ref, rtol=1e-6)


def ramped_probe(
    rng: np.random.Generator, k_inst: float, *, rate_hz: float = 10.0, ramp_s: float = 2.0
) -> tuple[np.ndarray, int]:
    """Force (N) of a 0.02 mm probe ramped over ramp_s at T0_NS + 30 s on the step-40 Prony
    coefficients (the emulator's probe, docs/emulator.md), 0.5 N noise; and the probe's time."""
    a_inf, a_f, a_s, tau_f, tau_s = bachmeier(40)
    t_s = np.arange(int((PRE_S + 600.0) * rate_hz)) / rate_hz - PRE_S
    shape = prony_ramp_curve(t_s, ramp_s, a_inf, a_f, a_s, tau_f, tau_s)
    force = 80.0 + k_inst * 0.02 * shape
    return force + rng.normal(0.0, NOISE_N, t_s.size), T0_NS + int(PRE_S * 1e9)


def test_k_inst_standard_error_matches_the_scatter_of_ramped_probes() -> None:
    """Over 40 noisy 10 Hz probes, (k_inst - truth) / k_inst_std has a spread of about 1."""
    cfg = StepConfig(ramp_s=2.0)
    z = []
    for seed in range(40):
        force, t_step = ramped_probe(np.random.default_rng(seed), 150.0)
        est = step_response(force, T0_NS, 10.0, t_step, 0.02, config=cfg)
        z.append((est.k_inst_n_per_mm - 150.0) / est.k_inst_std_n_per_mm)
    assert 0.7 < float(np.std(z)) < 1.4
    assert abs(float(np.mean(z))) < 0.5


@settings(max_examples=60, deadline=None)
@given(
    t_s=st.lists(st.floats(0.0, 900.0), min_size=4, max_size=40, unique=True),
    amps=st.tuples(st.floats(-200, 200), st.floats(-200, 200), st.floats(-200, 200)),
    log_tau_f=st.floats(math.log(0.05), math.log(20.0)),
    log_ratio=st.floats(math.log(3.0), math.log(1000.0)),
    noise_seed=st.integers(0, 2**32 - 1),
)
def test_prony_rss_kernel_matches_reference(
    t_s: list[float],
    amps: tuple[float, float, float],
    log_tau_f: float,
    log_ratio: float,
    noise_seed: int,
) -> None:
    """The variable-projection residual of the kernel equals numpy's least squares."""
    t = np.sort(np.array(t_s))
    tau_f, tau_s = math.exp(log_tau_f), math.exp(log_tau_f + log_ratio)
    rng = np.random.default_rng(noise_seed)
    y = prony_curve(t, *amps, tau_f, tau_s) + rng.normal(0, 1.0, t.size)
    w = rng.uniform(1.0, 50.0, t.size)
    design = np.column_stack([np.ones_like(t), np.exp(-t / tau_f), np.exp(-t / tau_s)])
    # Columns that are numerically dependent make both solvers arbitrary: not a comparison.
    if np.linalg.cond(design * np.sqrt(w)[:, None]) > 1e5:
        return
    coef = np.zeros(3)
    rss = kern._prony_rss(t, y, w, tau_f, tau_s, coef)
    ref_rss, ref_coef = ref_prony_rss(t, y, w, tau_f, tau_s)
    assert_allclose(coef, ref_coef, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(ref_coef).max()))
    assert_allclose(rss, ref_rss, rtol=1e-6, atol=1e-9 * float(np.sum(w * y**2)))


finite_or_not = st.one_of(
    st.floats(-500.0, 500.0), st.sampled_from([math.nan, math.inf, -math.inf])
)


@settings(max_examples=60, deadline=None)
@given(
    force=st.lists(finite_or_not, min_size=0, max_size=400),
    step_at=st.integers(0, 400),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_streaming_state_equals_batch_on_every_prefix(
    force: list[float], step_at: int, cuts: list[int]
) -> None:
    """After every frame (empty, one-sample or longer, with NaN and inf) the tracker state
    equals a tracker fed the whole prefix as one frame, and its bins equal the reference."""
    x = np.array(force, dtype=np.float64)
    bounds = sorted({0, x.size, *(min(c, x.size) for c in cuts)})
    cfg = StepConfig(window_s=2.0, first_bin_s=0.01, n_bins=16, pre_s=0.5)
    t_step = T0_NS + step_at * 10**7
    stream = StepTracker(1, cfg)
    stream.event(0, t_step, 0.25)
    for a, b in itertools.pairwise(bounds):
        stream.frame(0, x[a:b], T0_NS + a * 10**7, RATE_HZ)
        batch = StepTracker(1, cfg)
        batch.event(0, t_step, 0.25)
        batch.frame(0, x[:b], T0_NS, RATE_HZ)
        assert_array_equal(stream.int_state, batch.int_state)
        assert_array_equal(stream.float_state, batch.float_state)
        assert_array_equal(stream.bins, batch.bins)
    # The bins of a window still open (or just completed) equal the reference.
    if stream.int_state[0, kern.SI_MODE] == kern.MODE_OPEN and x.size:
        t_ns = sample_times_ns(T0_NS, RATE_HZ, x.size)
        c_s, h = cfg.bin_shape
        ref = ref_step_bins(x, t_ns, t_step, c_s, h, cfg.n_bins, cfg.window_s)
        raw = stream.window_bins(0)
        assert raw is not None
        full = raw[raw[:, 2] > 0]
        trimmed = np.where(full[:, 2] >= 4, full[:, 0] - full[:, 3] - full[:, 4], full[:, 0])
        counts = np.where(full[:, 2] >= 4, full[:, 2] - 2, full[:, 2])
        assert_allclose(trimmed / counts, ref["mean_n"], rtol=1e-12, atol=1e-9)
        assert_allclose(counts, ref["weight"])
        assert_allclose(full[:, 1] / full[:, 2], ref["time_s"], rtol=1e-12)
        pre = ref_pre_mean(x, t_ns, t_step, 250_000_000, 2)
        assert_allclose(stream.float_state[0, kern.SF_F_BEFORE], pre, rtol=1e-12, equal_nan=True)


def test_streamed_frames_give_the_batch_estimate() -> None:
    """A step fed in 1 s frames gives exactly the estimate of the batch form."""
    force, t_step = synth_step(np.random.default_rng(8), 15)
    batch = step_response(force, T0_NS, RATE_HZ, t_step, 0.25)
    tracker = StepTracker(2)
    tracker.event(1, t_step, 0.25)
    found: list[StepEstimate] = []
    per = int(RATE_HZ)
    for k in range(0, force.size, per):
        found += tracker.frame(1, force[k : k + per], T0_NS + k * 10**7, RATE_HZ)
    assert found == [batch]
    assert tracker.int_state[0, kern.SI_T_LAST] == -1


def test_an_event_announced_after_its_samples_opens_late() -> None:
    """An event older than processed samples still opens a window, at the next sample."""
    force, t_step = synth_step(np.random.default_rng(9), 10, after_s=100.0)
    tracker = StepTracker(1)
    k_step = int(PRE_S * RATE_HZ)
    tracker.frame(0, force[: k_step + 50], T0_NS, RATE_HZ)
    tracker.event(0, t_step, 0.25)
    tracker.frame(0, force[k_step + 50 :], T0_NS + (k_step + 50) * 10**7, RATE_HZ)
    est = tracker.flush(0)
    assert est is not None
    assert est.t_step_ns == t_step
    assert est.n_samples == force.size - k_step - 50
    assert tracker.flush(0) is None
