"""The boards: one catalogue against docs/schema.md, every panel query against a real InfluxDB,
and `push` against a small real HTTP server that answers the Grafana API calls it makes.

No Grafana server runs here: the queries are expanded as Grafana's InfluxDB datasource expands
them (`apps.grafana.expand`) and sent to influxd; `push` is checked by recording requests.
"""

import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from alerts.engine import HISTORY_CHANNEL, AlertEngine
from alerts.inputs import parse_estimate
from alerts.model import AlertState
from alerts.rules import RuleBook
from alerts.store import AlertStore
from apps.grafana import (
    MEASUREMENTS,
    Dashboard,
    GrafanaPushError,
    PanelQuery,
    build_dashboards,
    datasource_model,
    expand,
    interval_for,
    push,
    stale_files,
)
from apps.services import InfluxDB, free_port
from devices.contract import HubStatus, Reason, Rejected
from devices.emulator.generator import generate
from devices.emulator.timeline import DeviceConfig
from devices.registry import Calibration, Device, Hub, Protocol, Registry, SensorRange
from dsp.estimator import FleetEstimator
from ingest.accounting import Accounting
from ingest.catchup import Outcome, catchup_line
from ingest.estimates import estimate_line, estimate_message, feed_event, register_device
from ingest.metrics import stats_lines
from ingest.records import (
    device_info_lines,
    event_lines,
    rejection_lines,
    status_lines,
)
from ingest.spool import Spool
from ingest.tier import Tier
from ingest.work import Work
from osteotel.mqtt import Received
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore

REPO = Path(__file__).resolve().parents[1]
# Credentials of the loopback stand-ins only.
TOKEN = "svc-token"  # noqa: S105
INFLUX_TOKEN = "t0k"  # noqa: S105
NS_PER_DAY = 86_400 * 10**9
# 2026-01-01T00:00:00Z; four wall hours at time_scale 400 cover 66 treatment days.
END_NS = 1_767_225_600_000_000_000
START_NS = END_NS - 4 * 3600 * 10**9
# The estimator dates a day's estimate at the start of its UTC day, before START_NS.
DAY_START_NS = START_NS - START_NS % NS_PER_DAY
# (device, hub, patient pseudonym, site, emulator scenario); the spikes give `quality` records.
DEVICES = (
    ("DX-0001", "HUB-A", "P-7F3A", "tibia", "sensor_spikes"),
    ("DX-0003", "HUB-B", "P-B04E", "mandible", "normal"),
)
# Registry osteotomy dates and the treatment day each is at END_NS (2026-01-01): different
# per device, so a value read for the wrong device shows. The emulator compresses time, so
# these are the registry's dates, not the emulated treatment's start.
OSTEOTOMY = {"DX-0001": (date(2025, 11, 26), 36), "DX-0003": (date(2025, 12, 15), 17)}
BOARDS = build_dashboards()
ALL_QUERIES = [query for board in BOARDS for query in board.queries]
# docs/schema.md's type names, as InfluxDB's SHOW FIELD KEYS names them.
INFLUX_TYPES = {"float": "float", "int": "integer", "string": "string", "bool": "boolean"}


@dataclass
class Emulation:
    """What the fixture loaded: the store and the time range it covers."""

    store: InfluxStore
    start_ns: int
    end_ns: int
    counts: dict[str, int] = field(default_factory=dict)


def registry() -> Registry:
    """The registry of the emulated devices: their hubs, pseudonyms, sites and prescription."""
    return Registry(
        hubs={hub: Hub(id=hub) for _, hub, *_ in DEVICES},
        devices={
            device: Device(
                id=device,
                hub=hub,
                patient=patient,
                site=site,  # type: ignore[arg-type]
                calibration=Calibration(id=f"CAL-{device}"),
                range=SensorRange(force_n=(-2000.0, 2000.0), disp_mm=(-10.0, 200.0)),
                protocol=Protocol(target_mm=50.0),  # the emulator's default plan
                osteotomy=OSTEOTOMY[device][0],
            )
            for device, hub, patient, site, _ in DEVICES
        },
    )


