"""Boards as tables of panels, and the one builder that turns them into Grafana's JSON.

A board is data: a `Board` lists its `Panel`s, each with its `Query`s, unit, size, overrides
(apps/grafana/boards.py); `Board.build()` places the panels and writes the JSON model and the
list of queries it runs. A query's columns and conditions name the measurement's tags and
fields in braces, `"last({gained_mm})"`, and the builder refuses a measurement, tag or field
the catalogue does not list, so a board can only read what ingest and the alert service write
(docs/schema.md). Queries are plain InfluxQL with no subqueries, so the same boards read
InfluxDB 1.x natively and 2.x/3.x through their v1 compatibility API (docs/grafana.md).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from string import Formatter
from typing import Any, Literal

from apps.grafana.catalogue import MEASUREMENTS

__all__ = [
    "DATASOURCE_UID",
    "INTERVAL",
    "MIN_INTERVAL",
    "Annotation",
    "Board",
    "Dashboard",
    "Panel",
    "PanelQuery",
    "Query",
    "Variable",
    "by_name",
    "by_regexp",
    "filters",
    "ident",
    "name_of",
]

DATASOURCE_UID = "osteotel-influx"
# Grafana's JSON model version these boards were written against (Grafana 10.4/11).
_SCHEMA_VERSION = 39
# The smallest GROUP BY time() Grafana may choose: raw data is 100 Hz, but a board never
# needs finer than one point per second, and coarser keeps the queries cheap.
MIN_INTERVAL = "1s"
# GROUP BY time($__interval): the interval Grafana picks for the range and the panel's width.
INTERVAL = "$__interval"
# A board is 24 grid units wide.
_GRID_WIDTH = 24


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


def name_of(measurement: str, name: str) -> str:
    """A quoted field or tag name, refused unless the catalogue lists it."""
    if not MEASUREMENTS[measurement].has(name):
        raise KeyError(f"{measurement!r} has no tag or field {name!r} in the catalogue")
    return ident(name)


def filters(measurement: str, variables: Sequence[Variable]) -> list[str]:
    """`"tag" =~ /^$var$/` for each board variable the measurement carries as a tag."""
    tags = MEASUREMENTS[measurement].tags
    return [f"{ident(var)} =~ /^${var}$/" for var in variables if var in tags]


def _names(template: str) -> list[str]:
    """The names in braces in `template` (`{{` and `}}` are literal braces)."""
    return [name for _, name, _, _ in Formatter().parse(template) if name]


def _split(column: str) -> tuple[str, str]:
    """A column's expression and its name: what follows ` AS `, or else the one name it reads."""
    expression, _, alias = column.partition(" AS ")
    if not alias:
        names = set(_names(expression))
        if len(names) != 1:
            raise ValueError(f"column {column!r} reads {len(names)} names: name it with AS")
        [alias] = names
    return expression, alias


@dataclass(frozen=True, slots=True)
class Query:
    """One query of a panel: columns of one measurement, filtered by the board's variables.

    Attributes:
        measurement: the measurement it reads.
        select: the columns, InfluxQL with each tag or field in braces (`"last({gained_mm})"`,
            `"{share} * 100 AS share_pct"`); named by `AS`, or else by the one name read.
        where: conditions besides the time range and the board's variables, names in braces.
        group_tags: the tags of each series (GROUP BY).
        by_time: the GROUP BY time() interval (`INTERVAL`, `"1d"`), or None for the points.
        time_filter: False reads all time (the latest state of something set long ago).
    """

    measurement: str
    select: tuple[str, ...]
    where: tuple[str, ...] = ()
    group_tags: tuple[str, ...] = ("device",)
    by_time: str | None = None
    time_filter: bool = True

    def _quoted(self, template: str) -> str:
        return template.format_map({n: name_of(self.measurement, n) for n in _names(template)})

    def text(self, variables: Sequence[Variable]) -> str:
        """The InfluxQL for a board of `variables`, macros unexpanded."""
        if self.measurement not in MEASUREMENTS:
            raise KeyError(f"measurement {self.measurement!r} is not in the catalogue")
        select = ", ".join(
            f"{self._quoted(expression)} AS {ident(alias)}"
            for expression, alias in map(_split, self.select)
        )
        where = [
            *(["$timeFilter"] if self.time_filter else []),
            *filters(self.measurement, variables),
            *map(self._quoted, self.where),
        ]
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
            sql += " fill(none)"
        return sql

    def columns(self) -> tuple[str, ...]:
        """`time` and then the column names, as InfluxDB returns them."""
        return ("time", *(alias for _, alias in map(_split, self.select)))


