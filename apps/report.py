"""The consolidation report: one page per device, from InfluxDB, as PDF or PNG.

    render_report(store, [DeviceInfo(...)], start_ns=..., end_ns=..., out=Path("r.pdf"))

Each page shows step stiffness, load share with its fitted trend and the projected readiness
date, distraction steps performed against prescribed, alerts with their acknowledgements, and
how much data arrived. A measurement with no points in the period (no load-share test yet, no
alert) leaves its panel saying so, never an error. Names come from
`apps.grafana.MEASUREMENTS`, so the report and the boards read the same schema.

What the DSP marks as no measurement is shown as such, never as a value (docs/dsp.md): steps
flagged `low_snr` are left out of the stiffness plot with a count, load shares that are not
`usable` are drawn apart with their flags and never enter the trend, the phase and the
projected date are the DSP's own (its last daily record: "ready" only when it says so, "no
projection" with its reason otherwise), and the axes follow the plausible range.
"""

import datetime as dt
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apps.grafana import MEASUREMENTS, REMOVAL_SHARE_PCT
from dsp.consolidation import ConsolidationConfig, Trend, fit_trend
from osteotel.store.influx import InfluxStore

__all__ = ["DeviceInfo", "PageSummary", "render_report"]

_NS_PER_DAY = 86_400 * 10**9
_A4_IN = (8.27, 11.69)
_MAX_ALERT_LINES = 10
_ALERT_LINE_CHARS = 125  # at 8 pt across the A4 page's width
# What the DSP's projection_status means, for the page (docs/dsp.md).
_NO_PROJECTION = {
    "insufficient_days": "fewer than 3 days of usable load shares",
    "not_significant": "the load share is not falling significantly",
    "too_far": "beyond what the trend's data support",
    "none": "not in consolidation",
}


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Who and what a page is about, from the registry (pseudonyms only).

    Attributes:
        device: distractor identifier.
        patient: patient pseudonym, e.g. `P-7F3A`.
        site: the bone, e.g. `tibia`.
        steps_per_day: the prescribed rhythm, steps per day during distraction.
    """

    device: str
    patient: str
    site: str = "other"
    steps_per_day: int | None = None


@dataclass(frozen=True, slots=True)
class PageSummary:
    """The figures printed on one page, also returned to the caller.

    Attributes:
        device: distractor identifier.
        patient: patient pseudonym.
        steps_performed: distraction steps recorded in the period.
        elongation_mm: their summed displacement, mm.
        steps_prescribed: prescribed steps from the `daily` estimates, None if none.
        share_now: the trend's load share at its last point (1 = all load), the last usable
            share without a trend, None without one.
        phase: the DSP's phase on its last daily record, None without one.
        projected_ready_ns: when the DSP projects the removal criterion, UTC epoch ns; None
            when it does not (`projection`).
        projection: why there is a date or none: the DSP's projection_status.
        shares_unusable: load-share tests the DSP did not find usable.
        steps_flagged: distraction steps whose k_inst is no measurement (low_snr).
        sign_inconsistent: the DSP found the device's steps and loading disagree in sign.
        alerts: alerts raised in the period (distinct alert ids).
        acknowledged: how many of them were acknowledged.
        frames: frames stored in the period.
        days_with_data: UTC days that hold at least one frame.
        days: UTC days in the period.
    """

    device: str
    patient: str
    steps_performed: int
    elongation_mm: float
    steps_prescribed: int | None
    share_now: float | None
    phase: str | None
    projected_ready_ns: int | None
    projection: str
    shares_unusable: int
    steps_flagged: int
    sign_inconsistent: bool
    alerts: int
    acknowledged: int
    frames: int
    days_with_data: int
    days: int


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True, slots=True)
class _Span:
    device: str
    start_ns: int
    end_ns: int


def _select(
    store: InfluxStore,
    measurement: str,
    fields: Sequence[str],
    span: "_Span",
    *,
    where: str = "",
    aggregate: str | None = None,
    group_by: str | None = None,
) -> dict[str, list[Any]]:
    """Columns of one device's points (or per-day aggregates); empty lists when none. With
    `group_by` (a tag), its value is one more column."""
    device, start_ns, end_ns = span.device, span.start_ns, span.end_ns
    known = MEASUREMENTS[measurement]
    for name in fields:
        if not known.has(name):
            raise KeyError(f"{measurement} has no field {name} in the catalogue")
    if aggregate:
        select = ", ".join(f'{aggregate}("{name}") AS "{name}"' for name in fields)
    else:
        select = ", ".join(f'"{name}"' for name in fields)
    query = (
        f'SELECT {select} FROM "{measurement}" WHERE "device" = {_literal(device)} '  # noqa: S608
        f"AND time >= {start_ns} AND time <= {end_ns}{where}"
    )
    if aggregate:
        query += " GROUP BY time(1d) fill(none)"
    elif group_by:
        if group_by not in known.tags:
            raise KeyError(f"{measurement} has no tag {group_by} in the catalogue")
        query += f' GROUP BY "{group_by}"'
    columns: dict[str, list[Any]] = {name: [] for name in ("time", *fields)}
    if group_by:
        columns[group_by] = []
    for series in store.query(query, epoch="ns"):
        for row in series.values:
            for name, value in zip(series.columns, row, strict=True):
                columns.setdefault(name, []).append(value)
            if group_by:
                columns[group_by].append((series.tags or {}).get(group_by))
    if group_by and columns["time"]:  # series come one tag value at a time: back in time order
        order = np.argsort(np.array(columns["time"], dtype=np.int64), kind="stable")
        columns = {name: [values[i] for i in order] for name, values in columns.items()}
    return columns


def _day(t_ns: int) -> str:
    return dt.datetime.fromtimestamp(t_ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d")


def _floats(values: Sequence[Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _empty(ax: Any, text: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _trend_line(trend: Trend, last_day: float, config: ConsolidationConfig) -> tuple[Any, Any]:
    """Days and load shares (%) of the fitted line, from the fit window to the projection."""
    y_now = math.log((1.0 - trend.share_now) / trend.share_now)
    end = trend.projected_day if math.isfinite(trend.projected_day) else last_day
    days = np.linspace(last_day - config.trend_days, max(end, last_day), 50)
    y = y_now + trend.slope_per_day * (days - last_day)
    return days, 100.0 / (1.0 + np.exp(y))


@dataclass(frozen=True, slots=True)
class _PageData:
    """What one page shows, as read from InfluxDB."""

    columns: dict[str, dict[str, list[Any]]]
    share_days: np.ndarray[Any, np.dtype[np.float64]]
    share: np.ndarray[Any, np.dtype[np.float64]]
    usable: np.ndarray[Any, np.dtype[np.bool_]]
    trend: Trend | None
    band_days: tuple[float, float] | None
    acked: set[int]


def _read(
    store: InfluxStore,
    info: DeviceInfo,
    *,
    start_ns: int,
    end_ns: int,
    config: ConsolidationConfig,
) -> tuple[_PageData, PageSummary]:
    """Query one device's period and compute the page's figures."""
    device = info.device
    span = _Span(device, start_ns, end_ns)
    steps = _select(
        store,
        "event",
        ["delta_mm"],
        span,
        where=" AND \"type\" = 'distraction_step'",
    )
    estimates = _select(
        store,
        "step",
        ["k_inst_n_per_mm", "k_inst_std_n_per_mm", "k_peak_n_per_mm", "k_eq_n_per_mm", "flags"],
        span,
        where=" AND \"kind\" = 'step'",
    )
    shares = _select(store, "load_share", ["share", "share_std", "usable", "flags"], span)
    daily = _select(
        store,
        "daily",
        ["steps_prescribed", "projection_status", "projected_ready_ns", "projected_ready_lo_ns",
         "projected_ready_hi_ns", "flags"],
        span,
    )  # fmt: skip
    phases = _select(store, "daily", ["steps_prescribed"], span, group_by="phase")
    frames = _select(store, "frame", ["seq"], span, aggregate="count")
    alerts = _select(
        store, "alert", ["alert_id", "event", "summary", "severity"], span, group_by="rule"
    )
    acks = _select(store, "alert_ack", ["alert_id", "by"], span)

    # A share counts only when the DSP found it usable (a record without the verdict: no).
    usable = np.array([v is True for v in shares["usable"]], dtype=np.bool_)
    share = _floats(shares["share"])
    share_days = (np.array(shares["time"], dtype=np.float64) - start_ns) / _NS_PER_DAY
    stds = _floats(shares["share_std"])
    trend = None
    if usable.any():
        trend = fit_trend(share_days[usable], share[usable], stds[usable], config=config)
    share_now = None
    if trend is not None and trend.n_days >= config.min_days:
        share_now = trend.share_now
    elif usable.any():
        share_now = float(share[usable][-1])
    # The projection is the DSP's (its last daily record), not one of the report's own.
    projection = "none"
    projected_ns = None
    band_days = None
    if daily["time"]:
        projection = str(daily["projection_status"][-1] or "none")
        ready_ns = daily["projected_ready_ns"][-1]
        if projection == "ok" and ready_ns is not None and ready_ns > 0:
            projected_ns = int(ready_ns)
            lo, hi = daily["projected_ready_lo_ns"][-1], daily["projected_ready_hi_ns"][-1]
            if lo is not None and hi is not None and lo > 0 and hi > 0:
                band_days = ((lo - start_ns) / _NS_PER_DAY, (hi - start_ns) / _NS_PER_DAY)
    last_phase = None
    if phases["time"]:
        last_phase = str(phases["phase"][int(np.argmax(phases["time"]))])
    flagged = sum("low_snr" in (f or "") for f in estimates["flags"])
    prescribed = [int(v) for v in daily["steps_prescribed"] if v is not None]
    acked = set(acks["alert_id"])
    # An alert writes a point per change (firing, repeat, resolved...): count each alert once.
    raised = set(alerts["alert_id"])
    days = max(1, math.ceil((end_ns - start_ns) / _NS_PER_DAY))
    summary = PageSummary(
        device=device,
        patient=info.patient,
        steps_performed=len(steps["delta_mm"]),
        elongation_mm=float(np.nansum(_floats(steps["delta_mm"]))),
        steps_prescribed=sum(prescribed) if prescribed else None,
        share_now=share_now,
        phase=last_phase,
        projected_ready_ns=projected_ns,
        projection=projection,
        shares_unusable=int(np.count_nonzero(~usable)),
        sign_inconsistent=any("sign_inconsistent" in (f or "") for f in daily["flags"]),
        steps_flagged=flagged,
        alerts=len(raised),
        acknowledged=len(raised & acked),
        frames=int(sum(frames["seq"])),
        days_with_data=len(frames["seq"]),
        days=days,
    )
    columns = {
        "steps": steps,
        "estimates": estimates,
        "shares": shares,
        "frames": frames,
        "alerts": alerts,
    }
    return _PageData(columns, share_days, share, usable, trend, band_days, acked), summary


def _draw_header(
    header: Any, info: DeviceInfo, summary: PageSummary, *, start_ns: int, end_ns: int
) -> None:
    """The page title and the figures the clinician reads first."""
    device, days, projected_ns = info.device, summary.days, summary.projected_ready_ns
    header.axis("off")
    header.text(0, 1.0, "osteotel consolidation report", fontsize=15, weight="bold", va="top")
    if summary.phase == "ready":
        # The DSP's rule holds (two days of usable shares below the criterion): a date ahead
        # would read as "not yet". The trend's date, where there is one, is said as such.
        projection = "met: the DSP's removal criterion holds"
        if projected_ns is not None:
            projection += f" (the trend reaches it {_day(projected_ns)})"
    elif projected_ns is not None:
        projection = _day(projected_ns)
    else:
        projection = f"no projection ({_NO_PROJECTION.get(summary.projection, summary.projection)})"
    share_text = f"{100 * summary.share_now:.1f} %" if summary.share_now is not None else "none"
    if summary.shares_unusable:
        share_text += f" ({summary.shares_unusable} tests not usable, left out)"
    prescribed_text = (
        str(summary.steps_prescribed) if summary.steps_prescribed is not None else "not recorded"
    )
    lines = [
        f"Patient {info.patient}   Device {device}   Site {info.site}",
        f"Period {_day(start_ns)} to {_day(end_ns)} (UTC)",
        f"Distraction steps performed {summary.steps_performed} "
        f"({summary.elongation_mm:.2f} mm), prescribed {prescribed_text}",
        f"Phase {summary.phase or 'not estimated'}; load share now {share_text}",
        f"Projected readiness (< {REMOVAL_SHARE_PCT:g} %) {projection}",
        *(
            [
                "Signs disagree (sign_inconsistent): check the sensor's mounting and force_gain;",
                "no removal decision is made from its load shares",
            ]
            if summary.sign_inconsistent
            else []
        ),
        f"Alerts {summary.alerts}, acknowledged {summary.acknowledged}; frames stored "
        f"{summary.frames}, days with data {summary.days_with_data} of {days}",
    ]
    header.text(0, 0.78, "\n".join(lines), fontsize=9, va="top", linespacing=1.4)


def _draw_alerts(table: Any, alerts: dict[str, list[Any]], acked: set[int]) -> None:
    """The period's alerts grouped by rule (a repeated alert is one line with its count, first
    and last time), each marked by how many are acknowledged."""
    table.axis("off")
    table.set_title("Alerts and acknowledgements", fontsize=10, loc="left")
    groups: dict[str, list[tuple[int, int, str, str]]] = {}
    for t, aid, event, summary, severity, rule in zip(
        alerts["time"], alerts["alert_id"], alerts["event"], alerts["summary"],
        alerts["severity"], alerts["rule"], strict=True,
    ):  # fmt: skip
        if event == "firing":
            groups.setdefault(str(rule), []).append((int(t), int(aid), str(summary), severity))
    rows = []
    for rule, fired in sorted(groups.items(), key=lambda item: item[1][0][0]):
        first, last = fired[0], fired[-1]
        ids = {aid for _, aid, _, _ in fired}
        counted = f"{rule} x{len(fired)}, {_day(first[0])} to {_day(last[0])}"
        if len(fired) == 1:
            counted = f"{rule}, {_day(first[0])}"
        line = f"{counted}  {last[3]}  {last[2]}  [{len(ids & acked)} of {len(ids)} acknowledged]"
        # Wrapped to the page's width: a long summary continues, indented, on the next line.
        rows.append(textwrap.fill(line, width=_ALERT_LINE_CHARS, subsequent_indent="    "))
    if len(rows) > _MAX_ALERT_LINES:
        # Never dropped silently: the rules that do not fit are named on the last line.
        rest = [row.split(",")[0].split(" ")[0] for row in rows[_MAX_ALERT_LINES - 1 :]]
        rows = [*rows[: _MAX_ALERT_LINES - 1], f"and {len(rest)} more rules: {', '.join(rest)}"]
    text = "\n".join(rows) or "no alerts in this period"
    table.text(0, 0.9, text, fontsize=8, va="top")


def _draw_steps(
    ax: Any, estimates: dict[str, list[Any]], summary: PageSummary, *, start_ns: int
) -> None:
    """Step stiffness: k_peak, what each step raised by its ramp's end, for every fitted step
    (it does not depend on the fast relaxation's extrapolation); k_inst with its standard
    error and k_eq for the steps whose k_inst is a measurement; the rest counted. Days since
    the period's start, as the load share below."""
    if not estimates["time"]:
        _empty(ax, "no step estimates in this period")
        return
    when = (np.array(estimates["time"], dtype=np.float64) - start_ns) / _NS_PER_DAY
    k_peak = _floats(estimates["k_peak_n_per_mm"])
    k_inst = _floats(estimates["k_inst_n_per_mm"])
    k_std = _floats(estimates["k_inst_std_n_per_mm"])
    k_eq = _floats(estimates["k_eq_n_per_mm"])
    # A stiffness is positive: a negative one is the sign's fault, never drawn (counted).
    rising = k_peak > 0
    measured = np.array(["low_snr" not in (f or "") for f in estimates["flags"]], dtype=np.bool_)
    measured &= k_inst > 0
    shown = [k_peak[rising]]
    if rising.any():
        ax.plot(when[rising], k_peak[rising], ".", color="0.6", markersize=4,
                label="k_peak (at the ramp's end)")  # fmt: skip
    if measured.any():
        ax.errorbar(when[measured], k_inst[measured], yerr=k_std[measured], fmt=".",
                    elinewidth=0.6, label="k_inst +/- SE")  # fmt: skip
        shown.append(k_inst[measured] + np.nan_to_num(k_std[measured], nan=0.0))
        positive_eq = measured & (k_eq > 0)
        if positive_eq.any():
            ax.plot(when[positive_eq], k_eq[positive_eq], ".", label="k_eq")
    values = np.concatenate(shown)
    values = values[np.isfinite(values)]
    # The plausible range: from 0 to what is shown.
    top = float(values.max()) if values.size else 0.0
    ax.set_ylim(0.0, 1.15 * top if top > 0 else 1.0)
    ax.set_xlim(max(0.0, float(when.min()) - 1.0), float(when.max()) + 1.0)
    ax.set_xlabel(f"days since {_day(start_ns)}")
    if values.size:
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no plausible stiffness to plot", ha="center", va="center",
                transform=ax.transAxes, color="0.4")  # fmt: skip
    notes = []
    if summary.steps_flagged:
        notes.append(f"k_inst of {summary.steps_flagged} steps flagged low_snr, not plotted")
    falling = int(np.count_nonzero(k_peak < 0))
    if falling:
        notes.append(f"{falling} steps lowered the force (sign), not plotted")
    if notes:
        ax.text(0.99, 0.95, "\n".join(notes), ha="right", va="top", transform=ax.transAxes,
                fontsize=8, color="0.3")  # fmt: skip