def write_alert_history(store: InfluxStore, engine: AlertEngine) -> int:
    """Acknowledge one firing alert, then write the engine's history rows as its notifier would."""
    open_alerts = [
        alert
        for alert in engine.store.alerts()
        if alert.state == AlertState.FIRING and alert.device == DEVICES[0][0]
    ]
    assert open_alerts, "the first device has no firing alert"
    engine.acknowledge(open_alerts[0].id, by="clinician-3", note="checked", now_ns=END_NS)
    rows = [
        item
        for item in engine.store.due(now_ns=2**62, limit=1_000_000)
        if item.channel == HISTORY_CHANNEL
    ]
    store.write(b"".join(item.payload["lines"].encode() for item in rows))
    return len(rows)


def _work() -> Work:
    """Work for a message the emulation writes directly (no broker to acknowledge)."""
    return Work(Received("emulation", b"", 0, 1, 0), [], 1)


def load_emulation(store: InfluxStore, workdir: Path) -> dict[str, int]:
    """Run the emulator for two devices and write what ingest and the alert service would.

    Frames, events and hub status go through ingest's line builders, frames and events through
    its storage tier (`raw_tier = "windows"`: `raw` in step windows, `raw_1s` elsewhere);
    frames and events also go through the estimator ingest runs, whose records are written with
    `estimate_line` and judged by the alert rules from the message ingest publishes
    (`estimate_message`).
    """
    reg = registry()
    accounting = Accounting()
    tier = Tier(before_s=30.0, after_s=600.0, accounting=accounting)
    spool = Spool(workdir / "spool", max_bytes=1 << 20)
    estimator = FleetEstimator()
    rules = RuleBook(reg, now_ns=START_NS)
    engine = AlertEngine(
        AlertStore(workdir / "alerts.db"),
        channels=[],
        grafana_url="http://grafana.test",
        repeat_s=3600.0,
        escalate_after_s=600.0,
    )
    observations = []
    counts = {"frames": 0, "events": 0, "estimates": 0, "raw_samples": 0, "summarised_samples": 0}
    store.write(device_info_lines(reg, retired=set(), now_ns=START_NS))
    for device, hub, patient, site, scenario in DEVICES:
        register_device(estimator, reg.devices[device])
        config = DeviceConfig(
            device=device,
            hub=hub,
            site=site,  # type: ignore[arg-type]
            scenario=scenario,
            rate_hz=10.0,
            frame_samples=50,
            time_scale=400.0,
            seed=7,
            # Compressed 400x, the day's walks fall inside the standing tests, whose shares
            # the estimator then rightly refuses (poor_fit): the boards need usable ones.
            gait_bouts_per_day=0,
        )
        batch = [status_lines(HubStatus(hub=hub, online=True, t_ns=START_NS))]
        for item in generate(config, start_ns=START_NS, end_ns=END_NS):
            records = []
            if item.frame is not None:
                frame = item.frame
                if accounting.frame(device, frame.seq, frame.t0_ns):
                    work = _work()
                    tier.write([(work, hub, frame, "json")])
                    batch.append(b"".join(work.lines))
                    counts["raw_samples"] += work.raw_points
                    counts["summarised_samples"] += work.summarised
                    accounting.device(device).stored += 1
                    records = estimator.frame(
                        device, frame.force_n, frame.disp_mm, frame.ref_load_n, frame.t0_ns,
                        frame.rate_hz,
                    )  # fmt: skip
                counts["frames"] += 1
            elif item.event is not None:
                work = _work()
                tier.event(work, item.event)  # a step's held frames: their raw lines
                batch.append(event_lines(hub, item.event) + b"".join(work.lines))
                counts["raw_samples"] += work.raw_points
                records = feed_event(estimator, item.event)
                observations += rules.event(hub, item.event)
                counts["events"] += 1
            elif item.online is not None:
                batch.append(status_lines(HubStatus(hub=hub, online=item.online, t_ns=item.t_ns)))
            for record in records:
                batch.append(estimate_line(hub, record))
                observations += rules.estimate(
                    parse_estimate(estimate_message(hub, patient, record))
                )
                counts["estimates"] += 1
            if len(batch) >= 500:
                store.write(b"".join(batch))
                stats = stats_lines(accounting, spool, instance="osteotel-ingest", now_ns=item.t_ns)
                store.write(stats)
                batch = []
        for record in estimator.flush(device):
            batch.append(estimate_line(hub, record))
            counts["estimates"] += 1
        store.write(b"".join(batch))
        rejected = Rejected(Reason.NON_FINITE, "force_n[3] is nan", field="force_n", index=3)
        accounting.reject(hub, "non_finite")
        store.write(
            rejection_lines(
                rejected,
                hub=hub,
                topic=f"osteotel/v1/{hub}/{device}/frame",
                payload_bytes=812,
                received_ns=END_NS - 60 * 10**9,
            )
        )
    store.write(stats_lines(accounting, spool, instance="osteotel-ingest", now_ns=END_NS))
    counts_fed = {
        "frames": counts["frames"],
        "samples": 0,
        "events": counts["events"],
        "records": 0,
    }
    for device, *_ in DEVICES:
        outcome = Outcome(reg.devices[device], "rebuilt", START_NS, counts_fed, START_NS)
        store.write(catchup_line(outcome))
    # One engine call: each history point is stamped with its observation's own time.
    engine.observe(observations, now_ns=END_NS)
    counts["alert_points"] = write_alert_history(store, engine)
    engine.store.close()
    return counts


