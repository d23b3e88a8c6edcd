"""The three boards, fleet, patient and device, data quality, built from the catalogue.

Every value a panel shows is a field or tag written today (docs/schema.md); values no record
carries are computed in the query from fields that exist, or the panel is left out
(docs/grafana.md says which).
"""

from apps.grafana.panels import (
    Board,
    Dashboard,
    Query,
    Variable,
    agg,
    filters,
    name_of,
    raw,
    series_query,
)

__all__ = ["REMOVAL_SHARE_PCT", "build_dashboards"]

# The removal criterion: load share below 10 % (Aarnes 2005, J Orthop Res; docs/domain.md).
REMOVAL_SHARE_PCT = 10.0
# The estimator writes projected_ready_ns = -1 while no trend reaches the criterion.
_NOT_PROJECTED = [
    {"type": "range", "options": {"from": None, "to": 0, "result": {"text": "not projected"}}}
]


_NS_PER_DAY = 86_400 * 10**9
# A series drawn as red crosses, no line: estimates the DSP flagged.
_MARKS: list[dict[str, object]] = [
    {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
    {"id": "custom.drawStyle", "value": "points"},
    {"id": "custom.pointSize", "value": 9},
    {"id": "custom.pointSymbol", "value": "cross"},
]


def _treatment_day() -> tuple[str, str]:
    """Whole days from the osteotomy to the end of the board's range: 0 on the osteotomy day.

    InfluxQL has no `now()` in a SELECT, so the range end comes from Grafana's global
    `${__to}` (epoch ms). A device without an osteotomy date gets no value (null).
    """
    osteotomy = f"last({name_of('device_info', 'osteotomy_ns')})"
    return f"floor((${{__to}} * 1000000 - {osteotomy}) / {_NS_PER_DAY})", "treatment_day"


def _projected_ready_ms(field: str = "projected_ready_ns") -> tuple[str, str]:
    # Nanoseconds to milliseconds: Grafana's dateTime units take epoch ms.
    return f"last({name_of('daily', field)}) / 1000000", field.replace("_ns", "_ms")


def _fleet() -> Board:
    chain: tuple[Variable, ...] = ("hub", "patient", "device")
    board = Board(
        "osteotel-fleet",
        "osteotel / Fleet",
        "Every active device: patient pseudonym, site, phase, treatment day, days monitored, "
        "elongation, "
        "consolidation, projected readiness, last seen, data completeness; the latest state "
        "of each device's alerts.",
        chain,
        "now-7d",
    )
    info = Query(
        "device_info",
        [agg("last", "device_info", "target_mm"), _treatment_day()],
        where=[*filters("device_info", chain), f"{name_of('device_info', 'active')} = true"],
        group_tags=("hub", "device", "patient", "site"),
        time_filter=False,
    )
    phase = Query(
        "daily",
        [agg("last", "daily", "gained_mm"), raw("daily", "phase")],
        where=filters("daily", chain),
        group_tags=("device",),
    )
    # The estimator writes one `daily` point per UTC day the device has been followed (days
    # without data included); their count is kept beside the treatment day because the
    # osteotomy date is optional, and a gap between the two shows monitoring that began late.
    days = Query(
        "daily",
        [agg("count", "daily", "steps_done", "days_monitored")],
        where=filters("daily", chain),
        group_tags=("device",),
        time_filter=False,
    )
    index = Query(
        "daily",
        [agg("last", "daily", "consolidation_index")],
        where=filters("daily", chain),
        group_tags=("device",),
    )
    ready = Query(
        "daily",
        [_projected_ready_ms()],
        where=filters("daily", chain),
        group_tags=("device",),
    )
    seen = Query(
        "frame",
        [agg("last", "frame", "battery_pct")],
        where=filters("frame", chain),
        group_tags=("device",),
    )
    board.panel(
        "Devices",
        [info, phase, days, index, ready, seen, _completeness(chain, by_time=None)],
        kind="table",
        table=True,
        width=24,
        height=12,
        description="One row per device; `time` of the battery column is when it was last "
        "seen. Treatment day counts whole days from the registry's osteotomy date to the end "
        "of the time range (0 on the osteotomy day; empty without a date); days monitored "
        "counts the daily estimates; data completeness is frames stored over frames stored "
        "and still missing, since the ingest process started.",
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "renameByName": {
                        "Time": "last seen",
                        "gained_mm": "elongation mm",
                        "treatment_day": "treatment day",
                        "days_monitored": "days monitored",
                        "projected_ready_ms": "projected ready",
                        "completeness_pct": "data completeness %",
                    },
                },
            },
        ],
        field_config={
            "defaults": {},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "treatment_day"},
                    "properties": [{"id": "unit", "value": "none"}, {"id": "decimals", "value": 0}],
                },
                {
                    "matcher": {"id": "byName", "options": "projected_ready_ms"},
                    "properties": [
                        {"id": "unit", "value": "dateTimeAsIso"},
                        {"id": "mappings", "value": _NOT_PROJECTED},
                    ],
                },
            ],
        },
    )
    board.panel(
        "Alerts: latest state per device and rule",
        [
            Query(
                "alert",
                [
                    agg("last", "alert", "state"),
                    agg("last", "alert", "summary"),
                    agg("last", "alert", "acked"),
                ],
                where=filters("alert", chain),
                group_tags=("device", "patient", "rule", "severity"),
                # An alert opened long ago may still be firing: the latest state counts.
                time_filter=False,
            )
        ],
        kind="table",
        table=True,
        width=24,
        height=8,
        description="One row per device, rule and severity: `firing` and `pending` rows are "
        "open alerts.",
        field_config={
            "defaults": {},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "state"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                        {
                            "id": "mappings",
                            "value": [
                                {
                                    "type": "value",
                                    "options": {
                                        "firing": {"color": "red", "index": 0},
                                        "pending": {"color": "yellow", "index": 1},
                                    },
                                }
                            ],
                        },
                    ],
                },
            ],
        },
    )
    board.panel(
        "Frames stored per device",
        [series_query("frame", [agg("count", "frame", "seq", "frames")], chain)],
        unit="short",
        width=12,
    )
    board.panel(
        "Consolidation index",
        [
            series_query(
                "daily",
                [agg("last", "daily", "consolidation_index")],
                chain,
                by_time="1d",
            )
        ],
        unit="percentunit",
        width=12,
    )
    return board


