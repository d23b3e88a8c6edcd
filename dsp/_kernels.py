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
# holding sum, count, min and max so a trimmed mean drops one spike per bin.
PRE_N = 16
# Relaxation curve after the step: at most STEP_MAX_BINS bins, narrow just after the step and
# wider later (edges c * (exp(b * h) - 1) seconds), each with sum, time sum, count, min and max.
# The bins live in a separate row of a shared pool ("window slot"), held only while a window is
# open: a device spends ~40 min a day in windows (4 steps x 10 min), so most devices need none.
STEP_MAX_BINS = 64
STEP_BINS_LEN = 5 * STEP_MAX_BINS  # one window slot: STEP_MAX_BINS rows of
# (sum_n, sum_t_s, count, min_n, max_n)

SF_F_BEFORE = 0  # force before the step (N), set when the step opens
SF_DELTA_MM = 1  # step displacement (mm)
SF_PRE = 2  # PRE_N rows of (sum_n, count, min_n, max_n)
SF_PEND_DELTA = SF_PRE + 4 * PRE_N  # pending step displacements (mm)
PEND_N = 4
SF_N_BEFORE = SF_PEND_DELTA + PEND_N  # samples in the force before the step (its trimmed count)
STEP_FLOAT_LEN = SF_N_BEFORE + 1

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
STEP_INT_LEN = SI_SLOT + 1

MODE_IDLE = 0
MODE_OPEN = 1
MODE_COMPLETE = 2

# Results of _step_fit, in this order.
R_F_BEFORE = 0
R_F_PEAK = 1
R_A_INF = 2
R_A_FAST = 3
R_A_SLOW = 4
R_TAU_FAST = 5
R_TAU_SLOW = 6
R_RMSE = 7
R_R2 = 8
R_N_BINS = 9
R_T_PEAK = 10
R_SPAN = 11
R_STATUS = 12
R_NOISE_VAR = 13  # per-sample noise variance from the fit's residuals (N^2)
R_PEAK_VAR = 14  # variance of the fitted peak a_inf + a_f + a_s at the fitted taus (N^2)
STEP_RESULT_LEN = 15

FIT_OK = 0
FIT_SHORT = 1  # the relaxation was observed for less than min_span_s
FIT_TAU_AT_BOUND = 2  # a time constant sits on the edge of its search grid
FIT_NO_DATA = 3  # too few bins after the peak to fit three amplitudes and two time constants

MIN_FIT_BINS = 6


@njit(cache=True)
def _trimmed(total: float, count: float, lo: float, hi: float) -> tuple[float, float]:
    """Sum and count of a bin without its extreme samples, once it has enough to spare them."""
    if count >= 4.0:
        return total - lo - hi, count - 2.0
    return total, count


@njit(cache=True)
def _step_push(
    fs: np.ndarray,
    si: np.ndarray,
    bins: np.ndarray,
    force_n: np.ndarray,
    t0_ns: int,
    dt_ns: float,
    pre_bin_ns: int,
    c_s: float,
    h: float,
    n_bins: int,
    window_ns: int,
) -> None:
    """Add a run of samples to the pre-step ring and, while a window is open, to its bins
    (row si[SI_SLOT] of the pool `bins`)."""
    # Only an open window holds a slot; otherwise any row stands in and is never written.
    wb = bins[max(si[SI_SLOT], 0)]
    for k in range(force_n.shape[0]):
        f = force_n[k]
        if not math.isfinite(f):
            continue
        t = t0_ns + np.int64(round(k * dt_ns))
        si[SI_T_LAST] = t
        key = t // pre_bin_ns
        slot = key % PRE_N
        base = SF_PRE + 4 * slot
        if si[SI_PRE_KEY + slot] != key:
            si[SI_PRE_KEY + slot] = key
            fs[base] = 0.0
            fs[base + 1] = 0.0
            fs[base + 2] = f
            fs[base + 3] = f
        fs[base] += f
        fs[base + 1] += 1.0
        fs[base + 2] = min(fs[base + 2], f)
        fs[base + 3] = max(fs[base + 3], f)
        if si[SI_MODE] != MODE_OPEN:
            continue
        rel_ns = t - si[SI_T_STEP]
        if rel_ns < 0:
            continue
        if rel_ns >= window_ns:
            si[SI_MODE] = MODE_COMPLETE
            continue
        tau_s = rel_ns * 1e-9
        b = min(int(math.log1p(tau_s / c_s) / h), n_bins - 1)
        row = 5 * b
        if wb[row + 2] == 0.0:
            wb[row + 3] = f
            wb[row + 4] = f
        wb[row] += f
        wb[row + 1] += tau_s
        wb[row + 2] += 1.0
        wb[row + 3] = min(wb[row + 3], f)
        wb[row + 4] = max(wb[row + 4], f)
        si[SI_N_SAMPLES] += 1
        si[SI_T_WIN_LAST] = t