@pytest.fixture(scope="module")
def emulation(influxdb: InfluxDB, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulation]:
    """A database holding two emulated devices' treatment (66 days in 4 compressed hours)."""
    name = f"osteotel_test_grafana_{free_port()}"
    settings = InfluxSettings(url=influxdb.url, database=name, api="v1")
    with InfluxStore(settings) as store:
        store.ensure_database()
        counts = load_emulation(store, tmp_path_factory.mktemp("grafana"))
        yield Emulation(store, DAY_START_NS, END_NS, counts)
        store.query(f'DROP DATABASE "{name}"')


# --- one source --------------------------------------------------------------------------------


def _schema_tables() -> dict[str, tuple[set[str], dict[str, str]]]:
    """Tags, and fields with their type, per measurement, read from docs/schema.md's tables."""
    tables: dict[str, tuple[set[str], dict[str, str]]] = {}
    current: tuple[set[str], dict[str, str]] | None = None
    for line in (REPO / "docs" / "schema.md").read_text("utf-8").splitlines():
        heading = re.match(r"^### `(\w+)`", line)
        if heading:
            current = tables.setdefault(heading.group(1), (set(), {}))
            continue
        row = re.match(r"^\| (tag|field) \| (.+?) \| (\w*) \|", line)
        if row and current is not None:
            names = re.findall(r"`(\w+)`", row.group(2))
            if row.group(1) == "tag":
                current[0].update(names)
            else:
                current[1].update(dict.fromkeys(names, row.group(3)))
    return tables


SCHEMA = _schema_tables()


@pytest.mark.parametrize("name", list(MEASUREMENTS), ids=list(MEASUREMENTS))
def test_catalogue_matches_schema_doc(name: str) -> None:
    """Each catalogue measurement has exactly the tags and fields docs/schema.md lists."""
    measurement = MEASUREMENTS[name]
    assert name in SCHEMA, f"docs/schema.md has no table for {name}"
    tags, fields = SCHEMA[name]
    assert set(measurement.tags) == tags
    assert set(measurement.fields) == set(fields)


def test_schema_doc_measurements_are_all_in_the_catalogue() -> None:
    """Every measurement docs/schema.md documents is one the boards may read."""
    assert set(SCHEMA) == set(MEASUREMENTS)


@pytest.mark.parametrize("name", list(MEASUREMENTS), ids=list(MEASUREMENTS))
def test_written_names_and_types_are_documented(emulation: Emulation, name: str) -> None:
    """The real writers put only documented tags and fields in InfluxDB, typed as documented."""
    tags, fields = SCHEMA[name]
    written_fields = emulation.store.query(f'SHOW FIELD KEYS FROM "{name}"')
    written_tags = emulation.store.query(f'SHOW TAG KEYS FROM "{name}"')
    assert written_fields, f"nothing wrote {name}"
    for key, influx_type in written_fields[0].values:
        assert key in fields, f"{name}.{key} is written but not documented"
        assert influx_type == INFLUX_TYPES[fields[key]], (name, key)
    assert {row[0] for row in written_tags[0].values} <= tags