def _draw_shares(
    ax: Any, data: _PageData, summary: PageSummary, *, start_ns: int, config: ConsolidationConfig
) -> None:
    """Load share: usable tests, the unusable ones apart with their flags, the trend over the
    usable ones and the DSP's projection with its band."""
    shares, share_days, share, trend = (
        data.columns["shares"],
        data.share_days,
        data.share,
        data.trend,
    )
    usable = data.usable
    if shares["time"]:
        if usable.any():
            ax.plot(share_days[usable], 100 * share[usable], "o", markersize=3,
                    label="load share (usable)")  # fmt: skip
        if (~usable).any():
            # Not a measurement of the bone: drawn apart, at the edge of the range it left.
            shown = np.clip(100 * share[~usable], -5.0, 105.0)
            reasons = sorted(
                {flag for f in shares["flags"] if f for flag in str(f).split(",")} or {"no verdict"}
            )
            outside = (100 * share[~usable] < -5.0) | (100 * share[~usable] > 105.0)
            edge = ", drawn at the axis edge" if outside.any() else ""
            ax.plot(share_days[~usable], shown, "x", color="0.55", markersize=4,
                    label=f"not usable ({', '.join(reasons)}{edge})")  # fmt: skip
        # The trend is a consolidation's: none while the DSP says the device is not in one.
        if (
            trend is not None
            and trend.n_days >= config.min_days
            and summary.phase in {"consolidation", "ready"}
        ):
            days_line, share_line = _trend_line(trend, float(share_days[usable][-1]), config)
            ax.plot(days_line, share_line, "-", color="tab:orange", label="trend")
        if data.band_days is not None and summary.projected_ready_ns is not None:
            ax.axvspan(*data.band_days, color="tab:green", alpha=0.15, label="projection +/- 2 SE")
            ax.axvline((summary.projected_ready_ns - start_ns) / _NS_PER_DAY, color="tab:green",
                       linewidth=1)  # fmt: skip
        ax.set_ylim(-8.0, 108.0)
        ax.set_xlabel(f"days since {_day(start_ns)}")
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no load-share tests in this period")


