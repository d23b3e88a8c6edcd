"""Plain numpy reference implementations of the DSP kernels, written for obviousness, not speed.

They never import `dsp._kernels`: each one restates the algorithm from its description in
docs/dsp.md so that a test comparing the two catches a slip in either.
"""

# The reference functions mirror the kernels' positional parameters, one for one.
# ruff: noqa: PLR0917

import math

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "prony_curve",
    "prony_ramp_curve",
    "ref_loadshare",
    "ref_pre_count",
    "ref_pre_mean",
    "ref_prony_fit",
    "ref_prony_peak_var",
    "ref_prony_rss",
    "ref_quality",
    "ref_rls",
    "ref_step_bins",
    "ref_step_fit",
    "sample_times_ns",
]

F64 = NDArray[np.float64]


def sample_times_ns(t0_ns: int, rate_hz: float, n: int) -> NDArray[np.int64]:
    """Times of n samples from t0_ns at rate_hz (ns), rounded to the nanosecond."""
    dt_ns = 1e9 / rate_hz
    return np.array([t0_ns + round(k * dt_ns) for k in range(n)], dtype=np.int64)


def prony_curve(t_s: F64, a_inf: float, a_f: float, a_s: float, tau_f: float, tau_s: float) -> F64:
    """a_inf + a_f e^(-t/tau_f) + a_s e^(-t/tau_s)."""
    return a_inf + a_f * np.exp(-t_s / tau_f) + a_s * np.exp(-t_s / tau_s)


def prony_ramp_curve(
    t_s: F64, ramp_s: float, a_inf: float, a_f: float, a_s: float, tau_f: float, tau_s: float
) -> F64:
    """Response to a unit elongation spread linearly over ramp_s from t = 0: the Prony step
    response integrated over the ramp, term by term (0 before the ramp, 1 x the sudden step's
    curve shape a ramp later)."""
    during = np.clip(t_s, 0.0, ramp_s)
    out = a_inf * during
    for amp, tau in ((a_f, tau_f), (a_s, tau_s)):
        out = out + amp * tau * (np.exp(-(t_s - during) / tau) - np.exp(-t_s / tau))
    return np.where(t_s > 0.0, out / ramp_s, 0.0)


def _trimmed_mean_parts(values: F64) -> tuple[float, float]:
    """(sum, count) of values without their min and max once there are at least four."""
    if values.size >= 4:
        return float(values.sum() - values.min() - values.max()), float(values.size - 2)
    return float(values.sum()), float(values.size)


def ref_pre_mean(
    force_n: F64, t_ns: NDArray[np.int64], t_step_ns: int, pre_bin_ns: int, pre_bins: int
) -> float:
    """Force before a step: trimmed means of the pre_bins whole bins before the step's bin."""
    ok = np.isfinite(force_n)
    key = t_ns // pre_bin_ns
    key_step = t_step_ns // pre_bin_ns
    total, count = 0.0, 0.0
    for b in range(key_step - pre_bins, key_step):
        s, n = _trimmed_mean_parts(force_n[ok & (key == b)])
        total += s
        count += n
    return total / count if count else math.nan


def ref_pre_count(
    force_n: F64, t_ns: NDArray[np.int64], t_step_ns: int, pre_bin_ns: int, pre_bins: int
) -> float:
    """Samples behind the force before a step: each bin's count less its min and max once it
    has four or more."""
    ok = np.isfinite(force_n)
    key = t_ns // pre_bin_ns
    key_step = t_step_ns // pre_bin_ns
    return float(
        sum(
            _trimmed_mean_parts(force_n[ok & (key == b)])[1]
            for b in range(key_step - pre_bins, key_step)
        )
    )


def ref_step_bins(
    force_n: F64,
    t_ns: NDArray[np.int64],
    t_step_ns: int,
    c_s: float,
    h: float,
    n_bins: int,
    window_s: float,
) -> dict[str, F64]:
    """Relaxation bins after a step: per bin the trimmed mean, its sample count and the mean
    time since the step (s) of all its samples; empty bins are left out."""
    rel_s = (t_ns - t_step_ns) * 1e-9
    ok = np.isfinite(force_n) & (rel_s >= 0) & (t_ns - t_step_ns < round(window_s * 1e9))
    b_of = np.minimum(np.floor(np.log1p(rel_s[ok] / c_s) / h).astype(int), n_bins - 1)
    f_ok = force_n[ok]
    t_ok = rel_s[ok]
    means, weights, times = [], [], []
    for b in range(n_bins):
        sel = b_of == b
        if not sel.any():
            continue
        s, n = _trimmed_mean_parts(f_ok[sel])
        means.append(s / n)
        weights.append(n)
        times.append(float(t_ok[sel].mean()))
    return {"mean_n": np.array(means), "weight": np.array(weights), "time_s": np.array(times)}