def _completeness(chain: tuple[Variable, ...], *, by_time: str | None) -> Query:
    """Frames stored over frames stored plus those still missing, in %, per device.

    No record holds a completeness: ingest's cumulative counters give it. Gaps filled late
    (`frames_out_of_order`) are no longer missing.
    """
    stored = f"last({name_of('ingest_stats', 'frames_stored')})"
    gaps = f"last({name_of('ingest_stats', 'seq_gaps')})"
    late = f"last({name_of('ingest_stats', 'frames_out_of_order')})"
    return Query(
        "ingest_stats",
        [(f"100 * {stored} / ({stored} + {gaps} - {late})", "completeness_pct")],
        where=filters("ingest_stats", chain),
        group_tags=("device",),
        by_time=by_time,
    )


def _k_inst_band() -> list[tuple[str, str]]:
    """k_inst minus and plus two of its standard errors, N/mm.

    k_inst_std_n_per_mm is the DSP's own standard error of k_inst (docs/dsp.md): the fit's
    covariance, widened where tau_fast is held, plus the displacement's uncertainty.
    """
    k = name_of("step", "k_inst_n_per_mm")
    spread = f"2 * {name_of('step', 'k_inst_std_n_per_mm')}"
    return [(f"{k} - {spread}", "k_inst_lo_n_per_mm"), (f"{k} + {spread}", "k_inst_hi_n_per_mm")]