@njit(cache=True)
def _step_open(
    fs: np.ndarray,
    si: np.ndarray,
    wb: np.ndarray,
    t_step_ns: int,
    delta_mm: float,
    pre_bin_ns: int,
    pre_bins: int,
) -> None:
    """Open a window: take the force before the step from the ring and clear its bins `wb`
    (the window slot the caller gave the device)."""
    key_step = t_step_ns // pre_bin_ns
    total = 0.0
    count = 0.0
    for slot in range(PRE_N):
        key = si[SI_PRE_KEY + slot]
        # The bin holding the step itself is left out: part of it may already be after the step.
        if key_step - pre_bins <= key < key_step:
            base = SF_PRE + 4 * slot
            s, n = _trimmed(fs[base], fs[base + 1], fs[base + 2], fs[base + 3])
            total += s
            count += n
    fs[SF_F_BEFORE] = total / count if count > 0.0 else np.nan
    fs[SF_N_BEFORE] = count
    fs[SF_DELTA_MM] = delta_mm
    for i in range(STEP_BINS_LEN):
        wb[i] = 0.0
    si[SI_MODE] = MODE_OPEN
    si[SI_T_STEP] = t_step_ns
    si[SI_N_SAMPLES] = 0
    si[SI_T_WIN_LAST] = -1


@njit(cache=True)
def _solve3(g: np.ndarray, r: np.ndarray, x: np.ndarray) -> bool:
    """Solve the 3x3 system g x = r by elimination with partial pivoting; False if singular."""
    a = g.copy()
    b = r.copy()
    scale = max(abs(a[0, 0]), abs(a[1, 1]), abs(a[2, 2]))
    if not scale > 0.0:
        return False
    for col in range(3):
        piv = col
        for row in range(col + 1, 3):
            if abs(a[row, col]) > abs(a[piv, col]):
                piv = row
        if abs(a[piv, col]) <= 1e-13 * scale:
            return False
        if piv != col:
            for j in range(3):
                a[col, j], a[piv, j] = a[piv, j], a[col, j]
            b[col], b[piv] = b[piv], b[col]
        for row in range(col + 1, 3):
            m = a[row, col] / a[col, col]
            for j in range(col, 3):
                a[row, j] -= m * a[col, j]
            b[row] -= m * b[col]
    for row in range(2, -1, -1):
        s = b[row]
        for j in range(row + 1, 3):
            s -= a[row, j] * x[j]
        x[row] = s / a[row, row]
    return True


@njit(cache=True)
def _prony_rss(
    t_s: np.ndarray,
    y_n: np.ndarray,
    w: np.ndarray,
    tau_fast_s: float,
    tau_slow_s: float,
    coef: np.ndarray,
) -> float:
    """Weighted residual sum of squares of y = a_inf + a_f e^(-t/tau_f) + a_s e^(-t/tau_s)
    with the amplitudes solved by linear least squares (variable projection); inf if singular."""
    g = np.zeros((3, 3))
    r = np.zeros(3)
    for i in range(t_s.shape[0]):
        ef = math.exp(-t_s[i] / tau_fast_s)
        es = math.exp(-t_s[i] / tau_slow_s)
        wi = w[i]
        g[0, 0] += wi
        g[0, 1] += wi * ef
        g[0, 2] += wi * es
        g[1, 1] += wi * ef * ef
        g[1, 2] += wi * ef * es
        g[2, 2] += wi * es * es
        r[0] += wi * y_n[i]
        r[1] += wi * ef * y_n[i]
        r[2] += wi * es * y_n[i]
    g[1, 0] = g[0, 1]
    g[2, 0] = g[0, 2]
    g[2, 1] = g[1, 2]
    if not _solve3(g, r, coef):
        return np.inf
    rss = 0.0
    for i in range(t_s.shape[0]):
        e = y_n[i] - (
            coef[0]
            + coef[1] * math.exp(-t_s[i] / tau_fast_s)
            + coef[2] * math.exp(-t_s[i] / tau_slow_s)
        )
        rss += w[i] * e * e
    return rss


