"""Numba kernels of the DSP core: arrays and scalars in, nothing validated, nothing allocated
on the per-sample path.

Every kernel works on one device's state, held as two fixed-size rows: a float64 row and an
int64 row (times stay int64 nanoseconds, which float64 cannot hold exactly). The layouts are
the offsets below; the public wrappers in `steps`, `tracking`, `loadshare` and `quality` own
the rows and never touch a sample in Python.
"""

# Kernels take their arrays and scalars positionally: that is the numba calling convention the
# wrappers use, and the offsets above, not argument names, document the state.
# ruff: noqa: PLR0917

import math

import numpy as np
from numba import njit

__all__ = [
    "LS_FLOAT_LEN",
    "LS_INT_LEN",
    "Q_FLOAT_LEN",
    "Q_INT_LEN",
    "RLS_FLOAT_LEN",
    "RLS_INT_LEN",
    "STEP_BINS_LEN",
    "STEP_FLOAT_LEN",
    "STEP_INT_LEN",
]

# ---------------------------------------------------------------------------------------------
# Step response state.
# Pre-step history: a ring of short bins keyed by absolute bin number (t_ns // pre_bin_ns), each
# holding the force's sum, count, min and max (so a trimmed mean drops one spike per bin), the
# displacement's sum and the sum of the samples' times within the bin (s).
PRE_BIN_NS = 250_000_000  # the ring's bins: 16 of 0.25 s, 4 s of history
PRE_N = 16
PRE_LEN = 6
PR_SUM_F, PR_COUNT, PR_MIN_F, PR_MAX_F, PR_SUM_D, PR_SUM_T = 0, 1, 2, 3, 4, 5
# Window after the step opens: at most STEP_MAX_BINS bins. The first LIN_N are the pre-step
# ring's own bins (pre_bin_ns wide), from the bin lead_s before the event on: they hold the
# onset, which the event's time only hints at, and are copied from the ring when the window
# opens, so samples that came before the event still count. The rest widen geometrically
# (edges c * (exp(b * h) - 1) seconds after the linear bins) to the window's end. Each bin holds
# the force's sum, the sum of the samples' times, the count, the force's min and max and the
# displacement's sum. Times are seconds after the bin's own start in the linear bins (as in the
# ring, so a bin copied from the ring is bit for bit the bin its samples would have made) and
# seconds after the event in the widening ones. The bins live in a separate row of a shared
# pool ("window slot"), held only while a window is open: a device spends ~40 min a day in
# windows (4 steps x 10 min).
STEP_MAX_BINS = 60
LIN_N = 16
BIN_LEN = 6
B_SUM_F, B_SUM_T, B_COUNT, B_MIN_F, B_MAX_F, B_SUM_D = 0, 1, 2, 3, 4, 5
STEP_BINS_LEN = BIN_LEN * STEP_MAX_BINS  # one window slot

SF_F_BEFORE = 0  # force before the step (N), set when the window opens
SF_DELTA_MM = 1  # the event's step displacement (mm)
SF_PRE = 2  # PRE_N ring bins of PRE_LEN
SF_PEND_DELTA = SF_PRE + PRE_LEN * PRE_N  # pending step displacements (mm)
PEND_N = 4
SF_N_BEFORE = SF_PEND_DELTA + PEND_N  # samples in the force before the step (its trimmed count)
SF_D_BEFORE = SF_N_BEFORE + 1  # displacement before the step (mm)
SF_DT_S = SF_D_BEFORE + 1  # sample spacing in the window (s); NaN before its first sample
SF_LIN_ORIGIN_S = SF_DT_S + 1  # start of the window's first linear bin, s after the event
STEP_FLOAT_LEN = SF_LIN_ORIGIN_S + 1

SI_MODE = 0  # 0 idle, 1 window open, 2 window complete (waits for its fit)
SI_T_STEP = 1  # ns
SI_T_LAST = 2  # time of the last finite sample (ns); -1 before the first
SI_N_SAMPLES = 3  # finite samples that went into the open window
SI_N_PEND = 4  # pending step events
SI_PEND_T = 5  # PEND_N pending step times (ns)
SI_PRE_KEY = SI_PEND_T + PEND_N  # PRE_N bin numbers of the ring slots
SI_DROPPED = SI_PRE_KEY + PRE_N  # step events dropped because the pending slots were full
SI_T_WIN_LAST = SI_DROPPED + 1  # time of the last sample that went into the window (ns)
SI_SLOT = SI_T_WIN_LAST + 1  # window slot (row of the bins pool) held; -1 if none
SI_KEY_W = SI_SLOT + 1  # ring bin number of the window's first (linear) bin
STEP_INT_LEN = SI_KEY_W + 1

MODE_IDLE = 0
MODE_OPEN = 1
MODE_COMPLETE = 2

# Results of _step_fit, in this order. Times are seconds after the event.
R_F_BEFORE = 0  # force before the step (N)
R_F_PEAK = 1  # the fitted curve at the ramp's end (N)
R_F_SETTLED = 2  # f_before + A_inf (N)
R_F_INST = 3  # f_before + A_inf + A_f + A_s: the sudden step's peak (N)
R_A_FAST = 4  # sudden-step amplitude of the fast term (N)
R_A_SLOW = 5
R_TAU_FAST = 6
R_TAU_SLOW = 7
R_RMSE = 8
R_R2 = 9
R_N_BINS = 10  # bins in the force fit
R_SPAN = 11  # observed time after the ramp's end (s)
R_STATUS = 12
R_NOISE_VAR = 13  # per-sample noise variance from the fit's residuals (N^2)
R_SUM_VAR = 14  # variance of A_inf + A_f + A_s, time-constant uncertainty included (N^2)
R_T_ON = 15  # onset (s after the event)
R_RAMP = 16  # ramp duration (s)
R_DELTA = 17  # step size measured from the displacement (mm)
R_FLAGS = 18  # GEOM_* bits
R_A_INF_VAR = 19  # variance of A_inf at the fitted time constants (N^2)
STEP_RESULT_LEN = 20

FIT_OK = 0
FIT_SHORT = 1  # the relaxation was observed for less than min_span_s after the ramp
FIT_TAU_AT_BOUND = 2  # a fitted time constant sits on the edge of its search grid
FIT_NO_DATA = 3  # too few bins after the onset to fit three amplitudes and two time constants

GEOM_ONSET_UNCERTAIN = 1  # the displacement did not place the onset (or no sample before it)
GEOM_TAU_FAST_HELD = 2  # the data do not bound tau_fast: the prior holds it

MIN_FIT_BINS = 6
_CHI2_2SE = 4.0  # a profile point within 2 standard errors: delta chi^2 <= 2^2
_GEOM_POINTS = 24  # grid points per coordinate of the onset/ramp-end search
_GEOM_ROUNDS = 6  # refinements of that search (each a finer grid around the best point)
_FINE_STEPS = 24  # the fine tau_fast profile scans at most this many eighths of a grid step
_SPAN_RAMPS = 5  # ramp durations tried for a ramp shorter than its bin: 0, 1/4, ... 1 bin


@njit(cache=True)
def _trimmed(total: float, count: float, lo: float, hi: float) -> tuple[float, float]:
    """Sum and count of a bin without its extreme samples, once it has enough to spare them."""
    if count >= 4.0:
        return total - lo - hi, count - 2.0
    return total, count


@njit(cache=True)
def _bin_add(row: np.ndarray, at: int, f: float, d: float, t_s: float) -> None:
    """Add one sample to the bin at row[at:at + BIN_LEN]."""
    if row[at + B_COUNT] == 0.0:
        row[at + B_MIN_F] = f
        row[at + B_MAX_F] = f
    row[at + B_SUM_F] += f
    row[at + B_SUM_T] += t_s
    row[at + B_COUNT] += 1.0
    row[at + B_MIN_F] = min(row[at + B_MIN_F], f)
    row[at + B_MAX_F] = max(row[at + B_MAX_F], f)
    row[at + B_SUM_D] += d