def _draw(
    figure: Any,
    info: DeviceInfo,
    data: _PageData,
    summary: PageSummary,
    *,
    start_ns: int,
    end_ns: int,
    config: ConsolidationConfig,
) -> None:
    """Lay out one page: the header figures, four plots and the alert list."""
    steps, estimates = data.columns["steps"], data.columns["estimates"]
    frames, alerts, days = data.columns["frames"], data.columns["alerts"], summary.days
    grid = figure.add_gridspec(5, 2, height_ratios=[2.1, 2, 2, 2, 1.6], hspace=0.7, wspace=0.3)
    _draw_header(figure.add_subplot(grid[0, :]), info, summary, start_ns=start_ns, end_ns=end_ns)
    ax = figure.add_subplot(grid[1, :])
    ax.set_title("Step stiffness", fontsize=10, loc="left")
    ax.set_ylabel("N/mm")
    _draw_steps(ax, estimates, summary, start_ns=start_ns)

    ax = figure.add_subplot(grid[2, :])
    ax.set_title("Load share, trend and removal criterion", fontsize=10, loc="left")
    ax.set_ylabel("%")
    ax.axhline(REMOVAL_SHARE_PCT, color="tab:red", linestyle="--", linewidth=1)
    _draw_shares(ax, data, summary, start_ns=start_ns, config=config)

    ax = figure.add_subplot(grid[3, 0])
    ax.set_title("Steps per day", fontsize=10, loc="left")
    step_days = (np.array(steps["time"], dtype=np.int64) - start_ns) // _NS_PER_DAY
    if step_days.size:
        counts = np.bincount(step_days, minlength=days)[:days]
        ax.bar(np.arange(counts.size), counts, color="tab:blue", label="performed")
        if info.steps_per_day is not None:
            ax.axhline(info.steps_per_day, color="k", linewidth=1, label="prescribed rhythm")
        ax.set_xlim(-1, days)
        ax.set_xlabel(f"days since {_day(start_ns)}")
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no distraction steps")

    ax = figure.add_subplot(grid[3, 1])
    ax.set_title("Frames stored per day", fontsize=10, loc="left")
    if frames["time"]:
        frame_days = (np.array(frames["time"], dtype=np.int64) - start_ns) // _NS_PER_DAY
        ax.bar(frame_days, frames["seq"], color="tab:gray")
        ax.set_xlim(-1, days)
        ax.set_xlabel(f"days since {_day(start_ns)}")
    else:
        _empty(ax, "no frames")

    _draw_alerts(figure.add_subplot(grid[4, :]), alerts, data.acked)


