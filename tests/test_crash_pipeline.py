"""Ingest and the alert service as real processes on one stream, ingest SIGKILLed again and
again: the alerts are those of the same stream without kills, none raised twice, and every
sample is stored once.

An emulated treatment of the example registry's three devices (`missed_steps`: 15 % of the
prescribed steps are not done, so the daily records raise `missed_steps` warnings; 10.5 days,
10 Hz, ending at a UTC midnight so that its days and alerts are the same whenever the test
runs) is published twice by the crash tests' paced publisher (tests/harness.py), each time to
a fresh ingest (`python -m apps.cli ingest`, its own database) and a fresh alert service
(`osteotel alerts run`, its own database and client id) that notifies a webhook receiver:
once without kills (the reference), once with ingest SIGKILLed, each time after a checkpoint,
shortly after a distraction step, a load test's start, and the end of each UTC day whose daily
record raised or resolved an alert in the reference, and started again. Ingest publishes the
estimates it makes; after a kill it publishes those it re-derives while catching up: one the
kill kept from being published reaches the alert service then, one published before is
recognised as applied. The alert service sees the hubs' events straight from the broker, and
the estimates only through ingest.

Alerts are compared by what they are (device, rule, severity, state, start), never by their
database ids, which differ between the runs; a notification key (`{id}:{event}:{t_ns}`) is
compared through the alert its id names. Every rule this stream raises is a warning judged on
data time, so no notification depends on the wall clock (escalations and repeats would).
"""

import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import (
    EXAMPLE_REGISTRY,
    IngestProcess,
    Publisher,
    Treatment,
    alerts_env,
    clear_hub_status,
    count,
    emulated_treatment,
    ingest_env,
    kill_points,
    killed_at,
    query,
    wait_for,
)
from test_alerts_crash import AlertsProcess
from test_alerts_service import Hook

from alerts.inputs import input_key
from apps.services import InfluxDB, Mosquitto
from devices.codec import decode_event, decode_frame
from devices.registry import Registry

_DAYS = 10.5  # latency 7 days, then three and a half days of steps; a load test every day
_SCENARIO = "missed_steps"
_KILLS = 2  # in a step window and in a load test, besides one after each alert's decision
_DAY_NS = 86_400_000_000_000
_ESTIMATES = ("step", "load_share", "daily", "quality")  # every measurement ingest publishes

# What an alert is, whichever database id it got: device, rule, severity, state, start.
_Identity = tuple[str, str, str, str, int]


@dataclass
class _Pipeline:
    """One run's ingest, alert service, webhook receiver and database."""

    ingest: IngestProcess
    alerts: AlertsProcess
    webhook: Hook
    database: str

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.alerts.workdir / "data" / "alerts.db")

    def applied(self) -> set[str]:
        """The keys of every event and estimate the alert service has committed; ingest's
        catch-up statuses (one per device and start: more with kills) left out."""
        with contextlib.closing(self._db()) as db:
            keys = {key for (key,) in db.execute("SELECT key FROM applied")}
        return {key for key in keys if "/catchup/" not in key}

    def undelivered(self) -> int:
        """Outbox rows not yet delivered."""
        with contextlib.closing(self._db()) as db:
            count: int = db.execute(
                "SELECT COUNT(*) FROM outbox WHERE delivered_ns IS NULL"
            ).fetchone()[0]
        return count

    def alerts_by_id(self) -> dict[int, _Identity]:
        """Every stored alert by its database id."""
        with contextlib.closing(self._db()) as db:
            rows = db.execute("SELECT id, device, rule, severity, state, started_ns FROM alerts")
            return {row[0]: tuple(row[1:]) for row in rows}

    def firings(self) -> Counter[_Identity]:
        """How often each alert was raised (its `firing` lines in the audit trail)."""
        by_id = self.alerts_by_id()
        with contextlib.closing(self._db()) as db:
            rows = db.execute("SELECT alert_id FROM audit WHERE action = 'firing'")
            return Counter(by_id[alert_id] for (alert_id,) in rows)

    def notifications(self) -> Counter[tuple[_Identity, str, str]]:
        """Every notification the webhook received: its alert, event and time, counted."""
        by_id = self.alerts_by_id()
        seen: Counter[tuple[_Identity, str, str]] = Counter()
        for key, copies in self.webhook.keys_seen().items():
            alert_id, event, t_ns = key.split(":")
            seen[(by_id[int(alert_id)], event, t_ns)] += copies
        return seen


@contextlib.contextmanager
def _pipeline(
    name: str, mosquitto: Mosquitto, influxdb: InfluxDB, database: str, tmp_path: Path
) -> Iterator[_Pipeline]:
    """A fresh alert service and ingest, both started, each with its own files and client id."""
    tag = os.urandom(3).hex()
    workdir = tmp_path / name
    workdir.mkdir()
    webhook = Hook()
    alerts = AlertsProcess(
        alerts_env(mosquitto, webhook.url, workdir, f"alerts-{name}-{tag}"), workdir
    )
    env = ingest_env(
        mosquitto, influxdb, database, f"ingest-{name}-{tag}", workdir,
        checkpoint_interval_s="0.1", checkpoint_batches="3",
    )  # fmt: skip
    ingest = IngestProcess(env, workdir)
    try:
        alerts.start()  # subscribed before anything is published: its session queues the rest
        ingest.start()
        yield _Pipeline(ingest, alerts, webhook, database)
    finally:
        for process in (ingest.process, alerts.process):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        webhook.close()
        query(influxdb, database, f'DROP DATABASE "{database}"')