@njit(cache=True)
def _step_push(
    fs: np.ndarray,
    si: np.ndarray,
    bins: np.ndarray,
    force_n: np.ndarray,
    disp_mm: np.ndarray,
    t0_ns: int,
    dt_ns: float,
    pre_bin_ns: int,
    c_s: float,
    h: float,
    n_bins: int,
    window_ns: int,
) -> None:
    """Add a run of samples to the pre-step ring and, while a window is open, to its bins
    (row si[SI_SLOT] of the pool `bins`). A sample counts where its force is finite; a
    non-finite displacement beside it counts as the ring's or bin's last mean (none: 0)."""
    # Only an open window holds a slot; otherwise any row stands in and is never written.
    wb = bins[max(si[SI_SLOT], 0)]
    for k in range(force_n.shape[0]):
        f = force_n[k]
        if not math.isfinite(f):
            continue
        d = disp_mm[k]
        t = t0_ns + np.int64(round(k * dt_ns))
        si[SI_T_LAST] = t
        key = t // pre_bin_ns
        slot = key % PRE_N
        base = SF_PRE + PRE_LEN * slot
        if si[SI_PRE_KEY + slot] != key:
            si[SI_PRE_KEY + slot] = key
            for j in range(PRE_LEN):
                fs[base + j] = 0.0
            fs[base + PR_MIN_F] = f
            fs[base + PR_MAX_F] = f
        if not math.isfinite(d):
            n_ring = fs[base + PR_COUNT]
            d = fs[base + PR_SUM_D] / n_ring if n_ring > 0.0 else 0.0
        fs[base + PR_SUM_F] += f
        fs[base + PR_COUNT] += 1.0
        fs[base + PR_MIN_F] = min(fs[base + PR_MIN_F], f)
        fs[base + PR_MAX_F] = max(fs[base + PR_MAX_F], f)
        fs[base + PR_SUM_D] += d
        fs[base + PR_SUM_T] += (t - key * pre_bin_ns) * 1e-9
        if si[SI_MODE] != MODE_OPEN:
            continue
        rel_ns = t - si[SI_T_STEP]
        if rel_ns >= window_ns:
            si[SI_MODE] = MODE_COMPLETE
            continue
        lin = key - si[SI_KEY_W]
        if lin < 0:
            continue
        if lin < LIN_N:
            _bin_add(wb, BIN_LEN * lin, f, d, (t - key * pre_bin_ns) * 1e-9)
        else:
            after_s = (t - (si[SI_KEY_W] + LIN_N) * pre_bin_ns) * 1e-9
            b = min(LIN_N + int(math.log1p(after_s / c_s) / h), n_bins - 1)
            _bin_add(wb, BIN_LEN * b, f, d, rel_ns * 1e-9)
        si[SI_N_SAMPLES] += 1
        si[SI_T_WIN_LAST] = t
        fs[SF_DT_S] = dt_ns * 1e-9


@njit(cache=True)
def _step_open(
    fs: np.ndarray,
    si: np.ndarray,
    wb: np.ndarray,
    t_step_ns: int,
    delta_mm: float,
    pre_bin_ns: int,
    pre_bins: int,
    lead_bins: int,
    n_bins: int,
) -> None:
    """Open a window: clear its bins `wb` (the window slot the caller gave the device), copy
    into its linear bins the ring bins from lead_bins before the event's bin on, and take the
    force and displacement before the step from the pre_bins ring bins before those."""
    key_w = t_step_ns // pre_bin_ns - lead_bins
    for i in range(STEP_BINS_LEN):
        wb[i] = 0.0
    total = 0.0
    count = 0.0
    d_total = 0.0
    d_count = 0.0
    si[SI_N_SAMPLES] = 0
    si[SI_T_WIN_LAST] = -1
    for slot in range(PRE_N):
        key = si[SI_PRE_KEY + slot]
        base = SF_PRE + PRE_LEN * slot
        n = fs[base + PR_COUNT]
        if key < 0 or n == 0.0:
            continue
        if key_w - pre_bins <= key < key_w:
            s, m = _trimmed(fs[base + PR_SUM_F], n, fs[base + PR_MIN_F], fs[base + PR_MAX_F])
            total += s
            count += m
            d_total += fs[base + PR_SUM_D]
            d_count += n
        elif key >= key_w and key - key_w < min(LIN_N, n_bins):
            at = BIN_LEN * (key - key_w)
            wb[at + B_SUM_F] = fs[base + PR_SUM_F]
            wb[at + B_SUM_T] = fs[base + PR_SUM_T]
            wb[at + B_COUNT] = n
            wb[at + B_MIN_F] = fs[base + PR_MIN_F]
            wb[at + B_MAX_F] = fs[base + PR_MAX_F]
            wb[at + B_SUM_D] = fs[base + PR_SUM_D]
            si[SI_N_SAMPLES] += np.int64(n)
            si[SI_T_WIN_LAST] = max(si[SI_T_WIN_LAST], si[SI_T_LAST])
    fs[SF_F_BEFORE] = total / count if count > 0.0 else np.nan
    fs[SF_N_BEFORE] = count
    fs[SF_D_BEFORE] = d_total / d_count if d_count > 0.0 else np.nan
    fs[SF_DELTA_MM] = delta_mm
    si[SI_MODE] = MODE_OPEN
    si[SI_T_STEP] = t_step_ns
    si[SI_KEY_W] = key_w
    fs[SF_LIN_ORIGIN_S] = (key_w * pre_bin_ns - t_step_ns) * 1e-9


@njit(cache=True)
def _geo_sum(m: int, dt: float, tau: float) -> float:
    """sum_{j < m} e^(-j dt / tau), the geometric series of m samples dt apart."""
    if m <= 0:
        return 0.0
    return math.expm1(-m * dt / tau) / math.expm1(-dt / tau)


@njit(cache=True)
def _ramp_avg(t_first: float, n: int, dt: float, t_on: float, ramp: float) -> float:
    """Mean of clip((t - t_on) / ramp, 0, 1) over the n samples t_first + k dt (ramp 0: the
    unit step at t_on)."""
    k1 = min(max(math.ceil((t_on - t_first) / dt), 0), n)
    k2 = min(max(math.ceil((t_on + ramp - t_first) / dt), k1), n)
    total = float(n - k2)
    m = k2 - k1
    if m > 0:
        total += m * (t_first + dt * 0.5 * (k1 + k2 - 1) - t_on) / ramp
    return total / n


@njit(cache=True)
def _relax_avg(t_first: float, n: int, dt: float, t_on: float, ramp: float, tau: float) -> float:
    """Mean over the n samples t_first + k dt of the response of a relaxation term e^(-t/tau)
    to a unit elongation spread linearly over `ramp` from t_on (ramp 0: a sudden step), by the
    superposition integral: (tau/ramp)(1 - e^(-(t - t_on)/tau)) during the ramp and
    (tau/ramp)(1 - e^(-ramp/tau)) e^(-(t - t_on - ramp)/tau) after it."""
    k1 = min(max(math.ceil((t_on - t_first) / dt), 0), n)
    k2 = min(max(math.ceil((t_on + ramp - t_first) / dt), k1), n)
    total = 0.0
    if ramp > 0.0:
        scale = tau / ramp
        m = k2 - k1
        if m > 0:
            first = math.exp(-(t_first + k1 * dt - t_on) / tau)
            total += scale * (m - first * _geo_sum(m, dt, tau))
        top = -scale * math.expm1(-ramp / tau)
    else:
        top = 1.0
    if n > k2:
        total += (
            top * math.exp(-(t_first + k2 * dt - t_on - ramp) / tau) * _geo_sum(n - k2, dt, tau)
        )
    return total / n


@njit(cache=True)
def _relax_at(t: float, ramp: float, tau: float) -> float:
    """The relaxation term's response `t` after the onset of a unit elongation ramp."""
    if t < 0.0:
        return 0.0
    if ramp <= 0.0:
        return math.exp(-t / tau)
    if t < ramp:
        return -tau / ramp * math.expm1(-t / tau)
    return -tau / ramp * math.expm1(-ramp / tau) * math.exp(-(t - ramp) / tau)


@njit(cache=True)
def _solve3(g: np.ndarray, r: np.ndarray, x: np.ndarray) -> bool:
    """Solve the n x n system g x = r (n = len(r), 3 in the fits) by elimination with partial
    pivoting; False if singular."""
    n = r.shape[0]
    a = g.copy()
    b = r.copy()
    scale = 0.0
    for i in range(n):
        scale = max(scale, abs(a[i, i]))
    if not scale > 0.0:
        return False
    for col in range(n):
        piv = col
        for row in range(col + 1, n):
            if abs(a[row, col]) > abs(a[piv, col]):
                piv = row
        if abs(a[piv, col]) <= 1e-13 * scale:
            return False
        if piv != col:
            for j in range(n):
                a[col, j], a[piv, j] = a[piv, j], a[col, j]
            b[col], b[piv] = b[piv], b[col]
        for row in range(col + 1, n):
            m = a[row, col] / a[col, col]
            for j in range(col, n):
                a[row, j] -= m * a[col, j]
            b[row] -= m * b[col]
    for row in range(n - 1, -1, -1):
        s = b[row]
        for j in range(row + 1, n):
            s -= a[row, j] * x[j]
        x[row] = s / a[row, row]
    return True


