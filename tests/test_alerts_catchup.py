"""A device whose history ingest could not read at its start says so (issue 14): ingest's
`catchup` message on the estimates topic raises `estimates_incomplete` (info) on `truncated`,
`store_unreachable` and `capture_missing`, and only a later `rebuilt` clears it (a `caught_up`
start goes on from a checkpoint that still lacks what was not read)."""

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    EXAMPLE_REGISTRY,
    IngestProcess,
    Publisher,
    alerts_env,
    emulated_treatment,
    ingest_env,
    query,
    wait_for,
)
from test_alerts_crash import AlertsProcess
from test_alerts_service import Hook

from alerts.inputs import CatchupInput, estimates_topic, input_key, parse_estimate
from alerts.model import RULES, AlertState, Severity
from alerts.rules import RuleBook
from alerts.service import AlertService
from alerts.settings import AlertSettings
from apps.services import InfluxDB, Mosquitto
from devices.registry import Registry
from ingest.catchup import Outcome, Status, catchup_message
from ingest.checkpoint import CHECKPOINT_FILE
from osteotel.settings import InfluxSettings, MqttSettings

REGISTRY_PATH = EXAMPLE_REGISTRY
REGISTRY = Registry.load(REGISTRY_PATH)
S = 1_000_000_000
T0 = 1_793_491_200 * S  # 2026-11-01 00:00 UTC
FROM_NS = T0 - 86_400 * S  # 2026-10-31 00:00 UTC
COUNTS = {"frames": 12, "samples": 1200, "events": 3, "records": 2}


def _message(status: Status, t_ns: int, device: str = "DX-0001") -> bytes:
    """Ingest's own `catchup` message, as its catch-up publishes it."""
    return catchup_message(Outcome(REGISTRY.devices[device], status, FROM_NS, COUNTS, t_ns))


def _catchup(status: Status, t_ns: int) -> CatchupInput:
    parsed = parse_estimate(_message(status, t_ns))
    assert isinstance(parsed, CatchupInput)
    return parsed


def test_the_alert_service_reads_ingests_catchup_message() -> None:
    """The message ingest publishes parses as a catch-up input with its status, start, counts
    and the device's hub and pseudonym, keyed by device and time."""
    parsed = _catchup("truncated", T0)
    assert parsed.model_dump() == {
        "v": 1, "device": "DX-0001", "hub": "HUB-A", "patient": "P-7F3A", "t_ns": T0,
        "kind": "catchup", "status": "truncated", "from_ns": FROM_NS, **COUNTS,
    }  # fmt: skip
    assert input_key(parsed) == f"estimate/DX-0001/catchup/{T0}"
    assert "estimates_incomplete" in RULES


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        ("truncated", "rebuilt from 2026-10-31 00:00 UTC on only"),
        ("store_unreachable", "without what was stored since 2026-10-31 00:00 UTC"),
        ("capture_missing", "capture files of hub HUB-A begin after 2026-10-31 00:00 UTC"),
    ],
    ids=["truncated", "store_unreachable", "capture_missing"],
)
def test_an_incomplete_history_raises_an_info_alert_until_a_rebuild(
    status: Status, cause: str
) -> None:
    """`truncated`, `store_unreachable` or `capture_missing` raises one info observation whose
    summary names the cause, the consequence for readiness and the engineer; a repeat while
    raised observes the same; a `caught_up` start (from a checkpoint that still lacks what was
    not read) changes nothing; a `rebuilt` clears it, and a second one observes nothing."""
    rules = RuleBook(REGISTRY, now_ns=T0)
    [raised] = rules.estimate(_catchup(status, T0))
    assert (raised.rule, raised.device, raised.patient) == ("estimates_incomplete", "DX-0001",
                                                            "P-7F3A")  # fmt: skip
    assert (raised.trigger, raised.clear, raised.severity, raised.value) == (
        True, False, Severity.INFO, None,
    )  # fmt: skip
    assert cause in raised.summary
    assert "readiness or the projected removal may come late or not at all" in raised.summary
    assert raised.summary.endswith("an engineer should look")
    [again] = rules.estimate(_catchup(status, T0 + 3600 * S))
    assert (again.trigger, again.t_ns) == (True, T0 + 3600 * S)
    assert rules.estimate(_catchup("caught_up", T0 + 5400 * S)) == []
    [cleared] = rules.estimate(_catchup("rebuilt", T0 + 7200 * S))
    assert (cleared.rule, cleared.trigger, cleared.clear) == ("estimates_incomplete", False, True)
    assert rules.estimate(_catchup("rebuilt", T0 + 9000 * S)) == []


