"""Grafana as code: the measurement catalogue, the three boards built from it, and `push`.

One source: `MEASUREMENTS` names every measurement, tag and field a board reads. Panel queries
are built only through `_Query`, which refuses a name the catalogue does not hold, and a test
compares the catalogue with the tables of docs/schema.md, so a rename on either side fails
the suite instead of leaving an empty panel.

    build_dashboards() -> list[Dashboard]          # the JSON models and their panel queries
    provisioning_files(...) -> dict[str, str]      # deploy/grafana/** as it must be on disk
    write_provisioning(root) / stale_files(root)   # `osteotel grafana build` and its check
    expand(influxql, ...) -> str                   # Grafana's macros, expanded as Grafana does
    push(url=..., token=...) -> list[PushAction]   # datasource + folder + boards via grafana-client

Queries are plain InfluxQL with no subqueries, so the same boards read InfluxDB 1.x natively
and 2.x/3.x through their v1 compatibility API (docs/grafana.md).
"""

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from osteotel.errors import OsteotelError

__all__ = [
    "DATASOURCE_UID",
    "FOLDER_UID",
    "MEASUREMENTS",
    "Dashboard",
    "GrafanaPushError",
    "Measurement",
    "PanelQuery",
    "PushAction",
    "build_dashboards",
    "datasource_model",
    "expand",
    "interval_for",
    "provisioning_files",
    "push",
    "stale_files",
    "write_provisioning",
]

DATASOURCE_UID = "osteotel-influx"
DATASOURCE_NAME = "osteotel InfluxDB"
FOLDER_UID = "osteotel"
FOLDER_TITLE = "osteotel"
# Grafana's JSON model version these boards were written against (Grafana 10.4/11).
_SCHEMA_VERSION = 39
# The smallest GROUP BY time() Grafana may choose: raw data is 100 Hz, but a board never
# needs finer than one point per second, and coarser keeps the queries cheap.
MIN_INTERVAL = "1s"
# The removal criterion: load share below 10 % (Aarnes 2005, J Orthop Res; DOMAIN.md).
REMOVAL_SHARE_PCT = 10.0


class GrafanaPushError(OsteotelError):
    """Grafana could not be reached or refused a request during `push`.

    Attributes:
        status: the HTTP status when Grafana answered, else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a board may read from one measurement.

    Attributes:
        name: the measurement name.
        tags: tag keys.
        fields: field keys documented in docs/schema.md (or, while pending, proposed).
        pending_fields: fields proposed here and not yet written nor documented.
        documented: False while the measurement is proposed here and not yet in docs/schema.md;
            its panels still run (the query must parse) but may return nothing.
        writer: which service writes it.
    """

    name: str
    tags: tuple[str, ...]
    fields: tuple[str, ...]
    pending_fields: tuple[str, ...] = ()
    documented: bool = True
    writer: str = "ingest"

    def has(self, name: str) -> bool:
        """Whether `name` is one of this measurement's tags or fields (pending included)."""
        return name in self.tags or name in self.fields or name in self.pending_fields


def _catalogue(*items: Measurement) -> dict[str, Measurement]:
    return {item.name: item for item in items}


