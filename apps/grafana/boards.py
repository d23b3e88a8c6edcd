"""The three boards, fleet, patient and device, data quality, each a table of panels.

Every value a panel shows is a field or tag written today (docs/schema.md); values no record
carries are computed in the query from fields that exist, or the panel is left out
(docs/grafana.md says which). Columns name the measurement's fields in braces
(`apps.grafana.panels.Query`); `Board.build()` turns each table into Grafana's JSON.
"""

from typing import Any

from apps.grafana.panels import (
    INTERVAL,
    Annotation,
    Board,
    Dashboard,
    Panel,
    Query,
    by_name,
    by_regexp,
)

__all__ = ["REMOVAL_SHARE_PCT", "build_dashboards"]

# The removal criterion: load share below 10 % (Aarnes 2005, J Orthop Res; docs/domain.md).
REMOVAL_SHARE_PCT = 10.0
# The estimator writes projected_ready_ns = -1 while no trend reaches the criterion.
_NOT_PROJECTED = [
    {"type": "range", "options": {"from": None, "to": 0, "result": {"text": "not projected"}}}
]
# A series drawn as red crosses, no line: estimates the DSP flagged.
_MARKS: dict[str, Any] = {
    "color": {"mode": "fixed", "fixedColor": "red"},
    "custom.drawStyle": "points",
    "custom.pointSize": 9,
    "custom.pointSymbol": "cross",
}
_RIGHT_AXIS = {"custom.axisPlacement": "right"}

# Whole days from the osteotomy to the end of the board's range, 0 on the osteotomy day
# (86400000000000 ns a day). InfluxQL has no `now()` in a SELECT, so the range end comes from
# Grafana's global `${__to}` (epoch ms). A device without an osteotomy date gets no value.
_TREATMENT_DAY = (
    "floor((${{__to}} * 1000000 - last({osteotomy_ns})) / 86400000000000) AS treatment_day"
)
# Frames stored over frames stored plus those still missing, in %, from ingest's cumulative
# counters (no record holds a completeness); gaps filled late (`frames_out_of_order`) are no
# longer missing.
_COMPLETENESS = (
    "100 * last({frames_stored}) / (last({frames_stored}) + last({seq_gaps})"
    " - last({frames_out_of_order})) AS completeness_pct"
)
_FRAMES = Query("frame", ("count({seq}) AS frames",), by_time=INTERVAL)
_CONSOLIDATION = Panel(
    "Consolidation index",
    (Query("daily", ("last({consolidation_index})",), by_time="1d"),),
    unit="percentunit",
)
_STEP = "{kind} = 'step'"
_ALERT_STATE_COLOURS = {
    "firing": {"color": "red", "index": 0},
    "pending": {"color": "yellow", "index": 1},
}


def _ready_ms(field: str) -> str:
    # Nanoseconds to milliseconds: Grafana's dateTime units take epoch ms.
    return f"last({{{field}}}) / 1000000 AS {field.replace('_ns', '_ms')}"


def _diff(name: str) -> str:
    # Counters are cumulative per process; the difference of per-interval maxima is the count
    # in that interval, and a restart (counter back to 0) gives no negative bar.
    return f"non_negative_difference(max({{{name}}}))"


def _ingest_counts(*names: str) -> Query:
    """Ingest's cumulative counters `names` as counts per interval, per device and instance."""
    return Query(
        "ingest_stats",
        tuple(map(_diff, names)),
        group_tags=("device", "instance"),
        by_time=INTERVAL,
    )