@njit(cache=True)
def _gram(u: np.ndarray, bf: np.ndarray, bs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """G = sum w phi phi' of the columns phi = (u, bf, bs) (a bin mean of w samples has
    variance noise / w)."""
    g = np.zeros((3, 3))
    for i in range(u.shape[0]):
        wi = w[i]
        g[0, 0] += wi * u[i] * u[i]
        g[0, 1] += wi * u[i] * bf[i]
        g[0, 2] += wi * u[i] * bs[i]
        g[1, 1] += wi * bf[i] * bf[i]
        g[1, 2] += wi * bf[i] * bs[i]
        g[2, 2] += wi * bs[i] * bs[i]
    g[1, 0] = g[0, 1]
    g[2, 0] = g[0, 2]
    g[2, 1] = g[1, 2]
    return g


@njit(cache=True)
def _amp_fit(
    u: np.ndarray, bf: np.ndarray, bs: np.ndarray, y: np.ndarray, w: np.ndarray, coef: np.ndarray
) -> float:
    """Weighted least squares of y on the columns (u, bf, bs): the amplitudes (A_inf, A_f, A_s)
    into coef, and the weighted residual sum of squares (inf if singular)."""
    r = np.zeros(3)
    for i in range(y.shape[0]):
        wy = w[i] * y[i]
        r[0] += u[i] * wy
        r[1] += bf[i] * wy
        r[2] += bs[i] * wy
    if not _solve3(_gram(u, bf, bs, w), r, coef):
        return np.inf
    rss = 0.0
    for i in range(y.shape[0]):
        e = y[i] - coef[0] * u[i] - coef[1] * bf[i] - coef[2] * bs[i]
        rss += w[i] * e * e
    return rss


@njit(cache=True)
def _amp_var(
    u: np.ndarray, bf: np.ndarray, bs: np.ndarray, w: np.ndarray, noise_var: float, c: np.ndarray
) -> float:
    """Variance of c . (A_inf, A_f, A_s) at fixed time constants: noise_var c' G^-1 c
    (`_gram`); NaN if singular."""
    x = np.zeros(3)
    if not _solve3(_gram(u, bf, bs, w), c, x):
        return math.nan
    quad: float = c[0] * x[0] + c[1] * x[1] + c[2] * x[2]
    return noise_var * quad


@njit(cache=True)
def _relax_cols(
    t_first: np.ndarray, cnt: np.ndarray, dt: float, t_on: float, ramp: float, tau: float,
    out: np.ndarray,
) -> None:  # fmt: skip
    """The bin means of one relaxation term's response, for every fit bin."""
    for i in range(t_first.shape[0]):
        out[i] = _relax_avg(t_first[i], cnt[i], dt, t_on, ramp, tau)


@njit(cache=True)
def _best_slow(
    u: np.ndarray,
    bf: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    log_tau_f: float,
    log_tau_slow: np.ndarray,
    cols_s: np.ndarray,
    min_ratio: float,
    refine_rounds: int,
    t_first: np.ndarray,
    cnt: np.ndarray,
    dt: float,
    t_on: float,
    ramp: float,
    coef: np.ndarray,
    bs: np.ndarray,
    best: np.ndarray,
) -> None:
    """The best tau_slow at a fixed tau_fast (whose column is bf): the grid (columns cols_s
    precomputed), then refine_rounds of 9 points at a quarter of the previous spacing.
    best = [rss, ln tau_slow, A_inf + A_f + A_s]."""
    log_ratio = math.log(min_ratio)
    n_s = log_tau_slow.shape[0]
    best[0] = np.inf
    best[1] = log_tau_slow[-1]
    best[2] = np.nan
    for j in range(n_s):
        if log_tau_slow[j] - log_tau_f < log_ratio:
            continue
        rss = _amp_fit(u, bf, cols_s[j], y, w, coef)
        if rss < best[0]:
            best[0] = rss
            best[1] = log_tau_slow[j]
            best[2] = coef[0] + coef[1] + coef[2]
    step = (log_tau_slow[-1] - log_tau_slow[0]) / max(n_s - 1, 1)
    for _ in range(refine_rounds):
        center = best[1]
        step /= 4.0
        for j in range(-4, 5):
            ls = min(max(center + j * step, log_tau_slow[0]), log_tau_slow[-1])
            if j == 0 or ls - log_tau_f < log_ratio:
                continue
            _relax_cols(t_first, cnt, dt, t_on, ramp, math.exp(ls), bs)
            rss = _amp_fit(u, bf, bs, y, w, coef)
            if rss < best[0]:
                best[0] = rss
                best[1] = ls
                best[2] = coef[0] + coef[1] + coef[2]


@njit(cache=True)
def _alternative(
    c: int, mid: float, ramp: float, span: float, sub_sample: bool, dt: float
) -> tuple[float, float]:
    """(onset, ramp) of alternative c of _SPAN_RAMPS for a step the displacement did not
    resolve: a sudden step at half-interval steps up to a sample interval either side
    (sub_sample), else a ramp of c quarters of its bin about the same midpoint; with span 0
    the step itself."""
    if span <= 0.0:
        return mid - 0.5 * ramp, ramp
    frac = c / (_SPAN_RAMPS - 1)
    if sub_sample:  # a sample either way: the midpoint itself may sit one interval off
        return mid + (2.0 * frac - 1.0) * 0.999 * dt, 0.0
    return mid - 0.5 * frac * span, frac * span


@njit(cache=True)
def _geometry_rss(
    t_first: np.ndarray,
    cnt: np.ndarray,
    dt: float,
    t_on: float,
    ramp: float,
    tau_f: float,
    tau_s: float,
    y: np.ndarray,
    w: np.ndarray,
    u: np.ndarray,
    bf: np.ndarray,
    bs: np.ndarray,
    coef: np.ndarray,
) -> float:
    """The residual of a step of this geometry at fixed time constants; its amplitudes in
    coef (u, bf and bs are scratch)."""
    for i in range(y.shape[0]):
        u[i] = _ramp_avg(t_first[i], cnt[i], dt, t_on, ramp)
    _relax_cols(t_first, cnt, dt, t_on, ramp, tau_f, bf)
    _relax_cols(t_first, cnt, dt, t_on, ramp, tau_s, bs)
    return _amp_fit(u, bf, bs, y, w, coef)


@njit(cache=True)
def _tau_search(
    t_first: np.ndarray,
    cnt: np.ndarray,
    dt: float,
    t_on: float,
    ramp: float,
    y: np.ndarray,
    w: np.ndarray,
    log_tau_fast: np.ndarray,
    log_tau_slow: np.ndarray,
    min_ratio: float,
    refine_rounds: int,
    u: np.ndarray,
    cols_f: np.ndarray,
    cols_s: np.ndarray,
    bf: np.ndarray,
    bs: np.ndarray,
    coef: np.ndarray,
    best: np.ndarray,
    prof_rss: np.ndarray,
    prof_sum: np.ndarray,
    prior_mu: float,
    prior_weight: float,
) -> tuple[float, float, float]:
    """The time constants of a step of this geometry: (objective, ln tau_f, ln tau_s).

    The objective is the RSS plus prior_weight (ln tau_f - prior_mu)^2 (`prior_weight` 0:
    the RSS alone). The profile over the tau_fast grid first -- at each point the best
    tau_slow (`_best_slow`), its objective into prof_rss and its A_inf + A_f + A_s into
    prof_sum -- then refine_rounds of 9x9 grids at a quarter of the previous spacing around
    the best point.
    """
    n_f = log_tau_fast.shape[0]
    n_s = log_tau_slow.shape[0]
    for i in range(y.shape[0]):
        u[i] = _ramp_avg(t_first[i], cnt[i], dt, t_on, ramp)
    for i in range(n_f):
        _relax_cols(t_first, cnt, dt, t_on, ramp, math.exp(log_tau_fast[i]), cols_f[i])
    for j in range(n_s):
        _relax_cols(t_first, cnt, dt, t_on, ramp, math.exp(log_tau_slow[j]), cols_s[j])
    i_best = 0
    best_ls = log_tau_slow[-1]
    for i in range(n_f):
        _best_slow(
            u, cols_f[i], y, w, log_tau_fast[i], log_tau_slow, cols_s, min_ratio,
            refine_rounds, t_first, cnt, dt, t_on, ramp, coef, bs, best,
        )  # fmt: skip
        prof_rss[i] = best[0] + prior_weight * (log_tau_fast[i] - prior_mu) ** 2
        prof_sum[i] = best[2]
        if prof_rss[i] < prof_rss[i_best] or i == 0:
            i_best = i
            best_ls = best[1]
    best_rss = prof_rss[i_best]
    best_lf = log_tau_fast[i_best]
    log_ratio = math.log(min_ratio)
    step_f = (log_tau_fast[-1] - log_tau_fast[0]) / max(n_f - 1, 1)
    step_s = (log_tau_slow[-1] - log_tau_slow[0]) / max(n_s - 1, 1) / 4.0**refine_rounds
    for _ in range(refine_rounds):
        center_f = best_lf
        center_s = best_ls
        for i in range(-4, 5):
            lf = min(max(center_f + i * step_f / 4.0, log_tau_fast[0]), log_tau_fast[-1])
            _relax_cols(t_first, cnt, dt, t_on, ramp, math.exp(lf), bf)
            penalty = prior_weight * (lf - prior_mu) ** 2
            for j in range(-4, 5):
                ls = min(max(center_s + j * step_s, log_tau_slow[0]), log_tau_slow[-1])
                if ls - lf < log_ratio:
                    continue
                _relax_cols(t_first, cnt, dt, t_on, ramp, math.exp(ls), bs)
                rss = _amp_fit(u, bf, bs, y, w, coef) + penalty
                if rss < best_rss:
                    best_rss = rss
                    best_lf = lf
                    best_ls = ls
        step_f /= 4.0
    return best_rss, best_lf, best_ls


@njit(cache=True)
def _ramp_ls(
    t_first: np.ndarray, cnt: np.ndarray, dt: float, y: np.ndarray, w_before: float,
    t_on: float, ramp: float, out: np.ndarray,
) -> float:  # fmt: skip
    """Least squares of the displacement (less the mean before the window) on c + delta u:
    the bins' means, and the mean before the window as one more observation of c = 0 with
    weight w_before (its sample count). out = [c, delta]; returns the RSS (inf if singular)."""
    s1 = w_before
    su = suu = sy = suy = syy = 0.0
    for i in range(y.shape[0]):
        ui = _ramp_avg(t_first[i], cnt[i], dt, t_on, ramp)
        wi = float(cnt[i])
        s1 += wi
        su += wi * ui
        suu += wi * ui * ui
        sy += wi * y[i]
        suy += wi * ui * y[i]
        syy += wi * y[i] * y[i]
    det = s1 * suu - su * su
    if not det > 0.0:
        return np.inf
    c = (suu * sy - su * suy) / det
    delta = (s1 * suy - su * sy) / det
    out[0] = c
    out[1] = delta
    rss: float = syy - c * sy - delta * suy
    return rss


@njit(cache=True)
def _geometry(  # noqa: PLR0915 - a bracket, a refined grid search and the unresolved cases
    t_first: np.ndarray,
    cnt: np.ndarray,
    d_mean: np.ndarray,
    dt: float,
    d_before: float,
    n_before: float,
    delta_event: float,
    out: np.ndarray,
) -> bool:
    """Onset, ramp duration and size of the step from the bins' mean displacement: the linear
    ramp d0 + delta clip((t - t_on) / ramp, 0, 1) whose bin means (and the mean of the n_before
    samples before the window, d_before, as one more observation of d0) fit best, by a grid
    search over (t_on, t_on + ramp) -- the onset before the bin where the displacement passes
    half its largest excursion, the end after it and within two bins of 98 % -- refined
    around the best point; d0 and delta by least squares. out = [t_on, ramp, delta, the span of the
    bin holding the whole ramp or 0 if it spans bins, 1 if it took less than a sample
    interval, the onset's standard error (s; 0 if not estimated), the end's shift per
    shift of the onset along their covariance]. False if the displacement does not move by
    30 % of the announced step in its direction."""
    n = t_first.shape[0]
    if n == 0 or not math.isfinite(d_before):
        return False
    # Progress of each bin towards the step's largest excursion in the announced direction:
    # 0 before, 1 at the top. The announced size only gives the direction.
    sign = 1.0 if delta_event > 0.0 else -1.0
    top = 0.0
    for i in range(n):
        top = max(top, sign * (d_mean[i] - d_before))
    if not top >= 0.3 * abs(delta_event):
        return False
    i_half = 0
    while sign * (d_mean[i_half] - d_before) < 0.5 * top:
        i_half += 1
    i_top = i_half  # the first bin at 98 % of the top: the ramp ends within two bins of it
    while sign * (d_mean[i_top] - d_before) < 0.98 * top:
        i_top += 1
    i_b = min(i_top + 2, n - 1)
    on_lo = t_first[0] - dt
    on_hi = t_first[i_half] + cnt[i_half] * dt
    end_lo = t_first[i_half]
    end_hi = t_first[i_b] + cnt[i_b] * dt
    # The displacement is fitted up to a little after the latest possible end of the ramp, so
    # later loading (the device shortens under weight) does not pull on the geometry.
    fit_end = end_hi + max(2.0, 0.5 * (end_hi - on_lo))
    m = 0
    while m < n and t_first[m] <= fit_end:
        m += 1
    y = np.empty(m)
    for i in range(m):
        y[i] = d_mean[i] - d_before
    ls = np.empty(2)
    best = np.inf
    best_on = on_lo
    best_end = end_hi
    step_on = (on_hi - on_lo) / (_GEOM_POINTS - 1)
    step_end = (end_hi - end_lo) / (_GEOM_POINTS - 1)
    lo_on, lo_end = on_lo, end_lo
    for _ in range(_GEOM_ROUNDS + 1):
        for a in range(_GEOM_POINTS):
            t_on = lo_on + a * step_on
            for b in range(_GEOM_POINTS):
                t_end = max(lo_end + b * step_end, t_on)
                ramp = t_end - t_on
                if ramp < 0.5 * dt:
                    ramp = 0.0
                rss = _ramp_ls(t_first[:m], cnt[:m], dt, y, n_before, t_on, ramp, ls)
                if rss < best:
                    best = rss
                    best_on = t_on
                    best_end = t_end
        # The next grid spans 4 steps about the best point: onset and end trade off along a
        # diagonal valley, whose bottom may lie beyond the neighbouring grid points.
        lo_on = best_on - 4.0 * step_on
        lo_end = best_end - 4.0 * step_end
        step_on *= 8.0 / (_GEOM_POINTS - 1)
        step_end *= 8.0 / (_GEOM_POINTS - 1)
    ramp = best_end - best_on
    ramp_fit = ramp
    out[3] = 0.0
    out[4] = 0.0
    # A bin's mean tells only the area of a ramp inside it, not its duration: a ramp shorter
    # than the bin around its midpoint is taken as the sudden step at that midpoint, and one
    # shorter than a sample interval as the sudden step midway between the two samples it
    # fell between; out[3] is then the bin's span and the caller tries the alternatives.
    mid = best_on + 0.5 * ramp
    j = 0
    while j < n - 1 and t_first[j] + cnt[j] * dt <= mid:
        j += 1
    span = cnt[j] * dt
    if ramp < span or ramp < dt:
        best_on += 0.5 * ramp
        if ramp < dt:
            best_on = t_first[0] + (math.ceil((best_on - t_first[0]) / dt) - 0.5) * dt
        ramp = 0.0
        out[3] = span
        out[4] = 1.0 if ramp_fit < dt else 0.0
    rss = _ramp_ls(t_first[:m], cnt[:m], dt, y, n_before, best_on, ramp, ls)
    delta = ls[1]
    out[0] = best_on
    out[1] = ramp
    out[2] = delta
    out[5] = 0.0
    out[6] = 0.0
    if ramp > 0.0 and m > 4:
        # The onset's standard error: the inverse of the Fisher information of (onset, end,
        # d0, delta) in the bins' means and the mean before, the displacement's per-sample
        # variance from the fit; and how far the end moves with the onset (they trade off).
        noise_var = max(rss, 0.0) / (m - 3)
        eps = 0.1 * dt
        fisher = np.zeros((4, 4))
        fisher[2, 2] = n_before
        grad = np.empty(4)
        for i in range(m):
            on_up = _ramp_avg(t_first[i], cnt[i], dt, best_on + eps, ramp - eps)
            on_down = _ramp_avg(t_first[i], cnt[i], dt, best_on - eps, ramp + eps)
            end_up = _ramp_avg(t_first[i], cnt[i], dt, best_on, ramp + eps)
            end_down = _ramp_avg(t_first[i], cnt[i], dt, best_on, ramp - eps)
            grad[0] = delta * (on_up - on_down) / (2.0 * eps)
            grad[1] = delta * (end_up - end_down) / (2.0 * eps)
            grad[2] = 1.0
            grad[3] = _ramp_avg(t_first[i], cnt[i], dt, best_on, ramp)
            for a in range(4):
                for b in range(4):
                    fisher[a, b] += cnt[i] * grad[a] * grad[b]
        col = np.zeros(4)
        e_on = np.array([1.0, 0.0, 0.0, 0.0])
        if noise_var > 0.0 and _solve3(fisher, e_on, col) and col[0] > 0:
            out[5] = math.sqrt(noise_var * col[0])
            out[6] = col[1] / col[0]
    return True


@njit(cache=True)
def _step_fit(  # noqa: PLR0915 - one straight pass: bins, geometry, fit, uncertainty
    fs: np.ndarray,
    wb: np.ndarray,
    n_bins: int,
    min_span_s: float,
    log_tau_fast: np.ndarray,
    log_tau_slow: np.ndarray,
    min_ratio: float,
    refine_rounds: int,
    tau_fast_held_s: float,
    log_tau_fast_plausible: np.ndarray,
    out: np.ndarray,
) -> None:
    """Fit the window held in the bins `wb`; results at the R_* offsets.

    The step's geometry comes from the displacement (`_geometry`; the event's time and size
    when it does not show the step; for a step shorter than its bin, the alternative the
    force fits best). The force after the onset, less the force before, is fitted with
    A_inf u + A_f r_f + A_s r_s, the bin means of the ramp and of each relaxation term's ramp
    response (`_ramp_avg`, `_relax_avg`): amplitudes by least squares, time constants by
    `_tau_search`, with a prior on ln tau_fast about tau_fast_held_s whose +/- 2 standard
    deviations are the plausible range. When the data alone do not bound tau_fast (the grid
    points within 2 standard errors reach an end of the grid) the flag GEOM_TAU_FAST_HELD is
    set. The spread of A_inf + A_f + A_s over the tau_fast within 2 standard errors of the
    estimate enters its variance beside the fit's own.
    """
    for i in range(STEP_RESULT_LEN):
        out[i] = np.nan
    f0 = fs[SF_F_BEFORE]
    out[R_F_BEFORE] = f0
    out[R_N_BINS] = 0.0
    out[R_STATUS] = FIT_NO_DATA
    out[R_FLAGS] = 0.0
    dt = fs[SF_DT_S]
    delta_event = fs[SF_DELTA_MM]
    # The bins' samples: count, first sample time (they are dt apart), force and displacement.
    cnt_all = np.empty(n_bins, dtype=np.int64)
    first_all = np.empty(n_bins)
    f_all = np.empty(n_bins)  # trimmed means: one spike per bin does not count ...
    f_plain = np.empty(n_bins)  # ... but a bin the ramp crosses keeps both of its sides
    d_all = np.empty(n_bins)
    used = 0
    for b in range(n_bins):
        at = BIN_LEN * b
        count = wb[at + B_COUNT]
        if count == 0.0:
            continue
        s, c = _trimmed(wb[at + B_SUM_F], count, wb[at + B_MIN_F], wb[at + B_MAX_F])
        cnt_all[used] = np.int64(count)
        mean_t = wb[at + B_SUM_T] / count
        if b < LIN_N:  # a linear bin's times are from its own start
            mean_t += fs[SF_LIN_ORIGIN_S] + b * PRE_BIN_NS * 1e-9
        first_all[used] = mean_t - 0.5 * (count - 1.0) * dt
        f_all[used] = s / c
        f_plain[used] = wb[at + B_SUM_F] / count
        d_all[used] = wb[at + B_SUM_D] / count
        used += 1
    if used == 0 or not math.isfinite(dt):
        out[R_T_ON] = 0.0
        out[R_RAMP] = 0.0
        out[R_DELTA] = delta_event
        out[R_FLAGS] = GEOM_ONSET_UNCERTAIN
        return
    geo = np.zeros(7)
    flags = 0
    if not _geometry(
        first_all[:used], cnt_all[:used], d_all[:used], dt, fs[SF_D_BEFORE], fs[SF_N_BEFORE],
        delta_event, geo,
    ):  # fmt: skip
        geo[0] = 0.0
        geo[1] = 0.0
        geo[2] = delta_event
        flags |= GEOM_ONSET_UNCERTAIN
    elif first_all[0] >= geo[0]:
        flags |= GEOM_ONSET_UNCERTAIN  # no sample before the onset: it may lie earlier
    t_on, ramp, span = geo[0], geo[1], geo[3]
    # An unresolved ramp (span > 0) lies somewhere in [t_on - span / 2, t_on + span / 2].
    earliest = t_on - 0.5 * span
    latest = t_on + ramp + 0.5 * span
    # Bins with a sample at or after the earliest onset take part in the fit.
    lo = 0
    while lo < used and first_all[lo] + (cnt_all[lo] - 1) * dt < earliest:
        lo += 1
    m = used - lo
    out[R_N_BINS] = m
    out[R_T_ON] = t_on
    out[R_RAMP] = ramp
    out[R_DELTA] = geo[2]
    out[R_FLAGS] = flags
    if m == 0:
        return
    last = used - 1
    out[R_SPAN] = first_all[last] + (cnt_all[last] - 1) * dt - latest
    if m < MIN_FIT_BINS or not math.isfinite(f0):
        return
    t_first = first_all[lo:used].copy()
    cnt = cnt_all[lo:used].copy()
    w = np.empty(m)
    y = np.empty(m)
    u = np.empty(m)
    for i in range(m):
        w[i] = cnt[i]
        t_last = t_first[i] + (cnt[i] - 1) * dt
        crossed = t_first[i] <= latest + dt and t_last >= earliest - dt
        y[i] = (f_plain[lo + i] if crossed else f_all[lo + i]) - f0
    n_f = log_tau_fast.shape[0]
    n_s = log_tau_slow.shape[0]
    cols_f = np.empty((n_f, m))
    cols_s = np.empty((n_s, m))
    coef = np.zeros(3)
    bf = np.empty(m)
    bs = np.empty(m)
    best = np.empty(3)
    prof_rss = np.empty(n_f)
    prof_sum = np.empty(n_f)
    # The force tells the ramp's duration or the onset within its sample interval where the
    # displacement could not (span > 0): of _SPAN_RAMPS alternatives (`_alternative`), the
    # one whose fit leaves the least residual.
    mid = t_on + 0.5 * ramp
    n_alt = _SPAN_RAMPS if span > 0.0 else 1
    best_rss = np.inf
    for c in range(n_alt):
        alt_on, r = _alternative(c, mid, ramp, span, geo[4] != 0.0, dt)
        fit = _tau_search(
            t_first, cnt, dt, alt_on, r, y, w, log_tau_fast, log_tau_slow, min_ratio,
            refine_rounds, u, cols_f, cols_s, bf, bs, coef, best, prof_rss, prof_sum, 0.0, 0.0,
        )  # fmt: skip
        if fit[0] < best_rss:
            best_rss = fit[0]
            t_on, ramp = alt_on, r
    if n_alt > 1:  # the profile of the chosen one
        fit = _tau_search(
            t_first, cnt, dt, t_on, ramp, y, w, log_tau_fast, log_tau_slow, min_ratio,
            refine_rounds, u, cols_f, cols_s, bf, bs, coef, best, prof_rss, prof_sum, 0.0, 0.0,
        )  # fmt: skip
    out[R_T_ON] = t_on
    out[R_RAMP] = ramp
    # Five parameters are fitted (three amplitudes, two taus); at least 6 bins are, so m > 5.
    noise_var = best_rss / (m - 5)
    # What the data alone say of tau_fast: when the grid points within 2 standard errors of
    # the best reach an end of the grid, they do not bound it.
    i_lo = n_f
    i_hi = -1
    for i in range(n_f):
        if prof_rss[i] - best_rss <= _CHI2_2SE * noise_var:
            i_lo = min(i_lo, i)
            i_hi = max(i_hi, i)
    if i_lo == 0 or i_hi == n_f - 1:
        flags |= GEOM_TAU_FAST_HELD
    # The estimate adds what is known of tau_fast beforehand: ln tau_fast normal about
    # ln tau_fast_held_s with the plausible range as +/- 2 standard deviations. Where the data
    # bound tau_fast this moves nothing; where they do not, it holds tau_fast near the
    # published value and the spread below spans the plausible range.
    prior_mu = math.log(tau_fast_held_s)
    prior_sd = 0.25 * (log_tau_fast_plausible[1] - log_tau_fast_plausible[0])
    prior_weight = noise_var / (prior_sd * prior_sd)
    fit = _tau_search(
        t_first, cnt, dt, t_on, ramp, y, w, log_tau_fast, log_tau_slow, min_ratio,
        refine_rounds, u, cols_f, cols_s, bf, bs, coef, best, prof_rss, prof_sum, prior_mu,
        prior_weight,
    )  # fmt: skip
    best_obj, best_lf, best_ls = fit
    # The grid points within 2 standard errors of the estimate: their A_inf + A_f + A_s span
    # the sum's uncertainty from the time constants; a fine scan outwards from the estimate
    # resolves an interval narrower than the grid's spacing.
    lo_sum = np.inf
    hi_sum = -np.inf
    for i in range(n_f):
        if prof_rss[i] - best_obj <= _CHI2_2SE * noise_var:
            lo_sum = min(lo_sum, prof_sum[i])
            hi_sum = max(hi_sum, prof_sum[i])
    fine = (log_tau_fast[-1] - log_tau_fast[0]) / max(n_f - 1, 1) / 8.0
    for side in (-1.0, 1.0):
        for k in range(1, _FINE_STEPS + 1):
            lf = best_lf + side * k * fine
            if lf < log_tau_fast[0] or lf > log_tau_fast[-1]:
                break
            _relax_cols(t_first, cnt, dt, t_on, ramp, math.exp(lf), bf)
            _best_slow(
                u, bf, y, w, lf, log_tau_slow, cols_s, min_ratio, refine_rounds, t_first, cnt,
                dt, t_on, ramp, coef, bs, best,
            )  # fmt: skip
            if best[0] + prior_weight * (lf - prior_mu) ** 2 - best_obj > _CHI2_2SE * noise_var:
                break
            lo_sum = min(lo_sum, best[2])
            hi_sum = max(hi_sum, best[2])
    for i in range(m):
        u[i] = _ramp_avg(t_first[i], cnt[i], dt, t_on, ramp)
    at_bound = (
        best_lf <= log_tau_fast[0] + 1e-9
        or best_lf >= log_tau_fast[-1] - 1e-9
        or best_ls <= log_tau_slow[0] + 1e-9
        or best_ls >= log_tau_slow[-1] - 1e-9
    )
    out[R_FLAGS] = flags
    tau_f = math.exp(best_lf)
    tau_s = math.exp(best_ls)
    _relax_cols(t_first, cnt, dt, t_on, ramp, tau_f, bf)
    _relax_cols(t_first, cnt, dt, t_on, ramp, tau_s, bs)
    rss = _amp_fit(u, bf, bs, y, w, coef)
    a_inf, a_f, a_s = coef[0], coef[1], coef[2]
    total = a_inf + a_f + a_s
    out[R_TAU_FAST] = tau_f
    out[R_TAU_SLOW] = tau_s
    out[R_A_FAST] = a_f
    out[R_A_SLOW] = a_s
    out[R_F_SETTLED] = f0 + a_inf
    out[R_F_INST] = f0 + total
    out[R_F_PEAK] = out[R_F_INST]
    if ramp > 0.0:
        out[R_F_PEAK] = (
            f0 + a_inf + a_f * _relax_at(ramp, ramp, tau_f) + a_s * _relax_at(ramp, ramp, tau_s)
        )
    w_sum = 0.0
    y_mean = 0.0
    for i in range(m):
        w_sum += w[i]
        y_mean += w[i] * y[i]
    y_mean /= w_sum
    tss = 0.0
    for i in range(m):
        tss += w[i] * (y[i] - y_mean) ** 2
    out[R_RMSE] = math.sqrt(rss / w_sum)
    out[R_R2] = 1.0 - rss / tss if tss > 0.0 else np.nan
    noise_var = rss / (m - 5)
    out[R_NOISE_VAR] = noise_var
    # The points within 2 SE reach about 2 standard deviations from the estimate; the far
    # side counts, as the sum is far from linear in tau_fast (A_f ~ 1 / tau_fast on a long
    # ramp).
    spread = max(hi_sum - total, total - lo_sum, 0.0) / 2.0
    var = _amp_var(u, bf, bs, w, noise_var, np.ones(3)) + spread * spread
    out[R_A_INF_VAR] = _amp_var(u, bf, bs, w, noise_var, np.array([1.0, 0.0, 0.0]))
    if span > 0.0:
        # The other durations the force cannot exclude (within 2 SE at these time constants):
        # the farthest of their sums is the half-width of a uniform spread.
        far = 0.0
        for c in range(_SPAN_RAMPS):
            alt_on, r = _alternative(c, mid, ramp, span, geo[4] != 0.0, dt)
            alt_rss = _geometry_rss(
                t_first, cnt, dt, alt_on, r, tau_f, tau_s, y, w, u, bf, bs, coef
            )
            if alt_rss - rss <= _CHI2_2SE * noise_var:
                far = max(far, abs(coef[0] + coef[1] + coef[2] - total))
        var += far * far / 3.0
    if geo[5] > 0.0 and ramp > 0.0:
        # The onset is known from the displacement only to geo[5]: the sum refitted (time
        # constants too) with the onset 2 standard errors either way and the end moved with
        # it as they covary; the farther one is 2 standard deviations away.
        far = 0.0
        for side in (-2.0, 2.0):
            alt_on = t_on + side * geo[5]
            alt_ramp = max(ramp + side * geo[5] * (geo[6] - 1.0), 0.0)
            fit = _tau_search(
                t_first, cnt, dt, alt_on, alt_ramp, y, w, log_tau_fast, log_tau_slow,
                min_ratio, refine_rounds, u, cols_f, cols_s, bf, bs, coef, best, prof_rss,
                prof_sum, prior_mu, prior_weight,
            )  # fmt: skip
            _geometry_rss(
                t_first, cnt, dt, alt_on, alt_ramp, math.exp(fit[1]), math.exp(fit[2]),
                y, w, u, bf, bs, coef,
            )  # fmt: skip
            far = max(far, abs(coef[0] + coef[1] + coef[2] - total))
        var += far * far / 4.0
    out[R_SUM_VAR] = var
    if at_bound:
        out[R_STATUS] = FIT_TAU_AT_BOUND
    elif out[R_SPAN] < min_span_s:
        out[R_STATUS] = FIT_SHORT
    else:
        out[R_STATUS] = FIT_OK


# ---------------------------------------------------------------------------------------------
# Continuous tracking: recursive least squares on block means of a first-order viscoelastic
# (standard linear solid) model F[n] = phi F[n-1] + b dx[n] + g (x[n-1] - x_ref) + c.
RLS_P = 4  # parameters: phi, b, g, c
RF_THETA = 0
RF_P = RF_THETA + RLS_P  # RLS_P x RLS_P covariance, row-major
RF_BLK_F = RF_P + RLS_P * RLS_P  # sum of force in the open block (N)
RF_BLK_X = RF_BLK_F + 1  # sum of displacement in the open block (mm)
RF_BLK_N = RF_BLK_X + 1  # samples in the open block
RF_PREV_F = RF_BLK_N + 1  # previous block mean force (N)
RF_PREV_X = RF_PREV_F + 1  # previous block mean displacement (mm)
RF_X_REF = RF_PREV_X + 1  # displacement origin of the model (mm)
RF_X_ANCHOR = RF_X_REF + 1  # displacement at the last excitation (mm)
RF_SIGMA2 = RF_X_ANCHOR + 1  # running variance of the one-block-ahead prediction error (N^2)
RLS_FLOAT_LEN = RF_SIGMA2 + 1

RI_BLK_KEY = 0  # block number of the open block (t_ns // block_ns); -1 before the first
RI_PREV_KEY = 1  # block number of the previous block; -1 if none
RI_HOLD_UNTIL = 2  # ns: updates are allowed until this time after an excitation
RI_N_UPDATES = 3
RI_N_BLOCKS = 4
RI_T_FIRST = 5  # ns of the first finite sample; -1 before it
RI_T_LAST = 6
RLS_INT_LEN = RI_T_LAST + 1


@njit(cache=True)
def _rls_reset(rf: np.ndarray, ri: np.ndarray, p0: float) -> None:
    """Start a tracker from no knowledge: theta = 0, P = p0 * I."""
    rf[:] = 0.0
    for i in range(RLS_P):
        rf[RF_P + i * RLS_P + i] = p0
    rf[RF_SIGMA2] = np.nan
    rf[RF_X_REF] = np.nan
    ri[:] = -1
    ri[RI_N_UPDATES] = 0
    ri[RI_N_BLOCKS] = 0


@njit(cache=True)
def _rls_block(
    rf: np.ndarray,
    ri: np.ndarray,
    key: int,
    block_ns: int,
    lam: float,
    excite_mm: float,
    hold_ns: int,
    sigma_alpha: float,
) -> None:
    """Close the open block: gate on excitation and, if allowed, run one RLS step."""
    f = rf[RF_BLK_F] / rf[RF_BLK_N]
    x = rf[RF_BLK_X] / rf[RF_BLK_N]
    ri[RI_N_BLOCKS] += 1
    t_block = key * block_ns
    if math.isnan(rf[RF_X_REF]):
        rf[RF_X_REF] = x
        rf[RF_X_ANCHOR] = x
    if abs(x - rf[RF_X_ANCHOR]) > excite_mm:
        rf[RF_X_ANCHOR] = x
        ri[RI_HOLD_UNTIL] = t_block + hold_ns
    # Only consecutive blocks form a regression row: a gap breaks the recursion F[n-1] -> F[n].
    if ri[RI_PREV_KEY] == key - 1 and t_block <= ri[RI_HOLD_UNTIL]:
        z = np.empty(RLS_P)
        z[0] = rf[RF_PREV_F]
        z[1] = x - rf[RF_PREV_X]
        z[2] = rf[RF_PREV_X] - rf[RF_X_REF]
        z[3] = 1.0
        pz = np.zeros(RLS_P)
        for i in range(RLS_P):
            for j in range(RLS_P):
                pz[i] += rf[RF_P + i * RLS_P + j] * z[j]
        denom = lam
        err = f
        for i in range(RLS_P):
            denom += z[i] * pz[i]
            err -= z[i] * rf[RF_THETA + i]
        for i in range(RLS_P):
            rf[RF_THETA + i] += pz[i] * err / denom
        for i in range(RLS_P):
            for j in range(RLS_P):
                idx = RF_P + i * RLS_P + j
                rf[idx] = (rf[idx] - pz[i] * pz[j] / denom) / lam
        # The prediction error is scaled back to what a known-theta error would be.
        e2 = err * err * lam / denom
        if math.isnan(rf[RF_SIGMA2]):
            rf[RF_SIGMA2] = e2
        else:
            rf[RF_SIGMA2] += sigma_alpha * (e2 - rf[RF_SIGMA2])
        ri[RI_N_UPDATES] += 1
    rf[RF_PREV_F] = f
    rf[RF_PREV_X] = x
    ri[RI_PREV_KEY] = key


@njit(cache=True)
def _rls_push(
    rf: np.ndarray,
    ri: np.ndarray,
    force_n: np.ndarray,
    disp_mm: np.ndarray,
    t0_ns: int,
    dt_ns: float,
    block_ns: int,
    lam: float,
    excite_mm: float,
    hold_ns: int,
    sigma_alpha: float,
) -> None:
    """Average samples into blocks of block_ns and run an RLS step as each block closes."""
    for k in range(force_n.shape[0]):
        f = force_n[k]
        x = disp_mm[k]
        if not (math.isfinite(f) and math.isfinite(x)):
            continue
        t = t0_ns + np.int64(round(k * dt_ns))
        if ri[RI_T_FIRST] < 0:
            ri[RI_T_FIRST] = t
        ri[RI_T_LAST] = t
        key = t // block_ns
        if key != ri[RI_BLK_KEY]:
            if ri[RI_BLK_KEY] >= 0 and rf[RF_BLK_N] > 0.0:
                _rls_block(rf, ri, ri[RI_BLK_KEY], block_ns, lam, excite_mm, hold_ns, sigma_alpha)
            ri[RI_BLK_KEY] = key
            rf[RF_BLK_F] = 0.0
            rf[RF_BLK_X] = 0.0
            rf[RF_BLK_N] = 0.0
        rf[RF_BLK_F] += f
        rf[RF_BLK_X] += x
        rf[RF_BLK_N] += 1.0


# ---------------------------------------------------------------------------------------------
# Load share: running co-moments (Welford) of reference load and device force.
LF_N = 0
LF_MEAN_REF = 1
LF_MEAN_F = 2
LF_C_RR = 3
LF_C_RF = 4
LF_C_FF = 5
LF_MIN_REF = 6
LF_MAX_REF = 7
LS_FLOAT_LEN = 8

LI_T_FIRST = 0  # ns; -1 before the first sample
LI_T_LAST = 1
LS_INT_LEN = 2


@njit(cache=True)
def _loadshare_push(
    lf: np.ndarray,
    li: np.ndarray,
    force_n: np.ndarray,
    ref_load_n: np.ndarray,
    t0_ns: int,
    dt_ns: float,
    t_begin_ns: int,
    t_end_ns: int,
) -> None:
    """Add the finite sample pairs with t_begin_ns <= t < t_end_ns to the co-moments."""
    for k in range(force_n.shape[0]):
        f = force_n[k]
        r = ref_load_n[k]
        if not (math.isfinite(f) and math.isfinite(r)):
            continue
        t = t0_ns + np.int64(round(k * dt_ns))
        if t < t_begin_ns or t >= t_end_ns:
            continue
        if li[LI_T_FIRST] < 0:
            li[LI_T_FIRST] = t
            lf[LF_MIN_REF] = r
            lf[LF_MAX_REF] = r
        li[LI_T_LAST] = t
        lf[LF_N] += 1.0
        n = lf[LF_N]
        dr = r - lf[LF_MEAN_REF]
        df = f - lf[LF_MEAN_F]
        lf[LF_MEAN_REF] += dr / n
        lf[LF_MEAN_F] += df / n
        lf[LF_C_RR] += dr * (r - lf[LF_MEAN_REF])
        lf[LF_C_RF] += dr * (f - lf[LF_MEAN_F])
        lf[LF_C_FF] += df * (f - lf[LF_MEAN_F])
        lf[LF_MIN_REF] = min(lf[LF_MIN_REF], r)
        lf[LF_MAX_REF] = max(lf[LF_MAX_REF], r)


# ---------------------------------------------------------------------------------------------
# Signal quality: cumulative counters and a running noise level, one sample of look-behind.
QF_PREV1 = 0  # last finite sample
QF_PREV2 = 1  # the one before it
QF_NOISE_VAR = 2  # running mean of the squared first difference (N^2); nan until the first
QF_MAX_ABS = 3  # largest |sample| seen
Q_FLOAT_LEN = 4

QI_N_TOTAL = 0
QI_N_NONFINITE = 1
QI_N_SATURATED = 2
QI_N_SPIKES = 3
QI_RUN = 4  # current flat run, in samples (1 = a single sample, no repeat)
QI_MAX_RUN = 5  # longest flat run seen
QI_N_VALID = 6  # finite samples seen
QI_N_FLAT = 7  # samples that extend a flat run past flat_samples
Q_INT_LEN = 8


@njit(cache=True)
def _quality_push(
    qf: np.ndarray,
    qi: np.ndarray,
    x: np.ndarray,
    full_scale: float,
    flat_eps: float,
    flat_samples: int,
    spike_k: float,
    alpha: float,
) -> None:
    """Update noise, flatline, saturation and spike counters with a run of samples."""
    for k in range(x.shape[0]):
        v = x[k]
        qi[QI_N_TOTAL] += 1
        if not math.isfinite(v):
            qi[QI_N_NONFINITE] += 1
            continue
        if abs(v) >= full_scale:
            qi[QI_N_SATURATED] += 1
        qf[QF_MAX_ABS] = max(qf[QF_MAX_ABS], abs(v))
        n_valid = qi[QI_N_VALID]
        qi[QI_N_VALID] += 1
        if n_valid == 0:
            qi[QI_RUN] = 1
            qi[QI_MAX_RUN] = max(qi[QI_MAX_RUN], 1)
            qf[QF_PREV1] = v
            continue
        d = v - qf[QF_PREV1]
        if abs(d) <= flat_eps:
            qi[QI_RUN] += 1
        else:
            qi[QI_RUN] = 1
        qi[QI_MAX_RUN] = max(qi[QI_MAX_RUN], qi[QI_RUN])
        if qi[QI_RUN] > flat_samples:
            qi[QI_N_FLAT] += 1
        sigma = math.sqrt(qf[QF_NOISE_VAR] / 2.0) if math.isfinite(qf[QF_NOISE_VAR]) else np.nan
        # A spike is one sample far from both neighbours, on the same side, while the neighbours
        # agree: it is decided one sample late, when its right neighbour arrives. Spikes are
        # only judged once the noise level rests on about 1/alpha differences.
        n_diffs = n_valid - 1
        if n_diffs * alpha >= 1.0 and sigma > 0.0:
            lim = spike_k * sigma
            d1 = qf[QF_PREV1] - qf[QF_PREV2]
            d2 = qf[QF_PREV1] - v
            if abs(d1) > lim and abs(d2) > lim and d1 * d2 > 0.0 and abs(v - qf[QF_PREV2]) < lim:
                qi[QI_N_SPIKES] += 1
        # Clipping the difference keeps spikes and steps from inflating the noise estimate; the
        # first differences are averaged plainly (weight 1/count) until alpha takes over.
        if math.isfinite(qf[QF_NOISE_VAR]):
            lim2 = 16.0 * qf[QF_NOISE_VAR]
            d2sq = min(d * d, lim2) if lim2 > 0.0 else d * d
            qf[QF_NOISE_VAR] += max(alpha, 1.0 / (n_diffs + 1)) * (d2sq - qf[QF_NOISE_VAR])
        else:
            qf[QF_NOISE_VAR] = d * d
        qf[QF_PREV2] = qf[QF_PREV1]
        qf[QF_PREV1] = v


# ---------------------------------------------------------------------------------------------
# The complete estimator's per-device bookkeeping (dsp.estimator owns the rows) and the fused
# pass over many frames: every tracker's push for each frame that closes nothing.
EI_DAY = 0  # UTC day number the device is in; -1 before its first item
EI_T_FIRST = 1  # first input time of that day (ns); -1 if none yet
EI_T_LAST = 2  # last input time of that day (ns); -1 if none yet
EI_LOAD_TEST = 3  # 1 while a weight-bearing test is open
EI_Q_PENDING = 4  # bit 0: a force quality stretch is open; bit 1: a displacement one
EST_INT_LEN = 5

NS_PER_DAY = 86_400 * 1_000_000_000

# Scalars of the fused pass, packed once per estimator so a call unboxes two small arrays.
P_C_S = 0
P_H = 1
P_MAX_GAP_NS = 2
P_LAM = 3
P_EXCITE_MM = 4
P_SIGMA_ALPHA = 5
P_FQ = 6  # full_scale, flat_eps, spike_k, noise_alpha of the force channel
P_DQ = 10  # the same for the displacement channel
FLEET_FLOAT_LEN = 14
PI_PRE_BIN_NS = 0
PI_N_BINS = 1
PI_WINDOW_NS = 2
PI_BLOCK_NS = 3
PI_HOLD_NS = 4
PI_FQ_FLAT = 5
PI_DQ_FLAT = 6
FLEET_INT_LEN = 7

STOP_NONE = -1  # every frame went through
STOP_BEFORE = 0  # the frame was not touched: it may close a day or a step window
STOP_QUALITY = 1  # the frame went through; its quality counters need the caller


@njit(cache=True)
def _quality_step(
    qf: np.ndarray,
    qi: np.ndarray,
    x: np.ndarray,
    fp: np.ndarray,
    at: int,
    flat_samples: int,
    delta: np.ndarray,
) -> bool:
    """Push a channel's samples; write the counter increments to delta; True if any moved or
    the channel ends in a flatline."""
    b_flat = qi[QI_N_FLAT]
    b_sat = qi[QI_N_SATURATED]
    b_spk = qi[QI_N_SPIKES]
    b_nf = qi[QI_N_NONFINITE]
    _quality_push(qf, qi, x, fp[at], fp[at + 1], flat_samples, fp[at + 2], fp[at + 3])
    delta[0] = qi[QI_N_FLAT] - b_flat
    delta[1] = qi[QI_N_SATURATED] - b_sat
    delta[2] = qi[QI_N_SPIKES] - b_spk
    delta[3] = qi[QI_N_NONFINITE] - b_nf
    moved = delta[0] != 0 or delta[1] != 0 or delta[2] != 0 or delta[3] != 0
    return bool(moved or qi[QI_RUN] > flat_samples)


@njit(cache=True)
def _fleet_frames(
    start: int,
    rows: np.ndarray,
    offsets: np.ndarray,
    force_n: np.ndarray,
    disp_mm: np.ndarray,
    ref_load_n: np.ndarray,
    has_ref: bool,
    t0_ns: np.ndarray,
    dt_ns: np.ndarray,
    ei: np.ndarray,
    step_fs: np.ndarray,
    step_si: np.ndarray,
    step_bins: np.ndarray,
    rls_f: np.ndarray,
    rls_i: np.ndarray,
    share_f: np.ndarray,
    share_i: np.ndarray,
    share_begin: np.ndarray,
    share_end: np.ndarray,
    kdev_f: np.ndarray,
    kdev_i: np.ndarray,
    kdev_begin: np.ndarray,
    kdev_end: np.ndarray,
    fq_f: np.ndarray,
    fq_i: np.ndarray,
    dq_f: np.ndarray,
    dq_i: np.ndarray,
    fp: np.ndarray,
    ip: np.ndarray,
    q_delta: np.ndarray,
) -> tuple[int, int]:
    """Run frames start.. of many devices through every tracker, in order, until one needs
    Python: (index of that frame, STOP_BEFORE or STOP_QUALITY), or (n_frames, STOP_NONE).

    Frame j is samples offsets[j]:offsets[j + 1] of device row rows[j]. A frame stops the pass
    before it is touched when it is empty, opens or may close a day, has a step event pending,
    or may close a step window (conservatively: the exact rules stay in Python). It stops the
    pass after it went through when a quality counter moved or a quality stretch is open;
    q_delta then holds the counter increments (force row 0, displacement row 1).
    """
    n_frames = rows.shape[0]
    window_ns = ip[PI_WINDOW_NS]
    for j in range(start, n_frames):
        i = rows[j]
        a = offsets[j]
        b = offsets[j + 1]
        n = b - a
        t0 = t0_ns[j]
        dt = dt_ns[j]
        day = t0 // NS_PER_DAY
        if n == 0 or ei[i, EI_DAY] < 0 or day > ei[i, EI_DAY] or step_si[i, SI_N_PEND] > 0:
            return j, STOP_BEFORE
        t_end = t0 + np.int64(round((n - 1) * dt))
        mode = step_si[i, SI_MODE]
        if mode == MODE_COMPLETE:
            return j, STOP_BEFORE
        if mode == MODE_OPEN:
            t_last = step_si[i, SI_T_LAST]
            # One ns of margin on both rules: near the edge Python decides exactly.
            if t_last >= 0 and t0 - t_last >= fp[P_MAX_GAP_NS] - 1.0:
                return j, STOP_BEFORE
            if t_end - step_si[i, SI_T_STEP] >= window_ns - 1:
                return j, STOP_BEFORE
        if day == ei[i, EI_DAY]:
            if ei[i, EI_T_FIRST] < 0:
                ei[i, EI_T_FIRST] = t0
            ei[i, EI_T_LAST] = max(ei[i, EI_T_LAST], t_end)
        force = force_n[a:b]
        disp = disp_mm[a:b]
        _step_push(
            step_fs[i],
            step_si[i],
            step_bins,
            force,
            disp,
            t0,
            dt,
            ip[PI_PRE_BIN_NS],
            fp[P_C_S],
            fp[P_H],
            ip[PI_N_BINS],
            window_ns,
        )
        _rls_push(
            rls_f[i],
            rls_i[i],
            force,
            disp,
            t0,
            dt,
            ip[PI_BLOCK_NS],
            fp[P_LAM],
            fp[P_EXCITE_MM],
            ip[PI_HOLD_NS],
            fp[P_SIGMA_ALPHA],
        )
        if ei[i, EI_LOAD_TEST] != 0:
            if has_ref:
                _loadshare_push(
                    share_f[i], share_i[i], force, ref_load_n[a:b], t0, dt,
                    share_begin[i], share_end[i],
                )  # fmt: skip
            _loadshare_push(kdev_f[i], kdev_i[i], force, disp, t0, dt, kdev_begin[i], kdev_end[i])
        bad_f = _quality_step(fq_f[i], fq_i[i], force, fp, P_FQ, ip[PI_FQ_FLAT], q_delta[0])
        bad_d = _quality_step(dq_f[i], dq_i[i], disp, fp, P_DQ, ip[PI_DQ_FLAT], q_delta[1])
        if bad_f or bad_d or ei[i, EI_Q_PENDING] != 0:
            return j, STOP_QUALITY
    return n_frames, STOP_NONE