MEASUREMENTS: Mapping[str, Measurement] = _catalogue(
    # Documented in docs/schema.md and written today.
    Measurement("raw", ("hub", "device"), ("force_n", "disp_mm", "ref_load_n")),
    Measurement(
        "frame",
        ("hub", "device", "encoding"),
        ("seq", "n", "rate_hz", "temp_c", "battery_pct"),
    ),
    Measurement(
        "event",
        ("hub", "device", "type"),
        ("v", "delta_mm", "source", "pct", "code", "detail"),
    ),
    Measurement("hub_status", ("hub",), ("online",)),
    Measurement(
        "rejection",
        ("reason", "hub"),
        ("topic", "field", "index", "detail", "payload_bytes"),
    ),
    Measurement(
        "ingest_stats",
        ("device", "instance"),
        (
            "frames_received",
            "frames_stored",
            "samples_stored",
            "frames_duplicate",
            "seq_gaps",
            "frames_out_of_order",
            "seq_resets",
        ),
    ),
    Measurement("ingest_rejections", ("hub", "reason", "instance"), ("rejected",)),
    Measurement(
        "ingest_status",
        ("instance",),
        ("spool_bytes", "spool_batches", "spool_max_bytes"),
        # Proposed: the Prometheus histogram osteotel_ingest_sample_to_stored_seconds has no
        # InfluxDB counterpart yet, and the board shows latency without Prometheus.
        pending_fields=("sample_to_stored_p50_s", "sample_to_stored_p99_s"),
    ),
    # Proposed here, named after the dsp result fields (docs/dsp.md); not written yet.
    Measurement(
        "device_info",
        ("hub", "device", "patient", "site"),
        ("active", "target_mm", "rate_mm_per_day", "steps_per_day", "latency_days"),
        documented=False,
    ),
    Measurement(
        "step",
        ("hub", "device", "kind"),
        (
            "delta_mm",
            "k_inst_n_per_mm",
            "k_eq_n_per_mm",
            "tau_fast_s",
            "tau_slow_s",
            "f_residual_n",
            "f_peak_n",
            "f_settled_n",
            "fit_rmse_n",
            "fit_r2",
        ),
        documented=False,
    ),
    Measurement(
        "stiffness",
        ("hub", "device"),
        (
            "k_inst_n_per_mm",
            "k_inst_std_n_per_mm",
            "k_eq_n_per_mm",
            "k_eq_std_n_per_mm",
            "tau_s",
            "confidence",
        ),
        documented=False,
    ),
    Measurement(
        "load_share",
        ("hub", "device"),
        ("share", "share_std", "f_offset_n", "r2", "ref_range_n"),
        documented=False,
    ),
    Measurement(
        "daily",
        ("hub", "device", "phase"),
        (
            "treatment_day",
            "consolidation_index",
            "projected_ready_ns",
            "steps_performed",
            "steps_prescribed",
            "mm_performed",
            "mm_prescribed",
            "completeness",
        ),
        documented=False,
    ),
    Measurement(
        "quality",
        ("hub", "device", "channel"),
        ("noise_rms", "n_flat", "n_saturated", "n_spikes", "n_nonfinite", "n_samples"),
        documented=False,
    ),
    Measurement(
        "alert",
        ("hub", "device", "severity", "rule"),
        ("alert_id", "state", "value", "message", "open_red", "open_yellow"),
        documented=False,
        writer="alerts",
    ),
    Measurement(
        "alert_ack",
        ("hub", "device"),
        ("alert_id", "by", "note"),
        documented=False,
        writer="alerts",
    ),
)


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One query of one panel, as stored in the board, with what it must return.

    Attributes:
        dashboard: the board's uid.
        panel: the panel's title.
        ref_id: the target's refId (A, B, ...).
        influxql: the query with Grafana's macros unexpanded.
        measurement: the measurement it reads.
        columns: the result columns, `time` first.
        group_tags: the tags of each series (GROUP BY).
    """

    dashboard: str
    panel: str
    ref_id: str
    influxql: str
    measurement: str
    columns: tuple[str, ...]
    group_tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Dashboard:
    """A board's Grafana JSON model and the queries it runs (panels, variables, annotations).

    Attributes:
        uid: the board's uid in Grafana.
        model: the JSON model, as `POST /api/dashboards/db` takes it under `dashboard`.
        queries: every panel and annotation query.
        variable_queries: every template variable query (`SHOW TAG VALUES ...`).
    """

    uid: str
    model: dict[str, Any]
    queries: list[PanelQuery]
    variable_queries: list[str]


# --- queries -----------------------------------------------------------------------------------

_Variable = Literal["hub", "patient", "device"]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


@dataclass
class _Query:
    """A SELECT built from catalogue names only; expected columns follow from it."""

    measurement: str
    select: list[tuple[str, str]]  # (expression, alias)
    where: list[str] = field(default_factory=list)
    group_tags: tuple[str, ...] = ()
    by_time: str | None = None
    time_filter: bool = True
    fill: str = "none"

    def __post_init__(self) -> None:
        if self.measurement not in MEASUREMENTS:
            raise KeyError(f"measurement {self.measurement!r} is not in the catalogue")

    def text(self) -> str:
        """The InfluxQL, macros unexpanded."""
        select = ", ".join(f"{expr} AS {_ident(alias)}" for expr, alias in self.select)
        where = (["$timeFilter"] if self.time_filter else []) + self.where
        # Only catalogue names and fixed operators reach this string, never user input.
        sql = f"SELECT {select} FROM {_ident(self.measurement)}"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        groups = ([f"time({self.by_time})"] if self.by_time else []) + [
            _ident(tag) for tag in self.group_tags
        ]
        if groups:
            sql += " GROUP BY " + ", ".join(groups)
        if self.by_time:
            sql += f" fill({self.fill})"
        return sql

    def columns(self) -> tuple[str, ...]:
        """`time` and then the aliases, as InfluxDB returns them."""
        return ("time", *(alias for _, alias in self.select))


def _m(measurement: str) -> Measurement:
    return MEASUREMENTS[measurement]


def _f(measurement: str, name: str) -> str:
    """A quoted field or tag name, refused unless the catalogue lists it."""
    if not _m(measurement).has(name):
        raise KeyError(f"{measurement!r} has no tag or field {name!r} in the catalogue")
    return _ident(name)


def _agg(function: str, measurement: str, name: str, alias: str | None = None) -> tuple[str, str]:
    return f"{function}({_f(measurement, name)})", alias or name


def _raw(measurement: str, name: str, alias: str | None = None) -> tuple[str, str]:
    return _f(measurement, name), alias or name


def _filters(measurement: str, variables: Sequence[_Variable]) -> list[str]:
    """`"tag" =~ /^$var$/` for each board variable the measurement carries as a tag."""
    tags = _m(measurement).tags
    return [f"{_ident(var)} =~ /^${var}$/" for var in variables if var in tags]


# --- panels ------------------------------------------------------------------------------------


def _datasource_ref() -> dict[str, str]:
    return {"type": "influxdb", "uid": DATASOURCE_UID}


@dataclass
class _Board:
    uid: str
    title: str
    description: str
    variables: tuple[_Variable, ...]
    time_from: str
    panels: list[dict[str, Any]] = field(default_factory=list)
    queries: list[PanelQuery] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    _y: int = 0
    _x: int = 0
    _row_h: int = 0

    def panel(
        self,
        title: str,
        queries: Sequence[_Query],
        *,
        kind: str = "timeseries",
        unit: str | None = None,
        width: int = 12,
        height: int = 8,
        table: bool = False,
        description: str = "",
        field_config: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        transformations: list[dict[str, Any]] | None = None,
    ) -> None:
        if self._x + width > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        targets = []
        for index, query in enumerate(queries):
            ref_id = chr(ord("A") + index)
            text = query.text()
            targets.append(
                {
                    "refId": ref_id,
                    "datasource": _datasource_ref(),
                    "rawQuery": True,
                    "query": text,
                    "resultFormat": "table" if table else "time_series",
                    # $col is the column alias, $tag_device the series' device: a readable legend.
                    "alias": f"$tag_{query.group_tags[0]} $col" if query.group_tags else "$col",
                }
            )
            self.queries.append(
                PanelQuery(
                    self.uid,
                    title,
                    ref_id,
                    text,
                    query.measurement,
                    query.columns(),
                    query.group_tags,
                )
            )
        defaults: dict[str, Any] = {"unit": unit} if unit else {}
        config = field_config or {"defaults": defaults, "overrides": []}
        config.setdefault("defaults", {}).update(defaults)
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": _datasource_ref(),
            "gridPos": {"x": self._x, "y": self._y, "w": width, "h": height},
            "interval": MIN_INTERVAL,
            "targets": targets,
            "fieldConfig": config,
            "options": options or {},
        }
        if transformations:
            panel["transformations"] = transformations
        self.panels.append(panel)
        self._x += width
        self._row_h = max(self._row_h, height)

    def annotation(self, name: str, query: _Query, *, color: str, text: str, tags: str) -> None:
        text_query = query.text()
        self.annotations.append(
            {
                "name": name,
                "datasource": _datasource_ref(),
                "enable": True,
                "iconColor": color,
                "query": text_query,
                "textColumn": text,
                "tagsColumn": tags,
            }
        )
        self.queries.append(
            PanelQuery(
                self.uid,
                f"annotation: {name}",
                "annotation",
                text_query,
                query.measurement,
                query.columns(),
                query.group_tags,
            )
        )

    def build(self) -> Dashboard:
        variables = [_variable(var, self.variables) for var in self.variables]
        builtin = {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }
        model = {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["osteotel"],
            "timezone": "utc",
            "editable": False,
            "graphTooltip": 1,
            "schemaVersion": _SCHEMA_VERSION,
            "time": {"from": self.time_from, "to": "now"},
            "refresh": "1m",
            "templating": {"list": variables},
            "annotations": {"list": [builtin, *self.annotations]},
            "panels": self.panels,
        }
        return Dashboard(self.uid, model, self.queries, [v["query"] for v in variables])


# Where each variable's values come from. Patients exist only in the registry, so the boards
# that need them read `device_info`, which ingest writes from the registry (docs/grafana.md).
def _variable_query(var: _Variable, chain: Sequence[_Variable]) -> str:
    source = "device_info" if "patient" in chain else "frame"
    parents = list(chain[: chain.index(var)])
    where = _filters(source, parents)
    text = f"SHOW TAG VALUES FROM {_ident(source)} WITH KEY = {_ident(var)}"
    return text + (" WHERE " + " AND ".join(where) if where else "")


def _variable(var: _Variable, chain: Sequence[_Variable]) -> dict[str, Any]:
    return {
        "name": var,
        "label": var.capitalize(),
        "type": "query",
        "datasource": _datasource_ref(),
        "query": _variable_query(var, chain),
        "definition": _variable_query(var, chain),
        # Refresh on time range change: a newly registered device appears without a reload.
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        # `.*` keeps "All" one short regex instead of every value joined.
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
    }


def _series_query(
    measurement: str,
    select: list[tuple[str, str]],
    variables: Sequence[_Variable],
    *,
    extra_where: Sequence[str] = (),
    by_time: str | None = "$__interval",
    group_tags: tuple[str, ...] = ("device",),
) -> _Query:
    return _Query(
        measurement,
        select,
        where=_filters(measurement, variables) + list(extra_where),
        group_tags=group_tags,
        by_time=by_time,
    )


def _fleet() -> _Board:
    chain: tuple[_Variable, ...] = ("hub", "patient", "device")
    board = _Board(
        "osteotel-fleet",
        "osteotel / Fleet",
        "Every active device: patient pseudonym, site, phase, treatment day, consolidation, "
        "projected readiness, last seen, open alerts, data completeness.",
        chain,
        "now-7d",
    )
    info = _Query(
        "device_info",
        [_agg("last", "device_info", "target_mm")],
        where=[*_filters("device_info", chain), f"{_f('device_info', 'active')} = true"],
        group_tags=("hub", "device", "patient", "site"),
        time_filter=False,
    )
    phase = _Query(
        "daily",
        [_agg("last", "daily", "treatment_day"), _raw("daily", "phase")],
        where=_filters("daily", chain),
        group_tags=("device",),
    )
    index = _Query(
        "daily",
        [_agg("last", "daily", "consolidation_index")],
        where=_filters("daily", chain),
        group_tags=("device",),
    )
    ready = _Query(
        "daily",
        # Nanoseconds to milliseconds: Grafana's dateTime units take epoch ms.
        [(f"last({_f('daily', 'projected_ready_ns')}) / 1000000", "projected_ready_ms")],
        where=_filters("daily", chain),
        group_tags=("device",),
    )
    complete = _Query(
        "daily",
        [(f"last({_f('daily', 'completeness')}) * 100", "completeness_pct")],
        where=_filters("daily", chain),
        group_tags=("device",),
    )
    seen = _Query(
        "frame",
        [_agg("last", "frame", "battery_pct")],
        where=_filters("frame", chain),
        group_tags=("device",),
    )
    red = _Query(
        "alert",
        [_agg("last", "alert", "open_red")],
        where=_filters("alert", chain),
        group_tags=("device",),
        time_filter=False,
    )
    yellow = _Query(
        "alert",
        [_agg("last", "alert", "open_yellow")],
        where=_filters("alert", chain),
        group_tags=("device",),
        time_filter=False,
    )
    board.panel(
        "Devices",
        [info, phase, index, ready, complete, seen, red, yellow],
        kind="table",
        table=True,
        width=24,
        height=12,
        description="One row per device; `time` of the battery column is when it was last seen.",
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "renameByName": {
                        "Time": "last seen",
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
                    "matcher": {"id": "byName", "options": "projected_ready_ms"},
                    "properties": [{"id": "unit", "value": "dateTimeAsIso"}],
                },
                {
                    "matcher": {"id": "byName", "options": "open_red"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                        {
                            "id": "thresholds",
                            "value": {
                                "mode": "absolute",
                                "steps": [
                                    {"color": "transparent", "value": None},
                                    {"color": "red", "value": 1},
                                ],
                            },
                        },
                    ],
                },
            ],
        },
    )
    board.panel(
        "Frames stored per device",
        [_series_query("frame", [_agg("count", "frame", "seq", "frames")], chain)],
        unit="short",
        width=12,
    )
    board.panel(
        "Consolidation index",
        [
            _series_query(
                "daily",
                [_agg("last", "daily", "consolidation_index")],
                chain,
                by_time="1d",
            )
        ],
        unit="percentunit",
        width=12,
    )
    return board


def _patient() -> _Board:
    chain: tuple[_Variable, ...] = ("hub", "patient", "device")
    board = _Board(
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
            _series_query(
                "raw",
                [_agg("mean", "raw", "force_n"), _agg("mean", "raw", "disp_mm")],
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
    step_where = [f"{_f('step', 'kind')} = 'step'"]
    board.panel(
        "Step stiffness (per distraction step) and fit quality",
        [
            _series_query(
                "step",
                [
                    _raw("step", "k_inst_n_per_mm"),
                    _raw("step", "k_eq_n_per_mm"),
                    _raw("step", "fit_r2"),
                ],
                chain,
                extra_where=step_where,
                by_time=None,
            ),
            _series_query(
                "stiffness",
                [
                    _agg("mean", "stiffness", "k_eq_n_per_mm"),
                    _agg("mean", "stiffness", "k_eq_std_n_per_mm"),
                    _agg("mean", "stiffness", "confidence"),
                ],
                chain,
            ),
        ],
        unit="none",
        description="k in N/mm; fit_r2 and confidence are 0..1.",
    )
    board.panel(
        "Relaxation time constants",
        [
            _series_query(
                "step",
                [_raw("step", "tau_fast_s"), _raw("step", "tau_slow_s")],
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
            _series_query(
                "load_share",
                [
                    (f"{_f('load_share', 'share')} * 100", "share_pct"),
                    (f"{_f('load_share', 'share_std')} * 100", "share_std_pct"),
                ],
                chain,
                by_time=None,
            )
        ],
        unit="percent",
        description="Aarnes 2005 (J Orthop Res): the frame may come off below 10 %.",
        field_config={
            "defaults": {
                "custom": {"thresholdsStyle": {"mode": "line+area"}},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "green", "value": None},
                        {"color": "transparent", "value": REMOVAL_SHARE_PCT},
                    ],
                },
            },
            "overrides": [],
        },
    )
    board.panel(
        "Consolidation index",
        [
            _series_query(
                "daily",
                [_agg("last", "daily", "consolidation_index")],
                chain,
                by_time="1d",
            )
        ],
        unit="percentunit",
    )
    board.panel(
        "Projected readiness",
        [
            _series_query(
                "daily",
                [(f"last({_f('daily', 'projected_ready_ns')}) / 1000000", "projected_ready_ms")],
                chain,
                by_time=None,
            )
        ],
        kind="stat",
        unit="dateTimeAsIso",
        options={"reduceOptions": {"calcs": ["lastNotNull"]}},
    )
    board.panel(
        "Distraction steps: performed vs prescribed",
        [
            _series_query(
                "daily",
                [
                    _agg("last", "daily", "steps_performed"),
                    _agg("last", "daily", "steps_prescribed"),
                ],
                chain,
                by_time="1d",
            ),
            _series_query(
                "event",
                [_agg("count", "event", "delta_mm", "steps_recorded")],
                chain,
                extra_where=[f"{_f('event', 'type')} = 'distraction_step'"],
                by_time="1d",
            ),
        ],
        kind="barchart",
        unit="short",
    )
    board.panel(
        "Device temperature and battery",
        [
            _series_query(
                "frame",
                [_agg("mean", "frame", "temp_c"), _agg("min", "frame", "battery_pct")],
                chain,
            )
        ],
        unit="none",
    )
    board.annotation(
        "Alerts",
        _Query(
            "alert",
            [_raw("alert", "message"), _raw("alert", "severity")],
            where=_filters("alert", chain),
        ),
        color="red",
        text="message",
        tags="severity",
    )
    board.annotation(
        "Acknowledgements",
        _Query(
            "alert_ack",
            [_raw("alert_ack", "note"), _raw("alert_ack", "alert_id")],
            where=_filters("alert_ack", chain),
        ),
        color="green",
        text="note",
        tags="alert_id",
    )
    return board


def _diff(measurement: str, name: str) -> tuple[str, str]:
    # Counters are cumulative per process; the difference of per-interval maxima is the count
    # in that interval, and a restart (counter back to 0) gives no negative bar.
    return f"non_negative_difference(max({_f(measurement, name)}))", name


def _quality() -> _Board:
    chain: tuple[_Variable, ...] = ("hub", "device")
    board = _Board(
        "osteotel-quality",
        "osteotel / Data quality",
        "Is the data arriving whole? Frames received, stored, rejected; sequence gaps; spool "
        "depth; latency; hub connectivity; signal quality.",
        chain,
        "now-24h",
    )
    board.panel(
        "Frames received, stored, duplicate (per interval)",
        [
            _series_query(
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
        [_series_query("frame", [_agg("count", "frame", "seq", "frames")], chain)],
        unit="short",
    )
    board.panel(
        "Rejected messages by reason",
        [
            _series_query(
                "rejection",
                [_agg("count", "rejection", "payload_bytes", "rejected")],
                chain,
                group_tags=("reason",),
            ),
            _series_query(
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
            _series_query(
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
            _series_query(
                "ingest_status",
                [
                    _agg("max", "ingest_status", "spool_bytes"),
                    _agg("max", "ingest_status", "spool_max_bytes"),
                    _agg("max", "ingest_status", "spool_batches"),
                ],
                chain,
                group_tags=("instance",),
            )
        ],
        unit="bytes",
    )
    board.panel(
        "Latency: last sample to durable storage",
        [
            _series_query(
                "ingest_status",
                [
                    _agg("max", "ingest_status", "sample_to_stored_p50_s"),
                    _agg("max", "ingest_status", "sample_to_stored_p99_s"),
                ],
                chain,
                group_tags=("instance",),
            )
        ],
        unit="s",
    )
    board.panel(
        "Hub online",
        [
            _series_query(
                "hub_status",
                [_agg("last", "hub_status", "online")],
                chain,
                group_tags=("hub",),
            )
        ],
        kind="state-timeline",
    )
    board.panel(
        "Signal quality: spikes, flat and saturated samples",
        [
            _series_query(
                "quality",
                [
                    _agg("sum", "quality", "n_spikes"),
                    _agg("sum", "quality", "n_flat"),
                    _agg("sum", "quality", "n_saturated"),
                    _agg("sum", "quality", "n_nonfinite"),
                ],
                chain,
                group_tags=("device", "channel"),
            )
        ],
        unit="short",
    )
    board.panel(
        "Data completeness per day",
        [
            _series_query(
                "daily",
                [(f"last({_f('daily', 'completeness')}) * 100", "completeness_pct")],
                chain,
                by_time="1d",
            )
        ],
        unit="percent",
    )
    return board


def build_dashboards() -> list[Dashboard]:
    """Build the three boards (fleet, patient/device, data quality) from the catalogue.

    Returns:
        The boards, each with its JSON model and every query it runs.
    """
    return [board.build() for board in (_fleet(), _patient(), _quality())]


# --- provisioning files ------------------------------------------------------------------------


def datasource_model(*, influx_url: str, database: str, token: str | None = None) -> dict[str, Any]:
    """The InfluxDB datasource as Grafana's `POST /api/datasources` takes it.

    InfluxQL mode: InfluxDB 1.x natively, 2.x and 3.x through their v1 compatibility API
    (a DBRP mapping from `database` to the bucket), authorised by an `Authorization: Token`
    header when a token is given.

    Args:
        influx_url: the InfluxDB base URL as Grafana's server reaches it.
        database: the InfluxQL database (the DBRP name on 2.x/3.x).
        token: the InfluxDB token Grafana reads with; None for an open 1.x server.

    Returns:
        The datasource model.
    """
    model: dict[str, Any] = {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": "influxdb",
        "access": "proxy",
        "url": influx_url,
        "isDefault": True,
        "jsonData": {
            "version": "InfluxQL",
            "dbName": database,
            "httpMode": "GET",
            "timeInterval": MIN_INTERVAL,
        },
    }
    if token is not None:
        model["jsonData"]["httpHeaderName1"] = "Authorization"
        model["secureJsonData"] = {"httpHeaderValue1": f"Token {token}"}
    return model


_DATASOURCE_YAML = f"""\
# Generated by `osteotel grafana build` from osteotel/grafana.py; do not edit by hand.
# Grafana replaces $VARIABLES from its environment (deploy/env.example).
apiVersion: 1
datasources:
  - name: {DATASOURCE_NAME}
    uid: {DATASOURCE_UID}
    type: influxdb
    access: proxy
    url: $OSTEOTEL_GRAFANA_INFLUX_URL
    isDefault: true
    jsonData:
      version: InfluxQL
      dbName: $OSTEOTEL_GRAFANA_INFLUX_DATABASE
      httpMode: GET
      timeInterval: {MIN_INTERVAL}
      httpHeaderName1: Authorization
    secureJsonData:
      httpHeaderValue1: Token $OSTEOTEL_GRAFANA_INFLUX_TOKEN