def test_every_query_reads_catalogue_names_only() -> None:
    """Every quoted name in every panel query is a measurement, tag or field of the catalogue."""
    for query in ALL_QUERIES:
        measurement = MEASUREMENTS[query.measurement]
        for name in re.findall(r'"(\w+)"', query.influxql):
            assert name == measurement.name or measurement.has(name) or name in query.columns, (
                query.panel,
                name,
            )


def test_deploy_grafana_is_generated_from_the_catalogue() -> None:
    """deploy/grafana/ holds exactly what `osteotel grafana build` writes."""
    assert stale_files(REPO / "deploy" / "grafana") == []


def test_boards_have_the_issue_variables_and_unique_ids() -> None:
    """Each board has hub and device variables (patient where patients are shown), unique ids."""
    variables = {
        board.uid: [v["name"] for v in board.model["templating"]["list"]] for board in BOARDS
    }
    assert variables == {
        "osteotel-fleet": ["hub", "patient", "device"],
        "osteotel-patient": ["hub", "patient", "device"],
        "osteotel-quality": ["hub", "device"],
    }
    for board in BOARDS:
        ids = [panel["id"] for panel in board.model["panels"]]
        assert len(ids) == len(set(ids))


# --- macro expansion ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("span_s", "points", "expected"),
    [(3600, 1000, "5s"), (86_400, 1000, "2m"), (30 * 86_400, 1000, "1h"), (60, 1000, "1s")],
    ids=["1h", "1d", "30d", "1m-floor"],
)
def test_interval_rounds_up_to_a_nice_value(span_s: int, points: int, expected: str) -> None:
    """$__interval is the range per point, rounded up to a nice value, at least 1 s."""
    assert interval_for(0, span_s * 10**9, max_data_points=points) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [(["$__all"], ".*"), (["DX-0001"], "DX-0001"), (["A.1", "B|2"], r"(A\.1|B\|2)")],
    ids=["all", "one", "many-escaped"],
)
def test_variables_expand_as_regex(values: list[str], expected: str) -> None:
    """A variable becomes its regex-escaped value, an alternation of several, or `.*` for All."""
    text = expand('"device" =~ /^$device$/', start_ns=0, end_ns=10**9, variables={"device": values})
    assert text == f'"device" =~ /^{expected}$/'


@pytest.mark.parametrize("text", ["${__from}/${__to}", "$__from/$__to"], ids=["braced", "bare"])
def test_range_variables_expand_to_epoch_milliseconds(text: str) -> None:
    """Grafana's global ${__from} and ${__to} become the range's ends in epoch milliseconds."""
    assert expand(text, start_ns=1_500_000_000, end_ns=9_000_000_000, variables={}) == "1500/9000"


def test_time_filter_expands_to_epoch_milliseconds() -> None:
    """$timeFilter becomes a closed range in epoch milliseconds."""
    text = expand("WHERE $timeFilter", start_ns=1_500_000_000, end_ns=9_000_000_000, variables={})
    assert text == "WHERE time >= 1500ms and time <= 9000ms"


# --- every panel query against InfluxDB --------------------------------------------------------

SELECTIONS = {
    "all": {"hub": ["$__all"], "patient": ["$__all"], "device": ["$__all"]},
    "one": {"hub": ["HUB-A"], "patient": ["P-7F3A"], "device": ["DX-0001"]},
    "two": {"hub": ["HUB-A", "HUB-B"], "patient": ["$__all"], "device": ["DX-0001", "DX-0003"]},
}


def _id(query: PanelQuery) -> str:
    return f"{query.dashboard}:{query.panel}:{query.ref_id}"


@pytest.mark.parametrize("selection", list(SELECTIONS), ids=list(SELECTIONS))
@pytest.mark.parametrize("query", ALL_QUERIES, ids=[_id(q) for q in ALL_QUERIES])
def test_panel_query_returns_expected_columns(
    emulation: Emulation, query: PanelQuery, selection: str
) -> None:
    """Each panel query, expanded as Grafana would, returns series with the panel's columns."""
    text = expand(
        query.influxql,
        start_ns=emulation.start_ns,
        end_ns=emulation.end_ns,
        variables=SELECTIONS[selection],
    )
    series = emulation.store.query(text, epoch="ms")
    assert series, f"no data for {text}"
    for item in series:
        assert tuple(item.columns) == query.columns
        assert set(item.tags) == set(query.group_tags)
        assert item.values


