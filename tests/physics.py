"""An independent physics source for the DSP's tests: distraction steps and load tests written
from the published formulas, not from the emulator (numpy only; imports nothing of osteotel).

Tissue (Bachmeier 2022, J Mech Behav Biomed Mater 105133): the relaxation modulus per mm of
elongation is a Prony series

    G(t) = k_inst * (a_inf + a_f e^(-t/tau_f) + a_s e^(-t/tau_s)),  a_inf + a_f + a_s = 1,

and the force is Boltzmann's superposition of it over the displacement rate:

    F(t) = f_before + integral_0^t G(t - s) u'(s) ds.

A step of delta over a linear ramp of duration R from the onset has u' = delta / R on [0, R],
so with tau = t - onset and one exponential term a e^(-t/T) (a_inf is the T = inf limit):

    during the ramp, 0 <= tau <= R:  k delta / R * (a_inf tau + sum a T (1 - e^(-tau/T)))
    after it, tau > R:               k delta / R * (a_inf R + sum a T (e^(-(tau-R)/T) - e^(-tau/T)))

and as R -> 0 both tend to the sudden step's k delta (a_inf + sum a e^(-tau/T)). The peak of a
ramped step is therefore below k_inst * delta: the tissue relaxes while the device moves.

Load test (Aarnes 2005, J Orthop Res): the patient steps on a scale (a trapezoid of load), the
device carries a share of it as further compression, so device force = f_rest + share * load and
the device shortens: disp = d_rest - share * load / k_device. Variants break that contract on
purpose for the sign checks: polarity -1 (the whole force channel inverted, a sensor mounted the
other way) and "load_relieves" (force = f_rest - share * load, the wrong-sign physics).

`family` and `load_family` draw cases over the range of real devices; `run_steps` and
`run_load_tests` feed them through any estimator with the `dsp.estimator.DeviceEstimator`
interface (passed in, so this module stays independent) and return per-case errors, which
`summarize` turns into the figures the tests assert and `osteotel bench dsp` prints.
"""

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "RAMP_BUCKETS",
    "LoadCase",
    "LoadResult",
    "StepCase",
    "StepResult",
    "Tissue",
    "bachmeier_tissue",
    "family",
    "feed_load_test",
    "feed_step",
    "frames",
    "load_family",
    "ramp_bucket",
    "ramp_force_n",
    "run_load_test",
    "run_load_tests",
    "run_step",
    "run_steps",
    "standard_family",
    "standard_load_family",
    "summarize",
    "superposed_force_n",
]

NS_PER_S = 1_000_000_000
RATES_HZ = (10.0, 25.0, 50.0, 100.0, 200.0)
# Ramp buckets (name, lowest, highest s): a nut turn taken in one sample, sub-second and ~2 s
# motor steps, slower drives of several s, tens of s and minutes (docs/domain.md "What the sensors
# see" gives the span: under a second to minutes).
RAMP_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("sudden", 0.0, 0.0),
    ("sub_s", 0.1, 1.0),
    ("s_2", 1.0, 3.0),
    ("s_4", 3.0, 8.0),
    ("s_tens", 8.0, 60.0),
    ("minutes", 60.0, 180.0),
)

Array = NDArray[np.float64]
Variant = Literal["correct", "load_relieves"]


@dataclass(frozen=True, kw_only=True)
class Tissue:
    """The regenerate's relaxation modulus per mm (Bachmeier 2022's three-term Prony series).

    Attributes:
        k_inst_n_per_mm: G(0), the sudden-step stiffness (N/mm).
        a_inf, a_f: equilibrium and fast shares of G(0); the slow share is 1 - a_inf - a_f.
        tau_f_s, tau_s_s: fast and slow time constants (s).
    """

    k_inst_n_per_mm: float
    a_inf: float
    a_f: float
    tau_f_s: float
    tau_s_s: float

    def __post_init__(self) -> None:
        if not (self.a_inf >= 0.0 and self.a_f >= 0.0 and self.a_s >= 0.0):
            raise ValueError(f"shares must be >= 0 and sum to 1: {self}")
        if not 0.0 < self.tau_f_s < self.tau_s_s:
            raise ValueError(f"need 0 < tau_f_s < tau_s_s: {self}")

    @property
    def a_s(self) -> float:
        """The slow term's share of G(0)."""
        return 1.0 - self.a_inf - self.a_f

    @property
    def k_eq_n_per_mm(self) -> float:
        """G(inf), the stiffness once relaxed (N/mm)."""
        return self.k_inst_n_per_mm * self.a_inf

    def relaxation(self, t_s: Array | float) -> Array:
        """G(t) (N/mm) at t_s >= 0 (s)."""
        t = np.asarray(t_s, dtype=np.float64)
        return self.k_inst_n_per_mm * (
            self.a_inf + self.a_f * np.exp(-t / self.tau_f_s) + self.a_s * np.exp(-t / self.tau_s_s)
        )