"""

_DASHBOARDS_YAML = f"""\
# Generated by `osteotel grafana build` from osteotel/grafana.py; do not edit by hand.
apiVersion: 1
providers:
  - name: osteotel
    folder: {FOLDER_TITLE}
    folderUid: {FOLDER_UID}
    type: file
    disableDeletion: true
    allowUiUpdates: false
    updateIntervalSeconds: 60
    options:
      path: /var/lib/grafana/dashboards/osteotel
"""


def provisioning_files() -> dict[str, str]:
    """Every file of `deploy/grafana/` as it must be, keyed by path relative to it.

    Returns:
        `provisioning/datasources/osteotel.yaml`, `provisioning/dashboards/osteotel.yaml` and
        `dashboards/<uid>.json` for each board.
    """
    files = {
        "provisioning/datasources/osteotel.yaml": _DATASOURCE_YAML,
        "provisioning/dashboards/osteotel.yaml": _DASHBOARDS_YAML,
    }
    for board in build_dashboards():
        files[f"dashboards/{board.uid}.json"] = json.dumps(board.model, indent=2) + "\n"
    return files


def write_provisioning(root: Path) -> list[Path]:
    """Write `provisioning_files()` under `root` (`osteotel grafana build`).

    Args:
        root: the directory, normally `deploy/grafana`.

    Returns:
        The files written.
    """
    written = []
    for relative, text in provisioning_files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_files(root: Path) -> list[str]:
    """The files under `root` that differ from what `write_provisioning` would write.

    Args:
        root: the directory, normally `deploy/grafana`.

    Returns:
        Relative paths of missing or different files, and of board JSON files that no board
        generates; empty when the directory is up to date.
    """
    expected = provisioning_files()
    stale = [
        relative
        for relative, text in expected.items()
        if not (root / relative).is_file() or (root / relative).read_text("utf-8") != text
    ]
    stale += [
        str(path.relative_to(root))
        for path in sorted((root / "dashboards").glob("*.json"))
        if str(path.relative_to(root)) not in expected
    ]
    return stale


# --- Grafana's macro expansion -----------------------------------------------------------------

_NICE_INTERVALS_MS = (
    1,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    20_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_200_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    604_800_000,
    2_592_000_000,
    31_536_000_000,
)
_UNITS_MS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def _duration_ms(text: str) -> int:
    match = _DURATION.match(text.lstrip("<>"))
    if match is None:
        raise ValueError(f"not a Grafana interval: {text!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _format_ms(ms: int) -> str:
    for unit, size in _UNITS_MS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def interval_for(
    start_ns: int, end_ns: int, *, max_data_points: int = 1000, min_interval: str = MIN_INTERVAL
) -> str:
    """The `$__interval` Grafana chooses for a time range, as Grafana's rounding does.

    The range divided by the panel's data points is rounded up to the next "nice" interval
    (1 s, 2 s, 5 s, 10 s, 15 s, 30 s, 1 m, ...), never below the panel's minimum interval.

    Args:
        start_ns: start of the range, UTC epoch ns.
        end_ns: end of the range, UTC epoch ns.
        max_data_points: points the panel asks for (about its width in pixels).
        min_interval: the panel's or datasource's minimum, e.g. `1s` or `>10s`.

    Returns:
        The interval as InfluxQL writes it, e.g. `30s`, `5m`, `1h`.
    """
    raw_ms = max(1, math.ceil((end_ns - start_ns) / 1e6 / max_data_points))
    nice = next((ms for ms in _NICE_INTERVALS_MS if ms >= raw_ms), _NICE_INTERVALS_MS[-1])
    return _format_ms(max(nice, _duration_ms(min_interval)))


_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)")


def _regex_value(values: Sequence[str]) -> str:
    # Multi-value variables are regex-escaped and joined as an alternation, as Grafana's
    # InfluxDB datasource does; "All" is the variable's allValue, inserted unescaped.
    if list(values) == ["$__all"]:
        return ".*"
    escaped = [_REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(
    influxql: str,
    *,
    start_ns: int,
    end_ns: int,
    variables: Mapping[str, Sequence[str]],
    max_data_points: int = 1000,
    min_interval: str = MIN_INTERVAL,
) -> str:
    """Expand Grafana's macros in an InfluxQL query the way Grafana's InfluxDB datasource does.

    `$timeFilter` becomes `time >= <start>ms and time <= <end>ms` (epoch milliseconds),
    `$__interval`/`$interval` the rounded interval, `$__interval_ms` its milliseconds, and
    each template variable (`$name`, `${name}`, `[[name]]`) its regex-escaped value(s).

    Args:
        influxql: the stored query.
        start_ns: range start, UTC epoch ns.
        end_ns: range end, UTC epoch ns.
        variables: selected values per variable; `["$__all"]` selects All.
        max_data_points: points the panel asks for.
        min_interval: the panel's minimum interval.

    Returns:
        The query InfluxDB receives.

    Raises:
        KeyError: the query uses a variable that `variables` does not give.
    """
    interval = interval_for(
        start_ns, end_ns, max_data_points=max_data_points, min_interval=min_interval
    )
    start_ms, end_ms = start_ns // 1_000_000, end_ns // 1_000_000
    text = influxql.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    text = text.replace("$__interval_ms", str(_duration_ms(interval)))
    text = text.replace("$__interval", interval).replace("$interval", interval)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return _regex_value(variables[name])

    return _VARIABLE.sub(substitute, text)


# --- push --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushAction:
    """What `push` did to one Grafana object.

    Attributes:
        kind: `datasource`, `folder` or `dashboard`.
        uid: the object's uid.
        action: `created` or `updated`.
    """

    kind: Literal["datasource", "folder", "dashboard"]
    uid: str
    action: Literal["created", "updated"]


def push(
    *,
    url: str,
    token: str | None,
    datasource: Mapping[str, Any],
    dashboards: Iterable[Dashboard] | None = None,
    timeout_s: float = 10.0,
) -> list[PushAction]:
    """Create or update the datasource, the folder and the boards in a running Grafana.

    Args:
        url: Grafana's base URL, e.g. `https://grafana.example:3000`; user:password in the
            URL is used when `token` is None.
        token: a Grafana service-account token (Bearer), or None.
        datasource: the model from `datasource_model`.
        dashboards: the boards; all of `build_dashboards()` when None.
        timeout_s: per-request timeout, in seconds.

    Returns:
        One action per object, in the order done.

    Raises:
        GrafanaPushError: Grafana was unreachable or refused a request.
    """
    # Imported on use: grafana-client pulls in an HTTP stack the other commands never need.
    import niquests  # noqa: PLC0415
    from grafana_client.api import GrafanaApi  # noqa: PLC0415
    from grafana_client.client import GrafanaClientError, GrafanaException  # noqa: PLC0415

    boards = list(dashboards) if dashboards is not None else build_dashboards()
    api = GrafanaApi.from_url(url=url, credential=token, timeout=timeout_s)
    actions: list[PushAction] = []
    try:
        uid = str(datasource["uid"])
        try:
            api.datasource.get_datasource_by_uid(uid)
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.datasource.create_datasource(dict(datasource))
            actions.append(PushAction("datasource", uid, "created"))
        else:
            api.datasource.update_datasource_by_uid(uid, dict(datasource))
            actions.append(PushAction("datasource", uid, "updated"))
        try:
            api.folder.get_folder(FOLDER_UID)
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            actions.append(PushAction("folder", FOLDER_UID, "created"))
        for board in boards:
            try:
                api.dashboard.get_dashboard(board.uid)
                action: Literal["created", "updated"] = "updated"
            except GrafanaClientError as exc:
                if exc.status_code != 404:
                    raise
                action = "created"
            api.dashboard.update_dashboard(
                {
                    "dashboard": {**board.model, "id": None},
                    "folderUid": FOLDER_UID,
                    "overwrite": True,
                    "message": "osteotel grafana push",
                }
            )
            actions.append(PushAction("dashboard", board.uid, action))
    except GrafanaException as exc:
        status = exc.status_code or None
        raise GrafanaPushError(f"grafana refused: {exc}", status=status) from exc
    except niquests.exceptions.RequestException as exc:
        raise GrafanaPushError(f"grafana unreachable at {url}: {exc}") from exc
    return actions