@njit(cache=True)
def _prony_peak_var(
    t_s: np.ndarray,
    w: np.ndarray,
    tau_fast_s: float,
    tau_slow_s: float,
    c_fast: float,
    c_slow: float,
    noise_var: float,
) -> float:
    """Variance of a_inf + c_fast a_f + c_slow a_s from the weighted least squares at fixed
    time constants: noise_var c' G^-1 c, G = sum w phi phi' (w = samples per bin, so a bin
    mean's variance is noise_var / w); NaN if G is singular."""
    g = np.zeros((3, 3))
    for i in range(t_s.shape[0]):
        ef = math.exp(-t_s[i] / tau_fast_s)
        es = math.exp(-t_s[i] / tau_slow_s)
        wi = w[i]
        g[0, 0] += wi
        g[0, 1] += wi * ef
        g[0, 2] += wi * es
        g[1, 1] += wi * ef * ef
        g[1, 2] += wi * ef * es
        g[2, 2] += wi * es * es
    g[1, 0] = g[0, 1]
    g[2, 0] = g[0, 2]
    g[2, 1] = g[1, 2]
    c = np.array([1.0, c_fast, c_slow])
    x = np.zeros(3)
    if not _solve3(g, c, x):
        return math.nan
    quad: float = c_fast * x[1] + c_slow * x[2] + x[0]
    return noise_var * quad


@njit(cache=True)
def _prony_fit(
    t_s: np.ndarray,
    y_n: np.ndarray,
    w: np.ndarray,
    log_tau_fast: np.ndarray,
    log_tau_slow: np.ndarray,
    min_ratio: float,
    refine_rounds: int,
    out: np.ndarray,
) -> None:
    """Fit the two-term Prony curve: a grid over (ln tau_f, ln tau_s), then `refine_rounds`
    finer 9x9 grids around the best point. out = [a_inf, a_f, a_s, tau_f, tau_s, rss, at_bound].
    """
    coef = np.zeros(3)
    best_rss = np.inf
    best_lf = log_tau_fast[0]
    best_ls = log_tau_slow[-1]
    log_ratio = math.log(min_ratio)
    for i in range(log_tau_fast.shape[0]):
        for j in range(log_tau_slow.shape[0]):
            if log_tau_slow[j] - log_tau_fast[i] < log_ratio:
                continue
            rss = _prony_rss(
                t_s, y_n, w, math.exp(log_tau_fast[i]), math.exp(log_tau_slow[j]), coef
            )
            if rss < best_rss:
                best_rss = rss
                best_lf = log_tau_fast[i]
                best_ls = log_tau_slow[j]
    step_f = (log_tau_fast[-1] - log_tau_fast[0]) / max(log_tau_fast.shape[0] - 1, 1)
    step_s = (log_tau_slow[-1] - log_tau_slow[0]) / max(log_tau_slow.shape[0] - 1, 1)
    for _ in range(refine_rounds):
        center_f = best_lf
        center_s = best_ls
        for i in range(-4, 5):
            lf = min(max(center_f + i * step_f / 4.0, log_tau_fast[0]), log_tau_fast[-1])
            for j in range(-4, 5):
                ls = min(max(center_s + j * step_s / 4.0, log_tau_slow[0]), log_tau_slow[-1])
                if ls - lf < log_ratio:
                    continue
                rss = _prony_rss(t_s, y_n, w, math.exp(lf), math.exp(ls), coef)
                if rss < best_rss:
                    best_rss = rss
                    best_lf = lf
                    best_ls = ls
        step_f /= 4.0
        step_s /= 4.0
    out[5] = _prony_rss(t_s, y_n, w, math.exp(best_lf), math.exp(best_ls), coef)
    out[0] = coef[0]
    out[1] = coef[1]
    out[2] = coef[2]
    out[3] = math.exp(best_lf)
    out[4] = math.exp(best_ls)
    # A time constant on the edge of its grid means the true one may lie beyond it.
    tol = 1e-9
    at_bound = (
        best_lf <= log_tau_fast[0] + tol
        or best_lf >= log_tau_fast[-1] - tol
        or best_ls <= log_tau_slow[0] + tol
        or best_ls >= log_tau_slow[-1] - tol
    )
    out[6] = 1.0 if at_bound else 0.0


