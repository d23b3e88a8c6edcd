"""Grafana's macro expansion, done as Grafana's InfluxDB datasource does it, for the tests.

expand(influxql, start_ns=..., end_ns=..., variables={"device": ["DX-0001"]}) -> str
"""

import math
import re
from collections.abc import Mapping, Sequence

from apps.grafana.panels import MIN_INTERVAL

__all__ = ["expand", "interval_for"]

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


# Grafana's global range variables, epoch milliseconds in their default format.
_RANGE = re.compile(r"\$\{__(from|to)\}|\$__(from|to)\b")
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
    `${__from}`/`${__to}` (or `$__from`/`$__to`) the range's start/end in epoch ms,
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
    text = _RANGE.sub(
        lambda m: str(start_ms if (m.group(1) or m.group(2)) == "from" else end_ms), text
    )
    text = text.replace("$__interval_ms", str(_duration_ms(interval)))
    text = text.replace("$__interval", interval).replace("$interval", interval)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return _regex_value(variables[name])

    return _VARIABLE.sub(substitute, text)
