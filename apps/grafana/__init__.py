"""Grafana as code: the measurement catalogue, the three boards built from it, and `push`.

One source: `MEASUREMENTS` (catalogue.py) names every measurement, tag and field a board reads,
exactly as ingest and the alert service write them. Each board is a table of panels
(boards.py) that one builder (`panels.Board.build`) turns into Grafana's JSON; panel queries
are `panels.Query`s, refused at build when they name what the catalogue does not hold, and a
test compares the catalogue with the tables of docs/schema.md, so a rename on either side
fails the suite instead of leaving an empty panel.

    build_dashboards() -> list[Dashboard]          # boards.py: JSON models and panel queries
    provisioning_files(...) -> dict[str, str]      # provisioning.py: deploy/grafana/** on disk
    write_provisioning(root) / stale_files(root)   # `osteotel grafana build` and its check
    expand(influxql, ...) -> str                   # expand.py: Grafana's macros, as Grafana does
    push(url=..., token=...) -> list[PushAction]   # push.py: datasource + folder + boards
"""

from apps.grafana.boards import REMOVAL_SHARE_PCT, build_dashboards
from apps.grafana.catalogue import MEASUREMENTS, Measurement
from apps.grafana.expand import expand, interval_for
from apps.grafana.panels import DATASOURCE_UID, MIN_INTERVAL, Dashboard, PanelQuery
from apps.grafana.provisioning import (
    DATASOURCE_NAME,
    FOLDER_TITLE,
    FOLDER_UID,
    datasource_model,
    provisioning_files,
    stale_files,
    write_provisioning,
)
from apps.grafana.push import GrafanaPushError, PushAction, push

__all__ = [
    "DATASOURCE_NAME",
    "DATASOURCE_UID",
    "FOLDER_TITLE",
    "FOLDER_UID",
    "MEASUREMENTS",
    "MIN_INTERVAL",
    "REMOVAL_SHARE_PCT",
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