def bachmeier_tissue(step_number: int, k_inst_n_per_mm: float) -> Tissue:
    """The published fit at distraction step i (Bachmeier 2022): tau_f 0.97 s,
    tau_s 7.42 i + 60.2 s, a_f 0.71 - 0.016 i, a_inf 0.058 ln i + 0.0034."""
    i = float(step_number)
    return Tissue(
        k_inst_n_per_mm=k_inst_n_per_mm,
        a_inf=0.058 * math.log(i) + 0.0034,
        a_f=0.71 - 0.016 * i,
        tau_f_s=0.97,
        tau_s_s=7.42 * i + 60.2,
    )


def ramp_force_n(t_s: Array, tissue: Tissue, delta_mm: float, ramp_s: float) -> Array:
    """Force increase (N) of one step of delta_mm over a linear ramp of ramp_s (0: sudden),
    at times t_s after its onset (s); 0 before the onset. The closed form of the module
    docstring."""
    t = np.asarray(t_s, dtype=np.float64)
    out = np.zeros_like(t)
    on = t >= 0.0
    tau = t[on]
    k = tissue.k_inst_n_per_mm
    terms = ((tissue.a_f, tissue.tau_f_s), (tissue.a_s, tissue.tau_s_s))
    if ramp_s <= 0.0:
        g = tissue.a_inf + sum(a * np.exp(-tau / tau_j) for a, tau_j in terms)
        out[on] = k * delta_mm * g
        return out
    during = np.minimum(tau, ramp_s)
    after = np.maximum(tau - ramp_s, 0.0)
    # After the ramp: a T (e^(-(tau-R)/T) - e^(-tau/T)); during it (after = 0, during = tau)
    # the same expression reads a T (1 - e^(-tau/T)): one formula covers both.
    total = tissue.a_inf * during
    for a, tau_j in terms:
        total = total + a * tau_j * (np.exp(-after / tau_j) - np.exp(-(after + during) / tau_j))
    out[on] = k * delta_mm / ramp_s * total
    return out


def superposed_force_n(
    t_s: Array, tissue: Tissue, delta_mm: float, ramp_s: float, *, n_sub: int = 20_000
) -> Array:
    """The same force by brute force (N): the ramp as n_sub sudden sub-steps of delta_mm/n_sub
    at the midpoints of its slices, each adding delta_mm/n_sub * G(t - s_j) from its time on."""
    t = np.asarray(t_s, dtype=np.float64)
    if ramp_s <= 0.0:
        return np.where(t >= 0.0, delta_mm * tissue.relaxation(np.maximum(t, 0.0)), 0.0)
    s = (np.arange(n_sub) + 0.5) * (ramp_s / n_sub)
    out = np.zeros_like(t)
    for j, t_j in enumerate(t):
        age = t_j - s[s <= t_j]
        out[j] = delta_mm / n_sub * float(np.sum(tissue.relaxation(age)))
    return out


def ramp_disp_mm(t_s: Array, delta_mm: float, ramp_s: float) -> Array:
    """Elongation (mm) of a step of delta_mm over ramp_s (0: sudden) at t_s after its onset."""
    t = np.asarray(t_s, dtype=np.float64)
    if ramp_s <= 0.0:
        return np.where(t >= 0.0, delta_mm, 0.0)
    return delta_mm * np.clip(t / ramp_s, 0.0, 1.0)