_FLEET = Board(
    "osteotel-fleet",
    "osteotel / Fleet",
    "Every active device: patient pseudonym, site, phase, treatment day, days monitored, "
    "elongation, consolidation, projected readiness, last seen, data completeness; the latest "
    "state of each device's alerts.",
    ("hub", "patient", "device"),
    "now-7d",
    (
        Panel(
            "Devices",
            (
                Query(
                    "device_info",
                    ("last({target_mm})", _TREATMENT_DAY),
                    where=("{active} = true",),
                    group_tags=("hub", "device", "patient", "site"),
                    time_filter=False,
                ),
                Query("daily", ("last({gained_mm})", "{phase}")),
                # One `daily` point per UTC day the device has been followed (days without
                # data included): kept beside the treatment day because the osteotomy date is
                # optional, and a gap between the two shows monitoring that began late.
                Query("daily", ("count({steps_done}) AS days_monitored",), time_filter=False),
                Query("daily", ("last({consolidation_index})",)),
                Query("daily", (_ready_ms("projected_ready_ns"),)),
                Query("frame", ("last({battery_pct})",)),
                Query("ingest_stats", (_COMPLETENESS,)),
            ),
            kind="table",
            width=24,
            height=12,
            description="One row per device; `time` of the battery column is when it was last "
            "seen. Treatment day counts whole days from the registry's osteotomy date to the "
            "end of the time range (0 on the osteotomy day; empty without a date); days "
            "monitored counts the daily estimates; data completeness is frames stored over "
            "frames stored and still missing, since the ingest process started.",
            overrides=(
                by_name("treatment_day", {"unit": "none", "decimals": 0}),
                by_name(
                    "projected_ready_ms", {"unit": "dateTimeAsIso", "mappings": _NOT_PROJECTED}
                ),
            ),
            transformations=(
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
            ),
        ),
        Panel(
            "Alerts: latest state per device and rule",
            (
                Query(
                    "alert",
                    ("last({state})", "last({summary})", "last({acked})"),
                    group_tags=("device", "patient", "rule", "severity"),
                    # An alert opened long ago may still be firing: the latest state counts.
                    time_filter=False,
                ),
            ),
            kind="table",
            width=24,
            description="One row per device, rule and severity: `firing` and `pending` rows "
            "are open alerts.",
            overrides=(
                by_name(
                    "state",
                    {
                        "custom.cellOptions": {"type": "color-background"},
                        "mappings": [{"type": "value", "options": _ALERT_STATE_COLOURS}],
                    },
                ),
            ),
        ),
        Panel("Frames stored per device", (_FRAMES,), unit="short"),
        _CONSOLIDATION,
    ),
)