def _flagged(measurement: str) -> str:
    """Only points whose `flags` field says something (it is left out when empty)."""
    return f"{name_of(measurement, 'flags')} =~ /./"


def _patient() -> Board:
    chain: tuple[Variable, ...] = ("hub", "patient", "device")
    board = Board(
        "osteotel-patient",
        "osteotel / Patient and device",
        "One patient's distractor: forces, stiffness, relaxation, load share, consolidation "
        "and adherence; alerts and acknowledgements as annotations.",
        chain,
        "now-30d",
    )
    board.panel(
        "Force and displacement",
        [
            series_query(
                "raw",
                [agg("mean", "raw", "force_n"), agg("mean", "raw", "disp_mm")],
                chain,
            )
        ],
        unit="none",
        field_config={
            "defaults": {},
            "overrides": [
                {
                    "matcher": {"id": "byRegexp", "options": ".*disp_mm"},
                    "properties": [
                        {"id": "unit", "value": "lengthmm"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
        },
    )
    step_where = [f"{name_of('step', 'kind')} = 'step'"]
    board.panel(
        "Step stiffness (per distraction step) with its fit quality",
        [
            series_query(
                "step",
                [
                    raw("step", "k_inst_n_per_mm"),
                    *_k_inst_band(),
                    raw("step", "k_eq_n_per_mm"),
                    raw("step", "fit_r2"),
                ],
                chain,
                extra_where=step_where,
                by_time=None,
            ),
            # The continuous tracker is written once a day, in the daily estimate.
            series_query(
                "daily",
                [agg("last", "daily", "k_track_n_per_mm")],
                chain,
                by_time="1d",
            ),
            # Steps the DSP flagged (low_snr, poor_fit, cut_short, ...) drawn again as marks,
            # so a k_inst that is no measurement is seen as such.
            series_query(
                "step",
                [
                    raw("step", "k_inst_n_per_mm", "k_inst_flagged_n_per_mm"),
                    raw("step", "flags"),
                ],
                chain,
                extra_where=[*step_where, _flagged("step")],
                by_time=None,
            ),
        ],
        unit="none",
        description="k in N/mm, per distraction step and the continuous tracker at each "
        "day's end. The dashed lines are k_inst ± 2 k_inst_std_n_per_mm, the DSP's standard "
        "error of it. Red crosses mark steps the DSP flagged (low_snr: k_inst within its own "
        "error or on a held tau_fast; poor_fit, cut_short, onset_uncertain, ramp_mismatch, "
        "separation, tau_fast_held): their k_inst is not a measurement to read. fit_r2 (right "
        "axis, 0..1) is the share of the relaxation the fit explains; empty when the step "
        "could not be fitted.",
        field_config={
            "defaults": {},
            "overrides": [
                {
                    "matcher": {"id": "byRegexp", "options": ".*k_inst_(lo|hi)_n_per_mm"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [4, 4]}},
                        {"id": "custom.lineWidth", "value": 1},
                    ],
                },
                {
                    "matcher": {"id": "byRegexp", "options": ".*k_inst_flagged_n_per_mm"},
                    "properties": _MARKS,
                },
                {
                    "matcher": {"id": "byRegexp", "options": ".*fit_r2"},
                    "properties": [
                        {"id": "unit", "value": "percentunit"},
                        {"id": "min", "value": 0},
                        {"id": "max", "value": 1},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                },
            ],
        },
    )
    board.panel(
        "Relaxation time constants",
        [
            series_query(
                "step",
                [raw("step", "tau_fast_s"), raw("step", "tau_slow_s")],
                chain,
                extra_where=step_where,
                by_time=None,
            )
        ],
        unit="s",
    )
    board.panel(
        "Load share (removal below 10 %)",
        [
            series_query(
                "load_share",
                [
                    (f"{name_of('load_share', 'share')} * 100", "share_pct"),
                    (f"{name_of('load_share', 'share_std')} * 100", "share_std_pct"),
                ],
                chain,
                by_time=None,
                # Only what the DSP found usable: a wrongly signed -94 % once sat in the band.
                extra_where=[f"{name_of('load_share', 'usable')} = true"],
            ),
            # The tests it did not use: apart, as marks on their own axis, never in the band.
            series_query(
                "load_share",
                [
                    (f"{name_of('load_share', 'share')} * 100", "share_unusable_pct"),
                    raw("load_share", "flags"),
                    raw("load_share", "status"),
                ],
                chain,
                by_time=None,
                extra_where=[f"{name_of('load_share', 'usable')} = false"],
            ),
        ],
        unit="percent",
        description=(
            "Usable load-share tests (docs/dsp.md) against the removal band, 0 to 10 % "
            "(Aarnes 2005, J Orthop Res: the frame may come off below 10 %; readiness itself "
            "is the DSP's decision, two days in a row). Red crosses on the right axis: tests "
            "the DSP did not use (flagged implausible, poor_fit, low_load_variation or "
            "sign_inconsistent, or a regression whose status is not ok); they count for "
            "nothing."
        ),
        field_config={
            "defaults": {
                "custom": {"thresholdsStyle": {"mode": "line+area"}},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "transparent", "value": None},
                        {"color": "green", "value": 0},
                        {"color": "transparent", "value": REMOVAL_SHARE_PCT},
                    ],
                },
            },
            "overrides": [
                {
                    "matcher": {"id": "byRegexp", "options": ".*share_unusable_pct"},
                    "properties": [
                        *_MARKS,
                        {"id": "custom.axisPlacement", "value": "right"},
                        {"id": "custom.axisLabel", "value": "not usable (%)"},
                        {"id": "custom.thresholdsStyle", "value": {"mode": "off"}},
                    ],
                },
            ],
        },
    )
    board.panel(
        "Consolidation index",
        [
            series_query(
                "daily",
                [agg("last", "daily", "consolidation_index")],
                chain,
                by_time="1d",
            )
        ],
        unit="percentunit",
    )
    board.panel(
        "Projected readiness",
        [
            series_query(
                "daily",
                # The DSP's date and its band of +/- 2 SE; -1 ("not projected") when its data
                # do not support one (docs/dsp.md, projection_status).
                [
                    _projected_ready_ms(),
                    _projected_ready_ms("projected_ready_lo_ns"),
                    _projected_ready_ms("projected_ready_hi_ns"),
                ],
                chain,
                by_time=None,
            )
        ],
        kind="stat",
        unit="dateTimeAsIso",
        field_config={"defaults": {"mappings": _NOT_PROJECTED}, "overrides": []},
        options={"reduceOptions": {"calcs": ["lastNotNull"]}},
    )
    board.panel(
        "Distraction steps: performed vs prescribed",
        [
            series_query(
                "daily",
                [
                    agg("last", "daily", "steps_done"),
                    agg("last", "daily", "steps_prescribed"),
                ],
                chain,
                by_time="1d",
            ),
            series_query(
                "event",
                [agg("count", "event", "delta_mm", "steps_recorded")],
                chain,
                extra_where=[f"{name_of('event', 'type')} = 'distraction_step'"],
                by_time="1d",
            ),
        ],
        kind="barchart",
        unit="short",
    )
    board.panel(
        "Device temperature and battery",
        [
            series_query(
                "frame",
                [agg("mean", "frame", "temp_c"), agg("min", "frame", "battery_pct")],
                chain,
            )
        ],
        unit="none",
    )
    board.annotation(
        "Alerts",
        Query(
            "alert",
            [raw("alert", "summary"), raw("alert", "severity")],
            where=filters("alert", chain),
        ),
        color="red",
        text="summary",
        tags="severity",
    )
    board.annotation(
        "Acknowledgements",
        Query(
            "alert_ack",
            [raw("alert_ack", "note"), raw("alert_ack", "alert_id")],
            where=filters("alert_ack", chain),
        ),
        color="green",
        text="note",
        tags="alert_id",
    )
    return board


