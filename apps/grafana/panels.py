"""Panel and query building: InfluxQL made from catalogue names only, and a board's layout.

`Query` refuses a measurement the catalogue does not hold and `name_of` a tag or field it does
not list, so a board can only read what ingest and the alert service write (docs/schema.md).
Queries are plain InfluxQL with no subqueries, so the same boards read InfluxDB 1.x natively
and 2.x/3.x through their v1 compatibility API (docs/grafana.md).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from apps.grafana.catalogue import MEASUREMENTS, Measurement

__all__ = [
    "DATASOURCE_UID",
    "MIN_INTERVAL",
    "Board",
    "Dashboard",
    "PanelQuery",
    "Query",
    "Variable",
    "agg",
    "filters",
    "ident",
    "name_of",
    "raw",
    "series_query",
]

DATASOURCE_UID = "osteotel-influx"
# Grafana's JSON model version these boards were written against (Grafana 10.4/11).
_SCHEMA_VERSION = 39
# The smallest GROUP BY time() Grafana may choose: raw data is 100 Hz, but a board never
# needs finer than one point per second, and coarser keeps the queries cheap.
MIN_INTERVAL = "1s"


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

Variable = Literal["hub", "patient", "device"]


def ident(name: str) -> str:
    """`name` as a double-quoted InfluxQL identifier."""
    return '"' + name.replace('"', '\\"') + '"'


@dataclass
class Query:
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
        select = ", ".join(f"{expr} AS {ident(alias)}" for expr, alias in self.select)
        where = (["$timeFilter"] if self.time_filter else []) + self.where
        # Only catalogue names and fixed operators reach this string, never user input.
        sql = f"SELECT {select} FROM {ident(self.measurement)}"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        groups = ([f"time({self.by_time})"] if self.by_time else []) + [
            ident(tag) for tag in self.group_tags
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


def name_of(measurement: str, name: str) -> str:
    """A quoted field or tag name, refused unless the catalogue lists it."""
    if not _m(measurement).has(name):
        raise KeyError(f"{measurement!r} has no tag or field {name!r} in the catalogue")
    return ident(name)


def agg(function: str, measurement: str, name: str, alias: str | None = None) -> tuple[str, str]:
    """`function("name")` and its alias (the name unless given), for `Query.select`."""
    return f"{function}({name_of(measurement, name)})", alias or name


def raw(measurement: str, name: str, alias: str | None = None) -> tuple[str, str]:
    """`"name"` unaggregated and its alias, for `Query.select`."""
    return name_of(measurement, name), alias or name


def filters(measurement: str, variables: Sequence[Variable]) -> list[str]:
    """`"tag" =~ /^$var$/` for each board variable the measurement carries as a tag."""
    tags = _m(measurement).tags
    return [f"{ident(var)} =~ /^${var}$/" for var in variables if var in tags]


# --- panels ------------------------------------------------------------------------------------


def _datasource_ref() -> dict[str, str]:
    return {"type": "influxdb", "uid": DATASOURCE_UID}


@dataclass
class Board:
    """A board being laid out: panels fill rows of 24 grid units, left to right."""

    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
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
        queries: Sequence[Query],
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
        """Add a panel of `queries` at the next free place (width and height in grid units)."""
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

    def annotation(self, name: str, query: Query, *, color: str, text: str, tags: str) -> None:
        """Add an annotation query; `text` and `tags` name its result columns."""
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
        """The finished board: its JSON model and every query it runs."""
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
def _variable_query(var: Variable, chain: Sequence[Variable]) -> str:
    source = "device_info" if "patient" in chain else "frame"
    parents = list(chain[: chain.index(var)])
    where = filters(source, parents)
    text = f"SHOW TAG VALUES FROM {ident(source)} WITH KEY = {ident(var)}"
    return text + (" WHERE " + " AND ".join(where) if where else "")


def _variable(var: Variable, chain: Sequence[Variable]) -> dict[str, Any]:
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


def series_query(
    measurement: str,
    select: list[tuple[str, str]],
    variables: Sequence[Variable],
    *,
    extra_where: Sequence[str] = (),
    by_time: str | None = "$__interval",
    group_tags: tuple[str, ...] = ("device",),
) -> Query:
    """A panel query filtered by the board's variables, per `by_time` and `group_tags`."""
    return Query(
        measurement,
        select,
        where=filters(measurement, variables) + list(extra_where),
        group_tags=group_tags,
        by_time=by_time,
    )