def _panel_query(dashboard: str, panel: str, ref_id: str) -> PanelQuery:
    return next(
        q for q in ALL_QUERIES if (q.dashboard, q.panel, q.ref_id) == (dashboard, panel, ref_id)
    )


def _rows(emulation: Emulation, query: PanelQuery) -> dict[str, list[dict[str, Any]]]:
    """The query's rows per device for All devices, as column-to-value mappings."""
    text = expand(
        query.influxql,
        start_ns=emulation.start_ns,
        end_ns=emulation.end_ns,
        variables=SELECTIONS["all"],
    )
    return {
        item.tags["device"]: [dict(zip(item.columns, row, strict=True)) for row in item.values]
        for item in emulation.store.query(text, epoch="ms")
    }


def test_device_info_carries_the_osteotomy_at_utc_midnight(emulation: Emulation) -> None:
    """`device_info.osteotomy_ns` is UTC midnight of each device's registry date, epoch ns."""
    series = emulation.store.query(
        'SELECT last("osteotomy_ns") FROM "device_info" GROUP BY "device"', epoch="ns"
    )
    written = {item.tags["device"]: item.values[0][1] for item in series}
    assert written == {
        "DX-0001": 1_764_115_200 * 10**9,  # 2025-11-26T00:00:00Z
        "DX-0003": 1_765_756_800 * 10**9,  # 2025-12-15T00:00:00Z
    }


def test_device_info_leaves_out_a_missing_osteotomy() -> None:
    """A device with no osteotomy date gets a device_info point without `osteotomy_ns`."""
    reg = registry()
    device = reg.devices["DX-0001"].model_copy(update={"osteotomy": None})
    reg = reg.model_copy(update={"devices": {**reg.devices, "DX-0001": device}})
    lines = device_info_lines(reg, retired=set(), now_ns=START_NS).decode().splitlines()
    by_device = {line.split("device=")[1].split(",")[0]: line for line in lines}
    assert "osteotomy_ns=" not in by_device["DX-0001"]
    assert "osteotomy_ns=1765756800000000000i" in by_device["DX-0003"]


def test_fleet_treatment_day_counts_whole_days_from_the_osteotomy(emulation: Emulation) -> None:
    """The fleet table's treatment day is whole days from the osteotomy to the range end."""
    rows = _rows(emulation, _panel_query("osteotel-fleet", "Devices", "A"))
    assert {device: r[0]["treatment_day"] for device, r in rows.items()} == {
        device: day for device, (_, day) in OSTEOTOMY.items()
    }


def test_step_stiffness_band_is_two_standard_errors_of_k_inst(emulation: Emulation) -> None:
    """Each step's band is k_inst +/- 2 k_inst_std_n_per_mm, and its fit_r2 is at most 1."""
    title = "Step stiffness (per distraction step) with its fit quality"
    per_device = _rows(emulation, _panel_query("osteotel-patient", title, "A"))
    banded = [
        (device, r)
        for device, device_rows in per_device.items()
        for r in device_rows
        if r["k_inst_lo_n_per_mm"] is not None
    ]
    assert banded, "no step carries a standard error"
    stored = emulation.store.query(
        'SELECT "k_inst_std_n_per_mm" FROM "step" WHERE "kind" = \'step\' GROUP BY "device"',
        epoch="ms",
    )
    std = {(item.tags["device"], row[0]): row[1] for item in stored for row in item.values}
    for device, row in banded:
        half = 2.0 * std[device, row["time"]]
        assert row["k_inst_lo_n_per_mm"] == pytest.approx(row["k_inst_n_per_mm"] - half)
        assert row["k_inst_hi_n_per_mm"] == pytest.approx(row["k_inst_n_per_mm"] + half)
        assert row["fit_r2"] is None or row["fit_r2"] <= 1.0