def test_a_catchup_message_is_not_the_device_being_heard_from() -> None:
    """A catch-up status comes from ingest, not the device: 901 s after the start with nothing
    but one from the device, device_silent still fires for it."""
    rules = RuleBook(REGISTRY, now_ns=T0)
    rules.estimate(_catchup("caught_up", T0 + 600 * S))
    silent = [o for o in rules.tick(T0 + 901 * S) if o.rule == "device_silent"]
    assert [(o.device, o.trigger) for o in silent if o.device == "DX-0001"] == [("DX-0001", True)]


def _service(tmp_path: Path) -> AlertService:
    settings = AlertSettings(
        data_dir=tmp_path, registry=REGISTRY_PATH, webhook_urls=["http://127.0.0.1:9/unused"],
        mqtt_alerts=False, write_history=False, http_port=0,
    )  # fmt: skip
    return AlertService(settings=settings, mqtt=MqttSettings(), influx=InfluxSettings())


def _outbox_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        count: int = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    return count


def test_the_service_raises_once_and_resolves_on_a_later_rebuild(tmp_path: Path) -> None:
    """A `truncated` status raises one firing info alert and queues one notification; the same
    message again is a counted repeat; a second `truncated` (ingest started again) keeps that
    alert and notifies nothing; a `caught_up` leaves it; a `rebuilt` resolves it; nothing is
    kept for the replay."""
    service = _service(tmp_path)
    topic = estimates_topic("DX-0001")
    stream = [
        _message("truncated", T0),
        _message("truncated", T0),
        _message("truncated", T0 + 3600 * S),
        _message("caught_up", T0 + 5400 * S),
        _message("rebuilt", T0 + 7200 * S),
    ]

    async def handle_all() -> list[int]:
        return [len(await service.handle(topic, payload)) for payload in stream]

    assert asyncio.run(handle_all()) == [1, 0, 1, 0, 1]
    [alert] = service.store.alerts()
    assert (alert.rule, alert.severity, alert.state) == (
        "estimates_incomplete", Severity.INFO, AlertState.RESOLVED,
    )  # fmt: skip
    assert (alert.started_ns, alert.resolved_ns, alert.notify_count) == (T0, T0 + 7200 * S, 1)
    assert _outbox_rows(service.store.path) == 2  # firing and resolved, to the one webhook
    registry = service.metrics.registry
    assert registry.get_sample_value("osteotel_alerts_repeated_total", {"kind": "catchup"}) == 1
    assert registry.get_sample_value("osteotel_alerts_inputs_total", {"kind": "catchup"}) == 4
    assert service.store.inputs() == []
    service.store.close()


def test_a_kind_the_service_does_not_know_is_refused_and_counted(tmp_path: Path) -> None:
    """An estimate of an unknown kind (what an alert service older than `catchup` makes of
    it) is refused, counted as a ValueError and changes nothing; the next message is judged."""
    service = _service(tmp_path)
    topic = estimates_topic("DX-0001")
    unknown = _message("truncated", T0).replace(b'"kind":"catchup"', b'"kind":"restart"')

    async def handle_both() -> list[int]:
        return [
            len(await service.handle(topic, payload))
            for payload in (unknown, _message("truncated", T0 + S))
        ]

    assert asyncio.run(handle_both()) == [0, 1]
    registry = service.metrics.registry
    assert (
        registry.get_sample_value("osteotel_alerts_rejected_total", {"reason": "ValueError"}) == 1
    )
    assert [a.started_ns for a in service.store.alerts()] == [T0 + S]
    service.store.close()


def _sqlite(alerts: AlertsProcess, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(alerts.workdir / "data" / "alerts.db")) as db:
        return db.execute(sql).fetchall()


def _notified(webhook: Hook, rule: str) -> list[tuple[str, str]]:
    """The device and event of every notification of `rule` the webhook received, in order."""
    with webhook.arrived:
        return [(a["device"], a["event"]) for body in webhook.bodies for a in body["alerts"]
                if a["rule"] == rule]  # fmt: skip