@njit(cache=True)
def _step_fit(  # noqa: PLR0915 - one straight pass: bins, peak, fit, quality
    fs: np.ndarray,
    wb: np.ndarray,
    c_s: float,
    h: float,
    n_bins: int,
    peak_search_s: float,
    min_span_s: float,
    log_tau_fast: np.ndarray,
    log_tau_slow: np.ndarray,
    min_ratio: float,
    refine_rounds: int,
    out: np.ndarray,
) -> None:
    """Fit the relaxation held in the bins `wb` of a closed window; results at the R_* offsets."""
    for i in range(STEP_RESULT_LEN):
        out[i] = np.nan
    out[R_F_BEFORE] = fs[SF_F_BEFORE]
    out[R_N_BINS] = 0.0
    out[R_STATUS] = FIT_NO_DATA
    mean_n = np.empty(n_bins)
    weight = np.empty(n_bins)
    time_s = np.empty(n_bins)
    used = 0
    peak = -1
    for b in range(n_bins):
        base = 5 * b
        count = wb[base + 2]
        if count == 0.0:
            continue
        s, n = _trimmed(wb[base], count, wb[base + 3], wb[base + 4])
        mean_n[used] = s / n
        weight[used] = n
        time_s[used] = wb[base + 1] / count
        # The peak is the largest bin mean early after the step (the step may be a ramp).
        if time_s[used] <= peak_search_s and (peak < 0 or mean_n[used] > mean_n[peak]):
            peak = used
        used += 1
    if peak < 0:
        return
    # The fit's time origin is the left edge of the peak bin, where the force is highest.
    b_peak = int(math.log1p(time_s[peak] / c_s) / h)
    t_origin_s = c_s * math.expm1(b_peak * h)
    out[R_T_PEAK] = t_origin_s
    out[R_F_PEAK] = mean_n[peak]
    m = used - peak
    out[R_N_BINS] = m
    out[R_SPAN] = time_s[used - 1] - t_origin_s
    if m < MIN_FIT_BINS:
        return
    t_fit = time_s[peak:used] - t_origin_s
    y_fit = mean_n[peak:used]
    w_fit = weight[peak:used]
    res = np.empty(7)
    _prony_fit(t_fit, y_fit, w_fit, log_tau_fast, log_tau_slow, min_ratio, refine_rounds, res)
    out[R_A_INF] = res[0]
    out[R_A_FAST] = res[1]
    out[R_A_SLOW] = res[2]
    out[R_TAU_FAST] = res[3]
    out[R_TAU_SLOW] = res[4]
    out[R_F_PEAK] = res[0] + res[1] + res[2]
    w_sum = 0.0
    y_mean = 0.0
    for i in range(m):
        w_sum += w_fit[i]
        y_mean += w_fit[i] * y_fit[i]
    y_mean /= w_sum
    tss = 0.0
    for i in range(m):
        tss += w_fit[i] * (y_fit[i] - y_mean) ** 2
    out[R_RMSE] = math.sqrt(res[5] / w_sum)
    out[R_R2] = 1.0 - res[5] / tss if tss > 0.0 else np.nan
    # Five parameters are fitted (three amplitudes, two taus); at least 6 bins are, so m > 5.
    out[R_NOISE_VAR] = res[5] / (m - 5)
    out[R_PEAK_VAR] = _prony_peak_var(t_fit, w_fit, res[3], res[4], 1.0, 1.0, out[R_NOISE_VAR])
    if res[6] != 0.0:
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