def test_step_stiffness_marks_exactly_the_flagged_steps(emulation: Emulation) -> None:
    """The marks series holds every step the DSP flagged, with its flags, and no other."""
    title = "Step stiffness (per distraction step) with its fit quality"
    marks = _rows(emulation, _panel_query("osteotel-patient", title, "C"))
    stored = emulation.store.query(
        'SELECT "flags", "k_inst_n_per_mm" FROM "step" WHERE "kind" = \'step\' GROUP BY "device"',
        epoch="ms",
    )
    for item in stored:
        flagged = {row[0]: row[1] for row in item.values if row[1]}
        device_marks = marks.get(item.tags["device"], [])
        assert {r["time"]: r["flags"] for r in device_marks} == flagged
        assert len(flagged) < len(item.values), "every step flagged: the marks say nothing"
    assert any(marks.values()), "no flagged step to mark"


def test_load_share_panel_keeps_unusable_tests_out_of_the_band(emulation: Emulation) -> None:
    """The band series holds only usable tests; the others are the marks series, with flags."""
    title = "Load share (removal below 10 %)"
    usable = _rows(emulation, _panel_query("osteotel-patient", title, "A"))
    unusable = _rows(emulation, _panel_query("osteotel-patient", title, "B"))
    stored = emulation.store.query(
        'SELECT "share", "usable", "flags" FROM "load_share" GROUP BY "device"', epoch="ms"
    )
    for item in stored:
        device = item.tags["device"]
        good = {row[0] for row in item.values if row[2]}
        bad = {row[0] for row in item.values if not row[2]}
        assert {r["time"] for r in usable.get(device, [])} == good
        assert {r["time"] for r in unusable.get(device, [])} == bad
    assert any(usable.values()), "no usable test"
    assert all(r["flags"] or r["status"] != "ok" for rows in unusable.values() for r in rows)


def test_real_data_reaches_the_documented_panels(emulation: Emulation) -> None:
    """The emulator's frames and steps are what the frame and step-count panels count."""
    frames = emulation.store.query(
        f'SELECT count("seq") FROM "frame" WHERE time >= {START_NS} AND time <= {END_NS}'
    )
    steps = emulation.store.query(
        'SELECT count("delta_mm") FROM "event" WHERE "type" = \'distraction_step\''
    )
    assert 0 < frames[0].values[0][1] <= emulation.counts["frames"]
    assert steps[0].values[0][1] > 0


def test_force_panel_draws_both_tiers(emulation: Emulation) -> None:
    """The force panel draws raw (step windows) and raw_1s (the rest) for every device, and the
    store holds exactly the samples the tier wrote to each."""
    for ref_id in ("A", "B"):
        rows = _rows(emulation, _panel_query("osteotel-patient", "Force and displacement", ref_id))
        for device, *_ in DEVICES:
            drawn = [r for r in rows[device] if r["force_n"] is not None]
            assert drawn, (ref_id, device)
            assert all(r["disp_mm"] is not None for r in drawn)
    raw = emulation.store.query('SELECT count("force_n") FROM "raw"')
    summarised = emulation.store.query('SELECT sum("n") FROM "raw_1s"')
    assert raw[0].values[0][1] == emulation.counts["raw_samples"]
    assert summarised[0].values[0][1] == emulation.counts["summarised_samples"]


@pytest.mark.parametrize("board", BOARDS, ids=[b.uid for b in BOARDS])
def test_variable_queries_list_the_emulated_devices(emulation: Emulation, board: Dashboard) -> None:
    """Every variable query runs and the device variable lists both emulated devices."""
    for text in board.variable_queries:
        expanded = expand(text, start_ns=START_NS, end_ns=END_NS, variables=SELECTIONS["all"])
        series = emulation.store.query(expanded)
        assert series, expanded
        if 'KEY = "device"' in text:
            assert {row[1] for row in series[0].values} == {d[0] for d in DEVICES}


# --- push against a recording HTTP server ------------------------------------------------------


@dataclass
class FakeFreeGrafana:
    """A real HTTP server answering the Grafana API endpoints `push` calls, recording them."""

    url: str
    requests: list[tuple[str, str, str, Any]]
    objects: dict[str, dict[str, Any]]
    fail_status: list[int]