def ref_prony_rss(t_s: F64, y_n: F64, w: F64, tau_f: float, tau_s: float) -> tuple[float, F64]:
    """Weighted RSS and amplitudes (a_inf, a_f, a_s) of the Prony curve at fixed time constants,
    from numpy's least squares on the sqrt(w)-scaled design."""
    design = np.column_stack([np.ones_like(t_s), np.exp(-t_s / tau_f), np.exp(-t_s / tau_s)])
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], y_n * sw, rcond=None)
    resid = y_n - design @ coef
    return float(np.sum(w * resid**2)), coef


def ref_prony_peak_var(
    t_s: F64, w: F64, tau_f: float, tau_s: float, c: F64, noise_var: float
) -> float:
    """Variance of c . (a_inf, a_f, a_s) at fixed time constants: the weighted least-squares
    covariance noise_var (X' W X)^-1, a bin mean of w samples having variance noise_var / w."""
    design = np.column_stack([np.ones_like(t_s), np.exp(-t_s / tau_f), np.exp(-t_s / tau_s)])
    cov = noise_var * np.linalg.inv(design.T @ (design * w[:, None]))
    return float(c @ cov @ c)


def ref_prony_fit(
    t_s: F64,
    y_n: F64,
    w: F64,
    log_tau_fast: F64,
    log_tau_slow: F64,
    min_ratio: float,
    refine_rounds: int,
) -> dict[str, float]:
    """Grid search over (ln tau_f, ln tau_s) with tau_s >= min_ratio tau_f, then refine_rounds
    9x9 grids at a quarter of the previous spacing around the best point, clipped to the grid."""
    log_ratio = math.log(min_ratio)
    best = (math.inf, log_tau_fast[0], log_tau_slow[-1])
    for lf in log_tau_fast:
        for ls in log_tau_slow:
            if ls - lf >= log_ratio:
                rss, _ = ref_prony_rss(t_s, y_n, w, math.exp(lf), math.exp(ls))
                if rss < best[0]:
                    best = (rss, lf, ls)
    step_f = (log_tau_fast[-1] - log_tau_fast[0]) / (len(log_tau_fast) - 1)
    step_s = (log_tau_slow[-1] - log_tau_slow[0]) / (len(log_tau_slow) - 1)
    for _ in range(refine_rounds):
        _, cf, cs = best
        for i in range(-4, 5):
            lf = min(max(cf + i * step_f / 4, log_tau_fast[0]), log_tau_fast[-1])
            for j in range(-4, 5):
                ls = min(max(cs + j * step_s / 4, log_tau_slow[0]), log_tau_slow[-1])
                if ls - lf >= log_ratio:
                    rss, _ = ref_prony_rss(t_s, y_n, w, math.exp(lf), math.exp(ls))
                    if rss < best[0]:
                        best = (rss, lf, ls)
        step_f /= 4
        step_s /= 4
    rss, coef = ref_prony_rss(t_s, y_n, w, math.exp(best[1]), math.exp(best[2]))
    return {
        "a_inf": coef[0],
        "a_f": coef[1],
        "a_s": coef[2],
        "tau_f": math.exp(best[1]),
        "tau_s": math.exp(best[2]),
        "rss": rss,
    }


def ref_step_fit(
    bins: dict[str, F64],
    c_s: float,
    h: float,
    peak_search_s: float,
    log_tau_fast: F64,
    log_tau_slow: F64,
    min_ratio: float,
    refine_rounds: int,
) -> dict[str, float]:
    """Peak bin (largest mean within peak_search_s), then the Prony fit of that bin and the
    later ones, in time from the peak bin's left edge."""
    early = np.flatnonzero(bins["time_s"] <= peak_search_s)
    peak = int(early[np.argmax(bins["mean_n"][early])])
    b_peak = math.floor(math.log1p(bins["time_s"][peak] / c_s) / h)
    origin = c_s * math.expm1(b_peak * h)
    t = bins["time_s"][peak:] - origin
    y = bins["mean_n"][peak:]
    w = bins["weight"][peak:]
    fit = ref_prony_fit(t, y, w, log_tau_fast, log_tau_slow, min_ratio, refine_rounds)
    fit["f_peak"] = fit["a_inf"] + fit["a_f"] + fit["a_s"]
    fit["rmse"] = math.sqrt(fit["rss"] / w.sum())
    fit["r2"] = 1 - fit["rss"] / float(np.sum(w * (y - np.average(y, weights=w)) ** 2))
    # Residual variance per sample over the bins' degrees of freedom (5 parameters fitted).
    fit["noise_var"] = fit["rss"] / (t.size - 5)
    fit["peak_var"] = ref_prony_peak_var(
        t, w, fit["tau_f"], fit["tau_s"], np.ones(3), fit["noise_var"]
    )
    return fit


