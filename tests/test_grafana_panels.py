"""The board builder: a panel row's query becomes InfluxQL from catalogue names only, and a
name the catalogue does not list is refused when the board is built, naming it."""

import pytest

from apps.grafana.panels import Board, Panel, Query


def _build(query: Query) -> None:
    Board("t", "t", "", ("hub", "device"), "now-1h", (Panel("p", (query,)),)).build()


def test_query_names_fields_in_braces_and_columns_by_alias_or_field() -> None:
    """Braced names are quoted, `{{`/`}}` stay literal braces, and a column without AS is named
    after the one field it reads; the board's variables filter the measurement's tags."""
    query = Query(
        "device_info",
        ("last({target_mm})", "${{__to}} - last({osteotomy_ns}) AS age_ns"),
        where=("{active} = true",),
        time_filter=False,
    )
    assert query.text(("hub", "patient", "device")) == (
        'SELECT last("target_mm") AS "target_mm", ${__to} - last("osteotomy_ns") AS "age_ns" '
        'FROM "device_info" WHERE "hub" =~ /^$hub$/ AND "patient" =~ /^$patient$/ '
        'AND "device" =~ /^$device$/ AND "active" = true GROUP BY "device"'
    )
    assert query.columns() == ("time", "target_mm", "age_ns")


@pytest.mark.parametrize(
    ("query", "error", "message"),
    [
        (Query("frames", ("count({seq})",)), KeyError, "measurement 'frames' is not in"),
        (Query("frame", ("mean({force_n})",)), KeyError, "'frame' has no tag or field 'force_n'"),
        (
            Query("step", ("{k_inst_n_per_mm}",), where=("{knd} = 'step'",)),
            KeyError,
            "'step' has no tag or field 'knd'",
        ),
        (
            Query("step", ("{k_inst_n_per_mm} - {k_eq_n_per_mm}",)),
            ValueError,
            "reads 2 names: name it with AS",
        ),
    ],
    ids=["unknown-measurement", "unknown-field", "unknown-name-in-where", "column-without-name"],
)
def test_board_refuses_what_the_catalogue_does_not_hold(
    query: Query, error: type[Exception], message: str
) -> None:
    """Building a board with an unknown measurement, field or tag, or an unnamed column, raises."""
    with pytest.raises(error, match=message):
        _build(query)