class _Handler(BaseHTTPRequestHandler):
    state: FakeFreeGrafana

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        path = urllib.parse.urlsplit(self.path).path
        self.state.requests.append(
            (self.command, path, self.headers.get("Authorization", ""), body)
        )
        if self.state.fail_status:
            self._answer(self.state.fail_status[0], {"message": "refused by test"})
            return
        objects = self.state.objects
        routes = [
            (r"/api/datasources/uid/([\w-]+)", "datasource"),
            (r"/api/datasources", "datasource"),
            (r"/api/folders/([\w-]+)", "folder"),
            (r"/api/folders", "folder"),
            (r"/api/dashboards/uid/([\w-]+)", "dashboard"),
            (r"/api/dashboards/db", "dashboard"),
        ]
        for pattern, kind in routes:
            match = re.fullmatch(pattern, path)
            if match is None:
                continue
            if self.command == "GET":
                key = f"{kind}/{match.group(1)}"
                if key in objects:
                    self._answer(200, objects[key])
                else:
                    self._answer(404, {"message": "not found"})
                return
            assert body is not None
            uid = body.get("uid") or (body.get("dashboard") or {}).get("uid")
            objects[f"{kind}/{uid}"] = body
            self._answer(200, {"uid": uid, "status": "success"})
            return
        self._answer(404, {"message": f"no route {path}"})

    do_GET = do_POST = do_PUT = _handle  # noqa: N815 - http.server's method names


@pytest.fixture
def grafana_api() -> Iterator[FakeFreeGrafana]:
    """The recording server on a free loopback port."""
    state = FakeFreeGrafana("", [], {}, [])
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="grafana-api", daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _datasource() -> dict[str, Any]:
    return datasource_model(
        influx_url="http://influxdb:8086", database="osteotel", token=INFLUX_TOKEN
    )


def test_push_creates_then_updates_everything(grafana_api: FakeFreeGrafana) -> None:
    """A first push creates datasource, folder and boards; a second updates them, same calls."""
    first = push(url=grafana_api.url, token=TOKEN, datasource=_datasource())
    uids = [board.uid for board in BOARDS]
    assert [(a.kind, a.uid, a.action) for a in first] == [
        ("datasource", "osteotel-influx", "created"),
        ("folder", "osteotel", "created"),
        *[("dashboard", uid, "created") for uid in uids],
    ]
    calls = [(method, path) for method, path, _, _ in grafana_api.requests]
    assert calls == [
        ("GET", "/api/datasources/uid/osteotel-influx"),
        ("POST", "/api/datasources"),
        ("GET", "/api/folders/osteotel"),
        ("POST", "/api/folders"),
        *[
            c
            for uid in uids
            for c in (("GET", f"/api/dashboards/uid/{uid}"), ("POST", "/api/dashboards/db"))
        ],
    ]
    assert {auth for _, _, auth, _ in grafana_api.requests} == {f"Bearer {TOKEN}"}
    posted = grafana_api.objects["dashboard/osteotel-patient"]
    assert posted["folderUid"] == "osteotel"
    assert posted["overwrite"] is True
    assert posted["dashboard"]["panels"] == BOARDS[1].model["panels"]
    ds = grafana_api.objects["datasource/osteotel-influx"]
    assert ds["secureJsonData"] == {"httpHeaderValue1": f"Token {INFLUX_TOKEN}"}

    grafana_api.requests.clear()
    second = push(url=grafana_api.url, token=TOKEN, datasource=_datasource())
    assert [a.action for a in second] == ["updated"] * (1 + len(uids))
    assert ("PUT", "/api/datasources/uid/osteotel-influx") in [
        (m, p) for m, p, _, _ in grafana_api.requests
    ]


@pytest.mark.parametrize("status", [401, 403, 500], ids=["unauthorized", "forbidden", "server"])
def test_push_refused_raises_push_error(grafana_api: FakeFreeGrafana, status: int) -> None:
    """A refusal by Grafana becomes GrafanaPushError carrying the status."""
    grafana_api.fail_status.append(status)
    with pytest.raises(GrafanaPushError) as caught:
        push(url=grafana_api.url, token=TOKEN, datasource=_datasource())
    assert caught.value.status == status


def test_push_unreachable_raises_push_error() -> None:
    """A Grafana that does not answer becomes GrafanaPushError without a status."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GrafanaPushError) as caught:
        push(url=url, token=None, datasource=_datasource(), timeout_s=2.0)
    assert caught.value.status is None