_PATIENT = Board(
    "osteotel-patient",
    "osteotel / Patient and device",
    "One patient's distractor: forces, stiffness, relaxation, load share, consolidation and "
    "adherence; alerts and acknowledgements as annotations.",
    ("hub", "patient", "device"),
    "now-30d",
    (
        Panel(
            "Force and displacement",
            (
                Query("raw", ("mean({force_n})", "mean({disp_mm})"), by_time=INTERVAL),
                # Outside full-rate windows the storage tier keeps 1 s summaries
                # (docs/schema.md, `raw_1s`): drawn beside raw under the same names.
                Query(
                    "raw_1s",
                    ("mean({force_n_mean}) AS force_n", "mean({disp_mm_mean}) AS disp_mm"),
                    by_time=INTERVAL,
                ),
            ),
            unit="none",
            overrides=(by_regexp(".*disp_mm", {"unit": "lengthmm", **_RIGHT_AXIS}),),
        ),
        Panel(
            "Step stiffness (per distraction step) with its fit quality",
            (
                Query(
                    "step",
                    (
                        "{k_inst_n_per_mm}",
                        # k_inst_std_n_per_mm is the DSP's own standard error of k_inst
                        # (docs/dsp.md): the fit's covariance, widened where tau_fast is held,
                        # plus the displacement's uncertainty.
                        "{k_inst_n_per_mm} - 2 * {k_inst_std_n_per_mm} AS k_inst_lo_n_per_mm",
                        "{k_inst_n_per_mm} + 2 * {k_inst_std_n_per_mm} AS k_inst_hi_n_per_mm",
                        "{k_eq_n_per_mm}",
                        "{fit_r2}",
                    ),
                    where=(_STEP,),
                ),
                # The continuous tracker is written once a day, in the daily estimate.
                Query("daily", ("last({k_track_n_per_mm})",), by_time="1d"),
                # Steps the DSP flagged (low_snr, poor_fit, cut_short, ...) drawn again as
                # marks, so a k_inst that is no measurement is seen as such; `flags` is left
                # out when there is none.
                Query(
                    "step",
                    ("{k_inst_n_per_mm} AS k_inst_flagged_n_per_mm", "{flags}"),
                    where=(_STEP, "{flags} =~ /./"),
                ),
            ),
            unit="none",
            description="k in N/mm, per distraction step and the continuous tracker at each "
            "day's end. The dashed lines are k_inst ± 2 k_inst_std_n_per_mm, the DSP's "
            "standard error of it. Red crosses mark steps the DSP flagged (low_snr: k_inst "
            "within its own error or on a held tau_fast; poor_fit, cut_short, "
            "onset_uncertain, ramp_mismatch, separation, tau_fast_held): their k_inst is not a "
            "measurement to read. fit_r2 (right axis, 0..1) is the share of the relaxation the "
            "fit explains; empty when the step could not be fitted.",
            overrides=(
                by_regexp(
                    ".*k_inst_(lo|hi)_n_per_mm",
                    {"custom.lineStyle": {"fill": "dash", "dash": [4, 4]}, "custom.lineWidth": 1},
                ),
                by_regexp(".*k_inst_flagged_n_per_mm", _MARKS),
                by_regexp(".*fit_r2", {"unit": "percentunit", "min": 0, "max": 1, **_RIGHT_AXIS}),
            ),
        ),
        Panel(
            "Relaxation time constants",
            (Query("step", ("{tau_fast_s}", "{tau_slow_s}"), where=(_STEP,)),),
            unit="s",
        ),
        Panel(
            "Load share (removal below 10 %)",
            (
                # Only what the DSP found usable: a wrongly signed -94 % once sat in the band.
                Query(
                    "load_share",
                    ("{share} * 100 AS share_pct", "{share_std} * 100 AS share_std_pct"),
                    where=("{usable} = true",),
                ),
                # The tests it did not use: apart, as marks on their own axis, never in the band.
                Query(
                    "load_share",
                    ("{share} * 100 AS share_unusable_pct", "{flags}", "{status}"),
                    where=("{usable} = false",),
                ),
            ),
            unit="percent",
            description="Usable load-share tests (docs/dsp.md) against the removal band, 0 to "
            "10 % (Aarnes 2005, J Orthop Res: the frame may come off below 10 %; readiness "
            "itself is the DSP's decision, two days in a row). Red crosses on the right axis: "
            "tests the DSP did not use (flagged implausible, poor_fit, low_load_variation or "
            "sign_inconsistent, or a regression whose status is not ok); they count for "
            "nothing.",
            defaults={
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
            overrides=(
                by_regexp(
                    ".*share_unusable_pct",
                    {
                        **_MARKS,
                        **_RIGHT_AXIS,
                        "custom.axisLabel": "not usable (%)",
                        "custom.thresholdsStyle": {"mode": "off"},
                    },
                ),
            ),
        ),
        _CONSOLIDATION,
        Panel(
            "Projected readiness",
            (
                # The DSP's date and its band of +/- 2 SE; -1 ("not projected") when its data
                # do not support one (docs/dsp.md, projection_status).
                Query(
                    "daily",
                    (
                        _ready_ms("projected_ready_ns"),
                        _ready_ms("projected_ready_lo_ns"),
                        _ready_ms("projected_ready_hi_ns"),
                    ),
                ),
            ),
            kind="stat",
            unit="dateTimeAsIso",
            defaults={"mappings": _NOT_PROJECTED},
            options={"reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        Panel(
            "Distraction steps: performed vs prescribed",
            (
                Query("daily", ("last({steps_done})", "last({steps_prescribed})"), by_time="1d"),
                Query(
                    "event",
                    ("count({delta_mm}) AS steps_recorded",),
                    where=("{type} = 'distraction_step'",),
                    by_time="1d",
                ),
            ),
            kind="barchart",
            unit="short",
        ),
        Panel(
            "Device temperature and battery",
            (Query("frame", ("mean({temp_c})", "min({battery_pct})"), by_time=INTERVAL),),
            unit="none",
        ),
    ),
    annotations=(
        Annotation(
            "Alerts",
            Query("alert", ("{summary}", "{severity}"), group_tags=()),
            color="red",
            text="summary",
            tags="severity",
        ),
        Annotation(
            "Acknowledgements",
            Query("alert_ack", ("{note}", "{alert_id}"), group_tags=()),
            color="green",
            text="note",
            tags="alert_id",
        ),
    ),
)

_QUALITY = Board(
    "osteotel-quality",
    "osteotel / Data quality",
    "Is the data arriving whole? Frames received, stored, rejected; sequence gaps; spool "
    "depth; hub connectivity; signal quality; data completeness.",
    ("hub", "device"),
    "now-24h",
    (
        Panel(
            "Frames received, stored, duplicate (per interval)",
            (_ingest_counts("frames_received", "frames_stored", "frames_duplicate"),),
            unit="short",
        ),
        Panel("Frames in InfluxDB (per interval)", (_FRAMES,), unit="short"),
        Panel(
            "Rejected messages by reason",
            (
                Query(
                    "rejection",
                    ("count({payload_bytes}) AS rejected",),
                    group_tags=("reason",),
                    by_time=INTERVAL,
                ),
                Query(
                    "ingest_rejections",
                    (_diff("rejected"),),
                    group_tags=("reason", "instance"),
                    by_time=INTERVAL,
                ),
            ),
            unit="short",
            kind="barchart",
        ),
        Panel(
            "Sequence gaps, late and restarted counters",
            (_ingest_counts("seq_gaps", "frames_out_of_order", "seq_resets"),),
            unit="short",
        ),
        Panel(
            "Spool depth (InfluxDB outage buffer)",
            (
                Query(
                    "ingest_status",
                    ("max({spool_bytes})", "max({spool_max_bytes})", "max({spool_batches})"),
                    group_tags=("instance",),
                    by_time=INTERVAL,
                ),
            ),
            unit="bytes",
        ),
        Panel(
            "Hub online",
            (Query("hub_status", ("last({online})",), group_tags=("hub",), by_time=INTERVAL),),
            kind="state-timeline",
        ),
        Panel(
            "Signal quality: spikes, flat and saturated samples",
            (
                Query(
                    "quality",
                    (
                        "sum({n_spikes})",
                        "sum({n_flat})",
                        "sum({n_saturated})",
                        "sum({n_nonfinite})",
                    ),
                    group_tags=("device", "channel"),
                    by_time=INTERVAL,
                ),
            ),
            unit="short",
        ),
        Panel(
            "Data completeness",
            (Query("ingest_stats", (_COMPLETENESS,), by_time=INTERVAL),),
            unit="percent",
            description="Frames stored over frames stored and still missing (sequence gaps not "
            "filled late), since the ingest process started.",
        ),
        Panel(
            "How each device's estimator started (ingest's last start)",
            (
                Query(
                    "catchup",
                    ("last({status})", "last({frames})", "last({samples})", "last({events})"),
                    group_tags=("hub", "device"),
                    # A start long ago still tells how the estimates running now began.
                    time_filter=False,
                ),
            ),
            kind="table",
            width=24,
            description="caught_up: from the checkpoint, with what was stored after it; rebuilt: "
            "from the store; truncated or store_unreachable: the device's trends lack part of "
            "its history (the estimates_incomplete alert says so, docs/ingest.md).",
        ),
    ),
)


def build_dashboards() -> list[Dashboard]:
    """Build the three boards (fleet, patient/device, data quality) from the catalogue.

    Returns:
        The boards, each with its JSON model and every query it runs.
    """
    return [board.build() for board in (_FLEET, _PATIENT, _QUALITY)]