def _diff(measurement: str, name: str) -> tuple[str, str]:
    # Counters are cumulative per process; the difference of per-interval maxima is the count
    # in that interval, and a restart (counter back to 0) gives no negative bar.
    return f"non_negative_difference(max({name_of(measurement, name)}))", name


def _quality() -> Board:
    chain: tuple[Variable, ...] = ("hub", "device")
    board = Board(
        "osteotel-quality",
        "osteotel / Data quality",
        "Is the data arriving whole? Frames received, stored, rejected; sequence gaps; spool "
        "depth; hub connectivity; signal quality; data completeness.",
        chain,
        "now-24h",
    )
    board.panel(
        "Frames received, stored, duplicate (per interval)",
        [
            series_query(
                "ingest_stats",
                [
                    _diff("ingest_stats", "frames_received"),
                    _diff("ingest_stats", "frames_stored"),
                    _diff("ingest_stats", "frames_duplicate"),
                ],
                chain,
                group_tags=("device", "instance"),
            )
        ],
        unit="short",
    )
    board.panel(
        "Frames in InfluxDB (per interval)",
        [series_query("frame", [agg("count", "frame", "seq", "frames")], chain)],
        unit="short",
    )
    board.panel(
        "Rejected messages by reason",
        [
            series_query(
                "rejection",
                [agg("count", "rejection", "payload_bytes", "rejected")],
                chain,
                group_tags=("reason",),
            ),
            series_query(
                "ingest_rejections",
                [_diff("ingest_rejections", "rejected")],
                chain,
                group_tags=("reason", "instance"),
            ),
        ],
        unit="short",
        kind="barchart",
    )
    board.panel(
        "Sequence gaps, late and restarted counters",
        [
            series_query(
                "ingest_stats",
                [
                    _diff("ingest_stats", "seq_gaps"),
                    _diff("ingest_stats", "frames_out_of_order"),
                    _diff("ingest_stats", "seq_resets"),
                ],
                chain,
                group_tags=("device", "instance"),
            )
        ],
        unit="short",
    )
    board.panel(
        "Spool depth (InfluxDB outage buffer)",
        [
            series_query(
                "ingest_status",
                [
                    agg("max", "ingest_status", "spool_bytes"),
                    agg("max", "ingest_status", "spool_max_bytes"),
                    agg("max", "ingest_status", "spool_batches"),
                ],
                chain,
                group_tags=("instance",),
            )
        ],
        unit="bytes",
    )
    board.panel(
        "Hub online",
        [
            series_query(
                "hub_status",
                [agg("last", "hub_status", "online")],
                chain,
                group_tags=("hub",),
            )
        ],
        kind="state-timeline",
    )
    board.panel(
        "Signal quality: spikes, flat and saturated samples",
        [
            series_query(
                "quality",
                [
                    agg("sum", "quality", "n_spikes"),
                    agg("sum", "quality", "n_flat"),
                    agg("sum", "quality", "n_saturated"),
                    agg("sum", "quality", "n_nonfinite"),
                ],
                chain,
                group_tags=("device", "channel"),
            )
        ],
        unit="short",
    )
    board.panel(
        "Data completeness",
        [_completeness(chain, by_time="$__interval")],
        unit="percent",
        description="Frames stored over frames stored and still missing (sequence gaps not "
        "filled late), since the ingest process started.",
    )
    return board


def build_dashboards() -> list[Dashboard]:
    """Build the three boards (fleet, patient/device, data quality) from the catalogue.

    Returns:
        The boards, each with its JSON model and every query it runs.
    """
    return [board.build() for board in (_fleet(), _patient(), _quality())]
