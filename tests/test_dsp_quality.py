"""Signal quality: noise, flatline, saturation, spikes and non-finite samples, kernel against
reference and streaming against batch."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from reference import ref_quality

from dsp import _kernels as kern
from dsp.quality import QualityConfig, QualityMonitor, signal_quality

RATE_HZ = 100.0
T0_NS = 1_700_000_000_000_000_000


def noisy(n: int = 5000, seed: int = 0) -> np.ndarray:
    """A slow force drift (N) with 0.5 N rms white noise."""
    rng = np.random.default_rng(seed)
    return 100.0 + np.linspace(0.0, 5.0, n) + rng.normal(0.0, 0.5, n)


def test_noise_level_is_the_white_noise_rms() -> None:
    """On white noise the reported noise is within 15 % of its rms and nothing is flagged."""
    report = signal_quality(noisy(), T0_NS, RATE_HZ)
    assert abs(report.noise_rms / 0.5 - 1.0) < 0.15
    assert report.ok
    assert report.t_end_ns == T0_NS + 4999 * 10**7


def test_isolated_spikes_are_counted_and_do_not_inflate_noise() -> None:
    """Ten isolated spikes are counted as ten, and the noise level stays near 0.5 N."""
    x = noisy()
    x[np.arange(200, 4800, 460)] += 40.0
    report = signal_quality(x, T0_NS, RATE_HZ)
    assert report.n_spikes == 10
    assert abs(report.noise_rms / 0.5 - 1.0) < 0.25
    assert not report.ok


def test_a_step_is_not_a_spike() -> None:
    """A lasting jump of the signal is not counted as a spike."""
    x = noisy()
    x[2500:] += 40.0
    assert signal_quality(x, T0_NS, RATE_HZ).n_spikes == 0


def test_flatline_and_saturation_are_flagged() -> None:
    """A stuck sensor reading full scale is flagged as flatline and saturated."""
    x = noisy()
    x[3000:] = 2000.0
    report = signal_quality(x, T0_NS, RATE_HZ)
    assert report.flatline
    assert report.flat_run == 2000
    assert report.n_saturated == 2000
    assert report.n_flat == 2000 - 100


def test_counts_are_per_frame() -> None:
    """Counts in a report cover its own frame; the flat run carries over frames."""
    monitor = QualityMonitor(1)
    first = monitor.frame(0, [1.0, math.nan, 1.0], T0_NS, RATE_HZ)
    second = monitor.frame(0, [1.0, 1.0], T0_NS + 3 * 10**7, RATE_HZ)
    assert first.n_nonfinite == 1
    assert second.n_nonfinite == 0
    assert second.flat_run == 4


@pytest.mark.parametrize(
    ("where", "value"),
    [(None, math.nan), ([0], math.nan), ([7, 8], math.inf), (list(range(50, 90)), -math.inf)],
    ids=["none", "nan_first", "inf_pair", "neg_inf_run"],
)
def test_kernel_matches_reference(where: list[int] | None, value: float) -> None:
    """Counters and noise variance equal the sample-by-sample reference."""
    x = noisy(1000, seed=3)
    x[[100, 400, 401]] += 30.0
    x[600:750] = x[599]
    x[800:820] = 2500.0
    if where is not None:
        x[where] = value
    cfg = QualityConfig()
    monitor = QualityMonitor(1, cfg)
    monitor.frame(0, x, T0_NS, RATE_HZ)
    ref = ref_quality(x, cfg.full_scale, cfg.flat_eps, cfg.flat_samples, cfg.spike_k, 0.01)
    qi, qf = monitor.int_state[0], monitor.float_state[0]
    got = {
        "n_total": qi[kern.QI_N_TOTAL],
        "n_nonfinite": qi[kern.QI_N_NONFINITE],
        "n_saturated": qi[kern.QI_N_SATURATED],
        "n_spikes": qi[kern.QI_N_SPIKES],
        "n_flat": qi[kern.QI_N_FLAT],
        "max_run": qi[kern.QI_MAX_RUN],
        "run": qi[kern.QI_RUN],
    }
    for name, value_got in got.items():
        assert value_got == ref[name], name
    assert_allclose(qf[kern.QF_NOISE_VAR], ref["noise_var"], rtol=1e-12)


finite_or_not = st.one_of(
    st.floats(-3000.0, 3000.0),
    st.sampled_from([math.nan, math.inf, 0.0, 0.0, 5.0]),
)


@settings(max_examples=80, deadline=None)
@given(values=st.lists(finite_or_not, max_size=200), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_streaming_state_equals_batch_and_reference_on_every_prefix(
    values: list[float], cuts: list[int]
) -> None:
    """After every frame (empty, one-sample or longer, with NaN and inf) the state equals a
    monitor fed the whole prefix at once, and the reference's counters."""
    x = np.array(values, dtype=np.float64)
    bounds = sorted({0, x.size, *(min(c, x.size) for c in cuts)})
    cfg = QualityConfig(flat_samples=3)
    stream = QualityMonitor(1, cfg)
    for a, b in itertools.pairwise(bounds):
        stream.frame(0, x[a:b], T0_NS + a * 10**7, RATE_HZ)
        batch = QualityMonitor(1, cfg)
        batch.frame(0, x[:b], T0_NS, RATE_HZ)
        assert_array_equal(stream.int_state, batch.int_state)
        assert_array_equal(stream.float_state, batch.float_state)
    ref = ref_quality(x, cfg.full_scale, cfg.flat_eps, cfg.flat_samples, cfg.spike_k, 0.01)
    assert stream.int_state[0, kern.QI_N_SPIKES] == ref["n_spikes"]
    assert stream.int_state[0, kern.QI_N_FLAT] == ref["n_flat"]
    assert stream.int_state[0, kern.QI_MAX_RUN] == ref["max_run"]
    assert_allclose(
        stream.float_state[0, kern.QF_NOISE_VAR], ref["noise_var"], rtol=1e-9, equal_nan=True
    )
