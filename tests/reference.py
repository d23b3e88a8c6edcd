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
    "ref_amp_fit",
    "ref_amp_var",
    "ref_loadshare",
    "ref_pre_mean",
    "ref_quality",
    "ref_ramp",
    "ref_relax",
    "ref_rls",
    "ref_window_bins",
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
    force_n: F64, t_ns: NDArray[np.int64], key_w: int, pre_bin_ns: int, pre_bins: int
) -> float:
    """Force before a window starting at bin key_w: trimmed means of the pre_bins whole bins
    before it."""
    ok = np.isfinite(force_n)
    key = t_ns // pre_bin_ns
    total, count = 0.0, 0.0
    for b in range(key_w - pre_bins, key_w):
        s, n = _trimmed_mean_parts(force_n[ok & (key == b)])
        total += s
        count += n
    return total / count if count else math.nan


def ref_window_bins(
    force_n: F64,
    disp_mm: F64,
    t_ns: NDArray[np.int64],
    t_step_ns: int,
    key_w: int,
    lin_n: int,
    pre_bin_ns: int,
    c_s: float,
    h: float,
    n_bins: int,
    window_s: float,
) -> dict[str, F64]:
    """A step's window: every sample with a finite force from bin key_w on and before
    window_s after the step; lin_n bins of pre_bin_ns, then edges c_s (e^(b h) - 1) s after
    them. Per non-empty bin: count, the force's trimmed and plain means, the mean time since
    the step (s) and the displacement's mean."""
    ok = np.isfinite(force_n) & (t_ns // pre_bin_ns >= key_w)
    ok &= t_ns - t_step_ns < round(window_s * 1e9)
    lin = t_ns // pre_bin_ns - key_w
    after_s = (t_ns - (key_w + lin_n) * pre_bin_ns) * 1e-9
    log_b = lin_n + np.floor(np.log1p(np.maximum(after_s, 0.0) / c_s) / h).astype(int)
    b_of = np.minimum(np.where(lin < lin_n, lin, log_b), n_bins - 1)
    out: dict[str, list[float]] = {k: [] for k in ("count", "trim", "plain", "time_s", "disp")}
    for b in range(n_bins):
        sel = ok & (b_of == b)
        if not sel.any():
            continue
        s, n = _trimmed_mean_parts(force_n[sel])
        out["count"].append(float(sel.sum()))
        out["trim"].append(s / n)
        out["plain"].append(float(force_n[sel].mean()))
        out["time_s"].append(float(((t_ns[sel] - t_step_ns) * 1e-9).mean()))
        out["disp"].append(float(disp_mm[sel].mean()))
    return {k: np.array(v) for k, v in out.items()}


def ref_ramp(t_s: F64, t_on: float, ramp: float) -> F64:
    """clip((t - t_on) / ramp, 0, 1); with ramp 0 the unit step at t_on (1 from t_on on)."""
    if ramp == 0.0:
        return np.where(t_s >= t_on, 1.0, 0.0)
    return np.clip((t_s - t_on) / ramp, 0.0, 1.0)


def ref_relax(t_s: F64, t_on: float, ramp: float, tau: float) -> F64:
    """A relaxation term's response to a unit elongation ramped from t_on, by numerical
    superposition: the ramp cut into 2,000 equal sudden sub-steps, each e^(-(t - t_k)/tau)."""
    if ramp == 0.0:
        return np.where(t_s >= t_on, np.exp(-np.maximum(t_s - t_on, 0.0) / tau), 0.0)
    n_sub = 2000
    t_k = t_on + (np.arange(n_sub) + 0.5) * ramp / n_sub
    out = np.zeros_like(t_s)
    for t_sub in t_k:
        out += np.where(t_s >= t_sub, np.exp(-np.maximum(t_s - t_sub, 0.0) / tau), 0.0)
    return out / n_sub


def ref_amp_fit(u: F64, bf: F64, bs: F64, y: F64, w: F64) -> tuple[float, F64]:
    """Weighted RSS and amplitudes (A_inf, A_f, A_s) of y on the columns (u, bf, bs), from
    numpy's least squares on the sqrt(w)-scaled design."""
    design = np.column_stack([u, bf, bs])
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
    resid = y - design @ coef
    return float(np.sum(w * resid**2)), np.asarray(coef, dtype=np.float64)


def ref_amp_var(u: F64, bf: F64, bs: F64, w: F64, noise_var: float, c: F64) -> float:
    """Variance of c . (A_inf, A_f, A_s): c' C c with C the weighted least-squares covariance
    noise_var (X' W X)^-1."""
    design = np.column_stack([u, bf, bs])
    cov = noise_var * np.linalg.inv(design.T @ (design * w[:, None]))
    return float(c @ cov @ c)


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