def test_a_device_with_data_beyond_the_rebuild_bound_raises_one_alert_end_to_end(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Real ingest and alert-service processes: two days of one device stored through ingest,
    then ingest started without its checkpoint and `rebuild_max_days` 1 marks that device
    `truncated` and the other two `rebuilt`: exactly one `estimates_incomplete` alert, for that
    device, fires at the webhook; the next start (from the checkpoint: `caught_up`) leaves it
    open; a start without the checkpoint and the default bound (`rebuilt`) resolves it. Twelve
    catch-up statuses (four starts, three devices) are applied, no other alert of the rule is
    raised."""
    registry = Registry.load(EXAMPLE_REGISTRY)
    device = "DX-0002"
    treatment = emulated_treatment(registry, tmp_path, 2.0)
    messages = [m for m in treatment.messages if m.topic.split("/")[3] == device]
    samples = len(treatment.samples[device])
    webhook = Hook()
    alerts = AlertsProcess(
        alerts_env(mosquitto, webhook.url, tmp_path, f"alerts-{unique_id}"), tmp_path
    )
    ingest = IngestProcess(
        ingest_env(mosquitto, influxdb, influx_db_name, f"ingest-{unique_id}", tmp_path),
        tmp_path,
    )
    publisher = Publisher(mosquitto, messages, f"publisher-{unique_id}")
    where = f"\"device\" = '{device}'"
    try:
        alerts.start()
        ingest.start()  # nothing stored yet: every device `rebuilt`
        publisher.limit = len(messages)
        publisher.start()
        publisher.join(60)
        assert (publisher.failed, publisher.published) == (None, len(messages))

        def stored_samples() -> int:
            rows = query(
                influxdb, influx_db_name, f'SELECT count("force_n") FROM "raw" WHERE {where}'
            )
            return int(str(rows[0][1])) if rows else 0

        wait_for(lambda: stored_samples() == samples, "the device's samples stored", ingest)
        [[first_ns, _]] = query(
            influxdb, influx_db_name, f'SELECT first("n") FROM "frame" WHERE {where}'
        )
        first = int(str(first_ns))
        assert first < time.time_ns() - 86_400 * S  # older than the bound set below
        assert ingest.stop() == 0

        (tmp_path / "state" / CHECKPOINT_FILE).unlink()
        ingest.env["OSTEOTEL_INGEST__REBUILD_MAX_DAYS"] = "1"
        ingest.start()
        wait_for(lambda: _notified(webhook, "estimates_incomplete") == [(device, "firing")],
                 "the estimates_incomplete notification", ingest)  # fmt: skip
        assert ingest.log().count("status=truncated") == 1
        assert ingest.stop() == 0

        ingest.start()  # from the checkpoint just written: `caught_up`, still incomplete
        applied = "SELECT COUNT(*) FROM applied WHERE key LIKE 'estimate/%/catchup/%'"
        wait_for(lambda: _sqlite(alerts, applied) == [(9,)], "nine catch-up statuses", ingest)
        assert _notified(webhook, "estimates_incomplete") == [(device, "firing")]
        assert ingest.log().count("status=caught_up") == 3
        assert ingest.stop() == 0

        (tmp_path / "state" / CHECKPOINT_FILE).unlink()
        del ingest.env["OSTEOTEL_INGEST__REBUILD_MAX_DAYS"]
        ingest.start()  # the whole history read again: `rebuilt`
        wait_for(lambda: _sqlite(alerts, applied) == [(12,)], "twelve catch-up statuses", ingest)
        wait_for(lambda: len(_notified(webhook, "estimates_incomplete")) == 2,
                 "the resolution", ingest)  # fmt: skip
        assert _notified(webhook, "estimates_incomplete") == [
            (device, "firing"),
            (device, "resolved"),
        ]
        assert _sqlite(
            alerts, "SELECT device, severity, state FROM alerts WHERE rule = 'estimates_incomplete'"
        ) == [(device, "info", "resolved")]
        assert ingest.stop() == 0
    finally:
        publisher.close()
        if ingest.process is not None and ingest.process.poll() is None:
            ingest.stop()
        if alerts.process is not None and alerts.process.poll() is None:
            alerts.stop()
        webhook.close()