def ramp_bucket(ramp_s: float) -> str:
    """The name of the `RAMP_BUCKETS` entry ramp_s falls in."""
    for name, lo, hi in RAMP_BUCKETS:
        if lo <= ramp_s <= hi:
            return name
    return RAMP_BUCKETS[-1][0] if ramp_s > 0 else RAMP_BUCKETS[0][0]


# ---- distraction steps ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StepCase:
    """One distraction step as a device and its hub report it.

    Attributes:
        tissue: the regenerate's relaxation modulus.
        delta_mm: the real step size (mm); delta_announced_mm what the hub's event says.
        ramp_s: duration of the linear displacement ramp (s); 0 is a sudden step.
        onset_ns: the true onset (UTC epoch ns, on no sample grid); stamp_ns the event time
            the hub reports (off by up to +/- 0.5 s).
        rate_hz: sample rate; t0_ns: time of the first sample (ns).
        pre_s, post_s: data before and after the onset (s).
        f_before_n: the settled force before any step here (N); d_before_mm likewise.
        force_noise_n, disp_noise_mm: Gaussian noise sd on each channel.
        prev_age_s, prev_delta_mm: a previous step of the same tissue and ramp, prev_age_s
            before this one, still relaxing (cut short by this step); 0 mm for none.
        gap_start_s, gap_s: samples missing from gap_start_s after the onset for gap_s (0: none).
        polarity: +1, or -1 for a force channel inverted as a whole (steps lower the reading).
        seed: noise seed.
    """

    tissue: Tissue
    delta_mm: float
    delta_announced_mm: float
    ramp_s: float
    onset_ns: int
    stamp_ns: int
    rate_hz: float
    t0_ns: int
    pre_s: float = 8.0
    post_s: float = 625.0
    f_before_n: float = 100.0
    d_before_mm: float = 10.0
    force_noise_n: float = 0.2
    disp_noise_mm: float = 0.002
    prev_age_s: float = 0.0
    prev_delta_mm: float = 0.0
    gap_start_s: float = 0.0
    gap_s: float = 0.0
    polarity: float = 1.0
    seed: int = 0

    def sample_times_ns(self) -> NDArray[np.int64]:
        """Sample times (ns): t0_ns on its own grid, the gap removed."""
        dt_ns = round(NS_PER_S / self.rate_hz)
        end_ns = self.onset_ns + round(self.post_s * NS_PER_S)
        t = self.t0_ns + dt_ns * np.arange((end_ns - self.t0_ns) // dt_ns + 1, dtype=np.int64)
        if self.gap_s > 0.0:
            g0 = self.onset_ns + round(self.gap_start_s * NS_PER_S)
            g1 = g0 + round(self.gap_s * NS_PER_S)
            t = t[(t < g0) | (t >= g1)]
        return t

    def clean(self, t_ns: NDArray[np.int64]) -> tuple[Array, Array]:
        """Noise-free force (N) and displacement (mm) at t_ns."""
        tau = (t_ns - self.onset_ns).astype(np.float64) / NS_PER_S
        force = self.f_before_n + ramp_force_n(tau, self.tissue, self.delta_mm, self.ramp_s)
        disp = self.d_before_mm + ramp_disp_mm(tau, self.delta_mm, self.ramp_s)
        if self.prev_delta_mm != 0.0:
            tau_p = tau + self.prev_age_s
            force += ramp_force_n(tau_p, self.tissue, self.prev_delta_mm, self.ramp_s)
            disp += ramp_disp_mm(tau_p, self.prev_delta_mm, self.ramp_s)
        return force, disp

    def samples(self) -> tuple[NDArray[np.int64], Array, Array]:
        """Sample times (ns), force (N) and displacement (mm) with noise."""
        t = self.sample_times_ns()
        force, disp = self.clean(t)
        rng = np.random.default_rng(self.seed)
        force = self.polarity * force + self.force_noise_n * rng.standard_normal(t.size)
        disp = disp + self.disp_noise_mm * rng.standard_normal(t.size)
        return t, force, disp

    def truth(self) -> dict[str, float]:
        """What an estimator should find: sudden-step stiffness, equilibrium stiffness, time
        constants, shares, size, onset (ns), ramp (s) and the force just before the onset."""
        f_before, _ = self.clean(np.array([self.onset_ns - 1], dtype=np.int64))
        return {
            "k_inst_n_per_mm": self.tissue.k_inst_n_per_mm,
            "k_eq_n_per_mm": self.tissue.k_eq_n_per_mm,
            "tau_f_s": self.tissue.tau_f_s,
            "tau_s_s": self.tissue.tau_s_s,
            "a_f": self.tissue.a_f,
            "a_inf": self.tissue.a_inf,
            "delta_mm": self.delta_mm,
            "onset_ns": float(self.onset_ns),
            "ramp_s": self.ramp_s,
            "f_before_n": float(f_before[0]),
        }


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _draw_ramp_s(rng: np.random.Generator, bucket: int) -> float:
    _, lo, hi = RAMP_BUCKETS[bucket]
    return 0.0 if hi == 0.0 else _log_uniform(rng, lo, hi)


def family(
    seed: int,
    n: int,
    *,
    announce_err: float = 0.0,
    prev_fraction: float = 0.0,
    gap_fraction: float = 0.0,
) -> list[StepCase]:
    """n steps over the range of real devices (ramp buckets cycled so each is represented).

    Ranges: rate 10-200 Hz; ramp 0 (one sample) to 180 s, log-spread within each of
    `RAMP_BUCKETS`; tau_f 0.3-5 s, a_f 0.05-0.75, tau_s 60-300 s, a_inf 0.02-0.3 (Bachmeier
    2022's fit and the spread across patients and devices); k_inst 15-400 N/mm; delta 0.1-1 mm;
    the event stamped up to +/- 0.5 s off the onset; force noise 0.05-1 N.

    Args:
        seed: the draw's seed.
        n: number of cases.
        announce_err: the announced delta is off by up to this fraction (uniform +/-).
        prev_fraction: share of cases with a previous step 60-600 s earlier, still relaxing.
        gap_fraction: share of cases with a 2-30 s data gap 30-400 s after the onset.
    """
    rng = np.random.default_rng(seed)
    cases = []
    for j in range(n):
        a_inf = rng.uniform(0.02, 0.3)
        a_f = rng.uniform(0.05, min(0.75, 0.95 - a_inf))
        tau_f = _log_uniform(rng, 0.3, 5.0)
        tau_s = max(_log_uniform(rng, 60.0, 300.0), 10.0 * tau_f)
        tissue = Tissue(
            k_inst_n_per_mm=_log_uniform(rng, 15.0, 400.0),
            a_inf=a_inf,
            a_f=a_f,
            tau_f_s=tau_f,
            tau_s_s=tau_s,
        )
        rate = float(rng.choice(RATES_HZ))
        onset = 1_700_000_000 * NS_PER_S + int(rng.integers(0, 10**12))
        pre_s = 8.0
        delta = rng.uniform(0.1, 1.0)
        prev = rng.random() < prev_fraction
        gap = rng.random() < gap_fraction
        cases.append(
            StepCase(
                tissue=tissue,
                delta_mm=delta,
                delta_announced_mm=delta * (1.0 + announce_err * rng.uniform(-1.0, 1.0)),
                ramp_s=_draw_ramp_s(rng, j % len(RAMP_BUCKETS)),
                onset_ns=onset,
                stamp_ns=onset + round(rng.uniform(-0.5, 0.5) * NS_PER_S),
                rate_hz=rate,
                t0_ns=onset - round(pre_s * NS_PER_S) - int(rng.integers(0, NS_PER_S)),
                pre_s=pre_s,
                f_before_n=rng.uniform(10.0, 300.0),
                d_before_mm=rng.uniform(0.0, 60.0),
                force_noise_n=_log_uniform(rng, 0.05, 1.0),
                disp_noise_mm=_log_uniform(rng, 0.0005, 0.005),
                prev_age_s=rng.uniform(60.0, 600.0) if prev else 0.0,
                prev_delta_mm=rng.uniform(0.1, 1.0) if prev else 0.0,
                gap_start_s=rng.uniform(30.0, 400.0) if gap else 0.0,
                gap_s=rng.uniform(2.0, 30.0) if gap else 0.0,
                seed=int(rng.integers(0, 2**31)),
            )
        )
    return cases


def standard_family(n: int) -> list[StepCase]:
    """The family the tests assert on and `osteotel bench dsp` reports: seed 2026, announced
    deltas up to 10 % off, no previous step or gap (those have their own tests)."""
    return family(2026, n, announce_err=0.1)


# ---- load tests ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LoadCase:
    """One weight-bearing test: the load ramps up, holds and ramps down (a trapezoid).

    Attributes:
        share: the fraction of the load the device carries (the physical truth).
        load_n: the trapezoid's plateau (N); ramp_s, hold_s its ramps and hold (s);
            rest_s of unloaded data before and after, inside the test.
        f_rest_n, d_rest_mm: force and displacement without load.
        k_device_n_per_mm: the device's own axial stiffness (N/mm).
        polarity: +1, or -1 for a force channel inverted as a whole.
        variant: "correct" (load raises the force) or "load_relieves" (the wrong sign).
        force_noise_n, disp_noise_mm, ref_noise_n: Gaussian noise sd per channel.
        rate_hz, t0_ns: sample rate and first sample (ns); seed: noise seed.
    """

    share: float
    load_n: float
    rate_hz: float
    t0_ns: int
    ramp_s: float = 5.0
    hold_s: float = 20.0
    rest_s: float = 3.0
    f_rest_n: float = 100.0
    d_rest_mm: float = 10.0
    k_device_n_per_mm: float = 200.0
    polarity: float = 1.0
    variant: Variant = "correct"
    force_noise_n: float = 0.2
    disp_noise_mm: float = 0.002
    ref_noise_n: float = 1.0
    seed: int = 0

    @property
    def duration_s(self) -> float:
        """The whole test, rests included (s)."""
        return 2.0 * (self.rest_s + self.ramp_s) + self.hold_s

    @property
    def end_ns(self) -> int:
        """Just after the test's last sample (ns)."""
        return self.t0_ns + round(self.duration_s * NS_PER_S)

    @property
    def measured_sign(self) -> float:
        """The sign d(device force)/d(load) shows: +1 only for a correct, non-inverted device."""
        return self.polarity * (1.0 if self.variant == "correct" else -1.0)

    def load(self, t_ns: NDArray[np.int64]) -> Array:
        """The true load on the scale (N) at t_ns."""
        t = (t_ns - self.t0_ns).astype(np.float64) / NS_PER_S - self.rest_s
        up = np.clip(t / self.ramp_s, 0.0, 1.0)
        down = np.clip((t - self.ramp_s - self.hold_s) / self.ramp_s, 0.0, 1.0)
        return self.load_n * (up - down)

    def samples(self) -> tuple[NDArray[np.int64], Array, Array, Array]:
        """Sample times (ns), force (N), displacement (mm) and the scale's reading (N)."""
        dt_ns = round(NS_PER_S / self.rate_hz)
        t = self.t0_ns + dt_ns * np.arange(round(self.duration_s * self.rate_hz), dtype=np.int64)
        load = self.load(t)
        carried = self.share * load
        sign = 1.0 if self.variant == "correct" else -1.0
        rng = np.random.default_rng(self.seed)
        force = self.polarity * (self.f_rest_n + sign * carried)
        force = force + self.force_noise_n * rng.standard_normal(t.size)
        disp = self.d_rest_mm - carried / self.k_device_n_per_mm
        disp = disp + self.disp_noise_mm * rng.standard_normal(t.size)
        ref = load + self.ref_noise_n * rng.standard_normal(t.size)
        return t, force, disp, ref


def load_family(seed: int, n: int) -> list[LoadCase]:
    """n load tests: share 0.02-1, plateau 300-700 N, 5 s ramps and a 20 s hold; one
    case in two a correct device, the others alternately polarity -1 and "load_relieves"."""
    rng = np.random.default_rng(seed)
    cases = []
    for j in range(n):
        kind = j % 4
        cases.append(
            LoadCase(
                share=rng.uniform(0.02, 1.0),
                load_n=rng.uniform(300.0, 700.0),
                rate_hz=float(rng.choice(RATES_HZ)),
                t0_ns=1_700_000_000 * NS_PER_S + int(rng.integers(0, 10**12)),
                f_rest_n=rng.uniform(10.0, 300.0),
                d_rest_mm=rng.uniform(0.0, 60.0),
                k_device_n_per_mm=_log_uniform(rng, 50.0, 1000.0),
                polarity=-1.0 if kind == 2 else 1.0,
                variant="load_relieves" if kind == 3 else "correct",
                force_noise_n=_log_uniform(rng, 0.05, 1.0),
                disp_noise_mm=_log_uniform(rng, 0.0005, 0.005),
                ref_noise_n=_log_uniform(rng, 0.2, 2.0),
                seed=int(rng.integers(0, 2**31)),
            )
        )
    return cases


def standard_load_family(n: int) -> list[LoadCase]:
    """The load tests the tests assert on and `osteotel bench dsp` reports (seed 2027)."""
    return load_family(2027, n)


# ---- feeding an estimator ----------------------------------------------------------------------


class Estimator(Protocol):
    """What `dsp.estimator.DeviceEstimator` offers (structurally; nothing imported)."""

    def frame(
        self, force_n: Array, disp_mm: Array, ref_load_n: Array | None, t0_ns: int, rate_hz: float
    ) -> list[Any]: ...

    def step(self, t_ns: int, delta_mm: float, *, kind: Any = ...) -> list[Any]: ...

    def load_test_start(self, t_ns: int) -> list[Any]: ...

    def load_test_end(self, t_ns: int) -> list[Any]: ...

    def flush(self) -> list[Any]: ...


def frames(
    t_ns: NDArray[np.int64], rate_hz: float, frame_s: float = 1.0
) -> Iterator[tuple[int, int]]:
    """(start, stop) index ranges of frames of ~frame_s; a frame never spans a gap."""
    dt_ns = round(NS_PER_S / rate_hz)
    per = max(1, round(frame_s * rate_hz))
    breaks = np.flatnonzero(np.diff(t_ns) != dt_ns) + 1
    edges = [0, *breaks.tolist(), t_ns.size]
    for a, b in itertools.pairwise(edges):
        for start in range(a, b, per):
            yield start, min(start + per, b)


@dataclass(frozen=True, kw_only=True)
class StepResult:
    """One case's outcome. Relative errors are |estimate / truth - 1|, inf when the estimator
    gave no record or a non-finite value.

    Attributes:
        case: the case; truth: `StepCase.truth()`.
        record: the step record for the case's event, or None.
        k_inst_rel_err, k_eq_rel_err, tau_slow_rel_err: relative errors.
        identity_violations: how many of the record's identities (k * delta = force
            difference, for the k_inst, k_peak and k_eq it carries) fail beyond rounding.
    """

    case: StepCase
    truth: dict[str, float]
    record: Any
    k_inst_rel_err: float
    k_eq_rel_err: float
    tau_slow_rel_err: float
    identity_violations: int
    flags: tuple[str, ...] = field(default=())


def _rel_err(estimate: float, truth: float) -> float:
    if not math.isfinite(estimate):
        return math.inf
    return abs(estimate / truth - 1.0)


# (stiffness field, force field) pairs: k * delta = force - f_residual (docs/dsp.md).
_IDENTITIES = (
    ("k_inst_n_per_mm", "f_inst_n"),
    ("k_peak_n_per_mm", "f_peak_n"),
    ("k_eq_n_per_mm", "f_settled_n"),
)


def identity_violations(record: Any, *, rel_tol: float = 1e-6) -> int:
    """How many of k * delta_mm = f - f_residual_n fail on a step record (fields it lacks,
    or NaN estimates, are skipped)."""
    bad = 0
    for k_name, f_name in _IDENTITIES:
        k = getattr(record, k_name, math.nan)
        f = getattr(record, f_name, math.nan)
        if not (math.isfinite(k) and math.isfinite(f)):
            continue
        lhs = k * record.delta_mm
        rhs = f - record.f_residual_n
        if abs(lhs - rhs) > rel_tol * max(abs(lhs), abs(rhs), abs(f), 1.0):
            bad += 1
    return bad


def feed_step(case: StepCase, estimator: Estimator, *, kind: str = "step") -> list[Any]:
    """Feed one step's (or probe's) data frame by frame, as a hub publishes it: the event just
    before the first frame that reaches the earlier of its stamp and the true onset. Returns
    the records."""
    t, force, disp = case.samples()
    records: list[Any] = []
    announced = False
    first_ns = min(case.stamp_ns, case.onset_ns)
    dt_ns = round(NS_PER_S / case.rate_hz)
    for a, b in frames(t, case.rate_hz):
        if not announced and int(t[b - 1]) + dt_ns > first_ns:
            records += estimator.step(case.stamp_ns, case.delta_announced_mm, kind=kind)
            announced = True
        records += estimator.frame(force[a:b], disp[a:b], None, int(t[a]), case.rate_hz)
    return records


def run_step(case: StepCase, estimator: Estimator) -> StepResult:
    """Feed one case through an estimator, flush it, and compare its step record with truth."""
    records = feed_step(case, estimator) + estimator.flush()
    steps = [r for r in records if r.kind == "step"]
    mine = [r for r in steps if getattr(r, "t_step_ns", r.t_ns) == case.stamp_ns]
    record = mine[0] if mine else None
    truth = case.truth()
    if record is None:
        return StepResult(
            case=case,
            truth=truth,
            record=None,
            k_inst_rel_err=math.inf,
            k_eq_rel_err=math.inf,
            tau_slow_rel_err=math.inf,
            identity_violations=0,
        )
    return StepResult(
        case=case,
        truth=truth,
        record=record,
        k_inst_rel_err=_rel_err(record.k_inst_n_per_mm, truth["k_inst_n_per_mm"]),
        k_eq_rel_err=_rel_err(record.k_eq_n_per_mm, truth["k_eq_n_per_mm"]),
        tau_slow_rel_err=_rel_err(record.tau_slow_s, truth["tau_s_s"]),
        identity_violations=identity_violations(record),
        flags=tuple(record.flags),
    )


def run_steps(cases: Sequence[StepCase], make: Callable[[], Estimator]) -> list[StepResult]:
    """`run_step` over the cases, each with a fresh estimator from `make`."""
    return [run_step(case, make()) for case in cases]


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    """One load test's outcome.

    Attributes:
        case: the case; record: its load-share record, or None.
        share_abs_err: |share - measured_sign * true share| (inf without a finite share).
        usable: the record's `usable` (None if it has no such field or no record).
        flags: the record's flags (() if none).
    """

    case: LoadCase
    record: Any
    share_abs_err: float
    usable: bool | None
    flags: tuple[str, ...]


def feed_load_test(case: LoadCase, estimator: Estimator) -> list[Any]:
    """Feed one load test: its start, its frames with the scale's reading, its end."""
    t, force, disp, ref = case.samples()
    records: list[Any] = []
    records += estimator.load_test_start(case.t0_ns)
    for a, b in frames(t, case.rate_hz):
        records += estimator.frame(force[a:b], disp[a:b], ref[a:b], int(t[a]), case.rate_hz)
    records += estimator.load_test_end(case.end_ns)
    return records


def run_load_test(case: LoadCase, estimator: Estimator) -> LoadResult:
    """Feed one load test through an estimator, flush it, and compare its load-share record."""
    records = feed_load_test(case, estimator) + estimator.flush()
    mine = [r for r in records if r.kind == "load_share"]
    if not mine:
        return LoadResult(case=case, record=None, share_abs_err=math.inf, usable=None, flags=())
    record = mine[0]
    share = float(record.share)
    err = abs(share - case.measured_sign * case.share) if math.isfinite(share) else math.inf
    usable = getattr(record, "usable", None)
    return LoadResult(
        case=case,
        record=record,
        share_abs_err=err,
        usable=None if usable is None else bool(usable),
        flags=tuple(getattr(record, "flags", ())),
    )


def run_load_tests(cases: Sequence[LoadCase], make: Callable[[], Estimator]) -> list[LoadResult]:
    """`run_load_test` over the cases, each with a fresh estimator from `make`."""
    return [run_load_test(case, make()) for case in cases]


# ---- figures -----------------------------------------------------------------------------------


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    # inverted_cdf picks an observed value: no interpolation between inf and a number.
    return float(np.quantile(np.asarray(values, dtype=np.float64), q, method="inverted_cdf"))


def _error_figures(results: Sequence[StepResult], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {f"{prefix}n_cases": float(len(results))}
    for name in ("k_inst", "k_eq", "tau_slow"):
        errs = [getattr(r, f"{name}_rel_err") for r in results]
        out[f"{prefix}{name}_median_rel_err"] = _quantile(errs, 0.5)
        out[f"{prefix}{name}_p95_rel_err"] = _quantile(errs, 0.95)
    return out


def summarize(steps: Sequence[StepResult], loads: Sequence[LoadResult] = ()) -> dict[str, float]:
    """Figures over a family: medians and 95th percentiles of the relative errors (overall,
    per ramp bucket and per rate), missing records, identity violations, flag counts, and
    the load tests' share error (correct devices) and flags."""
    out = _error_figures(steps, "")
    # The steps a clinician may act on: k_inst is a measurement (the estimator's low_snr).
    out.update(_error_figures([r for r in steps if "low_snr" not in r.flags], "measured_"))
    within = [
        abs(r.record.k_inst_n_per_mm - r.truth["k_inst_n_per_mm"])
        <= 2.5 * r.record.k_inst_std_n_per_mm
        for r in steps
        if r.record is not None
    ]
    out["k_inst_within_2_5_se_fraction"] = sum(within) / len(within) if within else math.nan
    out["n_missing"] = float(sum(r.record is None for r in steps))
    out["n_fit_not_ok"] = float(
        sum(r.record is not None and r.record.fit_status != "ok" for r in steps)
    )
    out["identity_violations"] = float(sum(r.identity_violations for r in steps))
    flag_names = sorted({f for r in steps for f in r.flags})
    for flag in flag_names:
        out[f"flag_{flag}"] = float(sum(flag in r.flags for r in steps))
    for name, _, _ in RAMP_BUCKETS:
        bucket = [r for r in steps if ramp_bucket(r.case.ramp_s) == name]
        out.update(_error_figures(bucket, f"ramp_{name}_"))
    for rate in RATES_HZ:
        bucket = [r for r in steps if r.case.rate_hz == rate]
        out.update(_error_figures(bucket, f"rate_{rate:g}hz_"))
    if loads:
        correct = [r for r in loads if r.case.measured_sign > 0]
        wrong = [r for r in loads if r.case.measured_sign < 0]
        out["load_n_cases"] = float(len(loads))
        out["load_share_median_abs_err"] = _quantile([r.share_abs_err for r in correct], 0.5)
        out["load_share_max_abs_err"] = _quantile([r.share_abs_err for r in correct], 1.0)
        out["load_k_device_median_rel_err"] = _quantile(
            [
                math.inf
                if r.record is None
                else _rel_err(r.record.k_device_n_per_mm, r.case.k_device_n_per_mm)
                for r in correct
            ],
            0.5,
        )
        out["load_correct_positive"] = float(
            sum(r.record is not None and r.record.share > 0 for r in correct)
        )
        out["load_correct_usable"] = float(sum(r.usable is True for r in correct))
        out["load_wrong_sign_flagged"] = float(
            sum(
                r.usable is False and bool({"sign_inconsistent", "implausible"} & set(r.flags))
                for r in wrong
            )
        )
        out["load_n_correct"] = float(len(correct))
        out["load_n_wrong_sign"] = float(len(wrong))
        for flag in sorted({f for r in loads for f in r.flags}):
            out[f"load_flag_{flag}"] = float(sum(flag in r.flags for r in loads))
    return out