def _page(
    figure: Any,
    store: InfluxStore,
    info: DeviceInfo,
    *,
    start_ns: int,
    end_ns: int,
    config: ConsolidationConfig,
) -> PageSummary:
    """Read one device's period and draw its page on `figure`."""
    data, summary = _read(store, info, start_ns=start_ns, end_ns=end_ns, config=config)
    _draw(figure, info, data, summary, start_ns=start_ns, end_ns=end_ns, config=config)
    return summary


def render_report(
    store: InfluxStore,
    devices: Sequence[DeviceInfo],
    *,
    start_ns: int,
    end_ns: int,
    out: Path,
    config: ConsolidationConfig | None = None,
) -> list[PageSummary]:
    """Render one page per device to a PDF, or one device to a PNG.

    Args:
        store: where the data is read from (InfluxQL).
        devices: the devices, in page order.
        start_ns: start of the period, UTC epoch ns.
        end_ns: end of the period, UTC epoch ns.
        out: `.pdf` (any number of pages) or `.png` (exactly one device).
        config: consolidation trend settings; the defaults of dsp.consolidation when None.

    Returns:
        What each page states, in page order.

    Raises:
        ValueError: unknown suffix, a PNG for several devices, or an empty period.
        StoreError: InfluxDB could not answer.
    """
    # Imported on use, with the file-only backend: no display, and `osteotel --help` stays fast.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib.backends.backend_pdf import PdfPages  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    suffix = out.suffix.lower()
    if suffix not in {".pdf", ".png"}:
        raise ValueError(f"report file must end in .pdf or .png, got {out.name}")
    if suffix == ".png" and len(devices) != 1:
        raise ValueError(f"a PNG holds one device's page, got {len(devices)} devices")
    if end_ns <= start_ns:
        raise ValueError(f"empty period: start_ns={start_ns} end_ns={end_ns}")
    cfg = config or ConsolidationConfig()
    summaries = []
    if suffix == ".png":
        figure = Figure(figsize=_A4_IN)
        summaries.append(
            _page(figure, store, devices[0], start_ns=start_ns, end_ns=end_ns, config=cfg)
        )
        figure.savefig(out, dpi=100)
        return summaries
    with PdfPages(out, metadata={"Title": "osteotel consolidation report"}) as pdf:
        for info in devices:
            figure = Figure(figsize=_A4_IN)
            summaries.append(
                _page(figure, store, info, start_ns=start_ns, end_ns=end_ns, config=cfg)
            )
            pdf.savefig(figure)
    return summaries