# --- panels ------------------------------------------------------------------------------------


def _override(matcher: str, options: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "matcher": {"id": matcher, "options": options},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def by_name(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """A fieldConfig override of the field (table column) `name`: property id to value."""
    return _override("byName", name, properties)


def by_regexp(pattern: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """A fieldConfig override of the series whose name matches `pattern`: property to value."""
    return _override("byRegexp", pattern, properties)


@dataclass(frozen=True, slots=True)
class Panel:
    """One row of a board's table: a panel, its queries and how it draws them.

    Attributes:
        title: the panel's title, unique on its board.
        queries: its targets, refIds A, B, ... in this order.
        unit: Grafana's unit of every field unless an override says otherwise.
        kind: Grafana's panel type; a `table` gets its results as tables.
        width: grid units of the board's 24; panels fill rows left to right.
        height: grid units.
        description: the panel's help text.
        defaults: fieldConfig defaults besides the unit (thresholds, value mappings).
        overrides: fieldConfig overrides (`by_name`, `by_regexp`).
        options: the panel type's options.
        transformations: Grafana transformations, in order.
    """

    title: str
    queries: tuple[Query, ...]
    unit: str | None = None
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[dict[str, Any], ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    transformations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Annotation:
    """An annotation query; `text` and `tags` name its result columns."""

    name: str
    query: Query
    color: str
    text: str
    tags: str


def _datasource_ref() -> dict[str, str]:
    return {"type": "influxdb", "uid": DATASOURCE_UID}


def _places(panels: Sequence[Panel]) -> list[tuple[int, int]]:
    """Each panel's (x, y): left to right, a new row where the next one does not fit."""
    places = []
    x = y = row_height = 0
    for panel in panels:
        if x + panel.width > _GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        places.append((x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return places


@dataclass(frozen=True, slots=True)
class Board:
    """A board as a table: its variables, time range, panels and annotations."""

    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    time_from: str
    panels: tuple[Panel, ...]
    annotations: tuple[Annotation, ...] = ()

    def _query(self, title: str, ref_id: str, query: Query) -> PanelQuery:
        return PanelQuery(
            self.uid,
            title,
            ref_id,
            query.text(self.variables),
            query.measurement,
            query.columns(),
            query.group_tags,
        )

    def _panel(self, number: int, panel: Panel, x: int, y: int) -> dict[str, Any]:
        targets = [
            {
                "refId": chr(ord("A") + index),
                "datasource": _datasource_ref(),
                "rawQuery": True,
                "query": query.text(self.variables),
                "resultFormat": "table" if panel.kind == "table" else "time_series",
                # $col is the column alias, $tag_device the series' device: a readable legend.
                "alias": f"$tag_{query.group_tags[0]} $col" if query.group_tags else "$col",
            }
            for index, query in enumerate(panel.queries)
        ]
        unit = {"unit": panel.unit} if panel.unit else {}
        model: dict[str, Any] = {
            "id": number,
            "type": panel.kind,
            "title": panel.title,
            "description": panel.description,
            "datasource": _datasource_ref(),
            "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
            "interval": MIN_INTERVAL,
            "targets": targets,
            "fieldConfig": {
                "defaults": {**panel.defaults, **unit},
                "overrides": [*panel.overrides],
            },
            "options": dict(panel.options),
        }
        if panel.transformations:
            model["transformations"] = [*panel.transformations]
        return model

    def _annotation(self, annotation: Annotation) -> dict[str, Any]:
        return {
            "name": annotation.name,
            "datasource": _datasource_ref(),
            "enable": True,
            "iconColor": annotation.color,
            "query": annotation.query.text(self.variables),
            "textColumn": annotation.text,
            "tagsColumn": annotation.tags,
        }

    def build(self) -> Dashboard:
        """The board's JSON model and every query it runs."""
        panels = [
            self._panel(number, panel, x, y)
            for number, (panel, (x, y)) in enumerate(
                zip(self.panels, _places(self.panels), strict=True), start=1
            )
        ]
        queries = [
            self._query(panel.title, chr(ord("A") + index), query)
            for panel in self.panels
            for index, query in enumerate(panel.queries)
        ] + [self._query(f"annotation: {a.name}", "annotation", a.query) for a in self.annotations]
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
            "annotations": {"list": [builtin, *map(self._annotation, self.annotations)]},
            "panels": panels,
        }
        return Dashboard(self.uid, model, queries, [v["query"] for v in variables])


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
