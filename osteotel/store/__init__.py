"""The InfluxDB store: line protocol from numpy arrays, and a client that writes and queries.

`lineproto` builds the lines, `influx.InfluxStore` sends them, `http` is the only module that
touches the wire libraries. The measurements and their tags and fields are in docs/schema.md.
"""

from osteotel.store.influx import InfluxStore, Series, api_from_version
from osteotel.store.lineproto import (
    array_lines,
    escape_measurement,
    escape_string_field,
    escape_tag,
    point_line,
    series_lines,
)

__all__ = [
    "InfluxStore",
    "Series",
    "api_from_version",
    "array_lines",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "point_line",
    "series_lines",
]