def ref_rls(
    force_n: F64,
    disp_mm: F64,
    t_ns: NDArray[np.int64],
    block_ns: int,
    lam: float,
    excite_mm: float,
    hold_ns: int,
    p0: float,
) -> dict[str, F64 | int]:
    """Recursive least squares, restated: block means by t // block_ns over finite pairs, an
    excitation gate on the block displacement, and one textbook RLS step per gated pair of
    consecutive blocks on F[n] = phi F[n-1] + b dx[n] + g (x[n-1] - x_ref) + c.

    The last (still open) block is not used, as in the streaming form.
    """
    ok = np.isfinite(force_n) & np.isfinite(disp_mm)
    keys = t_ns[ok] // block_ns
    f_ok, x_ok = force_n[ok], disp_mm[ok]
    uniq = np.unique(keys)[:-1] if keys.size else np.array([], dtype=np.int64)
    theta = np.zeros(4)
    p = np.eye(4) * p0
    x_ref = anchor = math.nan
    hold_until = -1
    prev: tuple[int, float, float] | None = None
    updates = 0
    for key in uniq:
        f = float(f_ok[keys == key].mean())
        x = float(x_ok[keys == key].mean())
        if math.isnan(x_ref):
            x_ref = anchor = x
        if abs(x - anchor) > excite_mm:
            anchor = x
            hold_until = int(key) * block_ns + hold_ns
        if prev is not None and prev[0] == key - 1 and key * block_ns <= hold_until:
            z = np.array([prev[1], x - prev[2], prev[2] - x_ref, 1.0])
            gain = p @ z / (lam + z @ p @ z)
            theta = theta + gain * (f - z @ theta)
            p = (p - np.outer(gain, z @ p)) / lam
            updates += 1
        prev = (int(key), f, x)
    return {"theta": theta, "p": p, "updates": updates}


def ref_loadshare(force_n: F64, ref_load_n: F64) -> dict[str, float]:
    """Least-squares slope of force on reference load over finite pairs, its standard error,
    intercept and r^2, from numpy's polyfit."""
    ok = np.isfinite(force_n) & np.isfinite(ref_load_n)
    r, f = ref_load_n[ok], force_n[ok]
    slope, intercept = np.polyfit(r, f, 1)
    resid = f - (slope * r + intercept)
    sxx = float(np.sum((r - r.mean()) ** 2))
    se = math.sqrt(float(np.sum(resid**2)) / (r.size - 2) / sxx)
    r2 = 1 - float(np.sum(resid**2)) / float(np.sum((f - f.mean()) ** 2))
    return {"slope": float(slope), "intercept": float(intercept), "se": se, "r2": r2, "n": r.size}


def ref_quality(
    x: F64, full_scale: float, flat_eps: float, flat_samples: int, spike_k: float, alpha: float
) -> dict[str, float]:
    """Quality counters restated sample by sample: saturation |x| >= full_scale; flat runs of
    |dx| <= flat_eps; spikes (one sample beyond spike_k sigma from both agreeing neighbours, on
    the same side, judged after 1/alpha differences); sigma^2 = half the running mean of clipped
    squared differences (a plain mean over the first 1/alpha)."""
    fin = x[np.isfinite(x)]
    out = {
        "n_total": float(x.size),
        "n_nonfinite": float(x.size - fin.size),
        "n_saturated": float(np.sum(np.abs(fin) >= full_scale)),
        "n_spikes": 0.0,
        "n_flat": 0.0,
        "max_run": float(min(fin.size, 1)),
        "run": float(min(fin.size, 1)),
        "noise_var": math.nan,
    }
    var = math.nan
    run = 1
    for i in range(1, fin.size):
        d = fin[i] - fin[i - 1]
        run = run + 1 if abs(d) <= flat_eps else 1
        out["max_run"] = max(out["max_run"], run)
        out["n_flat"] += run > flat_samples
        sigma = math.sqrt(var / 2) if not math.isnan(var) else math.nan
        if (i - 1) * alpha >= 1 and sigma > 0:
            lim = spike_k * sigma
            d1 = fin[i - 1] - fin[i - 2]
            d2 = fin[i - 1] - fin[i]
            if min(abs(d1), abs(d2)) > lim and d1 * d2 > 0 and abs(fin[i] - fin[i - 2]) < lim:
                out["n_spikes"] += 1
        if math.isnan(var):
            var = d * d
        else:
            cap = 16 * var
            var += max(alpha, 1 / i) * ((min(d * d, cap) if cap > 0 else d * d) - var)
    out["run"] = float(run) if fin.size else 0.0
    out["noise_var"] = var
    return out