def _event_keys(treatment: Treatment) -> set[str]:
    """The input key of every event in the stream, as the alert service makes it."""
    return {
        input_key(decode_event(m.payload, topic_device=m.topic.split("/")[3]))
        for m in treatment.messages
        if m.topic.endswith("/events")
    }


def _deciding(treatment: Treatment, decisions: set[tuple[str, int]]) -> set[int]:
    """For each (device, day start) whose daily record raised or resolved an alert, the message
    number 3 after the frame that closes that day (its data pass into the next UTC day)."""
    points = set()
    for device, day_ns in decisions:
        for number, message in enumerate(treatment.messages):
            if message.topic.endswith(f"/{device}/telemetry"):
                frame, _ = decode_frame(message.payload, topic_device=device)
                if frame.t_last_ns >= day_ns + _DAY_NS:
                    points.add(number + 3)
                    break
    assert len(points) == len(decisions), decisions
    return points


def _settle(run: _Pipeline, influxdb: InfluxDB, treatment: Treatment, events: int) -> None:
    """Wait until every sample is stored, the alert service has applied every event and every
    estimate ingest stored (published after it is stored), and the outbox is empty; then
    check that every sample is stored exactly once."""
    samples = treatment.samples
    wait_for(
        lambda: all(
            count(influxdb, run.database, "raw", device) >= len(times)
            for device, times in samples.items()
        ),
        "every sample stored", run.ingest,
    )  # fmt: skip
    for device, times in samples.items():
        assert count(influxdb, run.database, "raw", device) == len(times), device
    estimates = sum(count(influxdb, run.database, m) for m in _ESTIMATES)
    wait_for(lambda: len(run.applied()) == events + estimates,
             "every event and estimate applied", run.ingest)  # fmt: skip
    wait_for(lambda: run.undelivered() == 0, "every notification delivered", run.ingest)


def test_alerts_of_a_stream_through_killed_ingest_are_those_without_kills(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db_name: str, unique_id: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """With ingest SIGKILLed six times mid-stream, the alert service applies the same inputs,
    holds the same alerts (device, rule, severity, state, start) as without kills, raises each
    once, the webhook gets every notification of the run without kills (there exactly once)
    and no more than once more, and every sample is stored exactly once."""
    registry = Registry.load(EXAMPLE_REGISTRY)
    clear_hub_status(mosquitto, registry.hubs, f"clear-{unique_id}")
    treatment = emulated_treatment(registry, tmp_path, _DAYS, _SCENARIO, at_midnight=True)
    events = len(_event_keys(treatment))

    with _pipeline("ref", mosquitto, influxdb, f"{influx_db_name}_ref", tmp_path) as ref:
        publisher = Publisher(mosquitto, treatment.messages, f"publisher-ref-{unique_id}")
        publisher.start()
        try:
            publisher.finish()
        finally:
            publisher.close()
        _settle(ref, influxdb, treatment, events)
        assert ref.ingest.stop() == 0
        assert ref.alerts.stop() == 0
        ref_applied = ref.applied()
        ref_alerts = sorted(ref.alerts_by_id().values())
        ref_notified = ref.notifications()
        ref_firings = ref.firings()
    # The stream raises a few alerts, each once, and notifies each change exactly once
    # (besides `stiffness_unmeasured` notices: the emulated steps leave most k_inst low_snr).
    assert [alert[:4] for alert in ref_alerts if alert[1] != "stiffness_unmeasured"] == [
        ("DX-0001", "missed_steps", "warning", "resolved"),
        ("DX-0002", "missed_steps", "warning", "firing"),
        ("DX-0003", "missed_steps", "warning", "firing"),
    ]
    assert set(ref_firings.values()) == {1}
    assert set(ref_notified.values()) == {1}
    # Killed just after each daily record that raised or resolved an alert was made, the
    # restart re-derives it when the last checkpoint came before it, and publishes it.
    decisions = {
        (alert[0], int(t_ns)) for alert, _, t_ns in ref_notified if alert[1] == "missed_steps"
    }
    kills = sorted(
        set(kill_points(treatment.steps, treatment.tests, _KILLS)) | _deciding(treatment, decisions)
    )
    assert len(kills) == _KILLS + len(decisions) == 6

    with _pipeline("kill", mosquitto, influxdb, influx_db_name, tmp_path) as run:
        publisher = Publisher(mosquitto, treatment.messages, f"publisher-kill-{unique_id}")
        publisher.start()
        try:
            for _ in killed_at(run.ingest, publisher, kills):
                pass
            publisher.finish()
        finally:
            publisher.close()
        _settle(run, influxdb, treatment, events)
        assert run.ingest.log().count("checkpoint_restored") == len(kills)
        assert run.applied() == ref_applied
        assert sorted(run.alerts_by_id().values()) == ref_alerts
        assert run.firings() == ref_firings
        notified = run.notifications()
        assert set(notified) == set(ref_notified)
        assert all(notified[key] <= ref_notified[key] + 1 for key in notified), notified
        assert run.alerts.stop() == 0
