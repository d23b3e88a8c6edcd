"""The alert lifecycle on a real SQLite file: pending, firing, resolved, repeat, escalation,
silences, acknowledgements, and state and audit that survive a restart."""

import sqlite3
from pathlib import Path

import pytest

from alerts.engine import HISTORY_CHANNEL, AlertEngine, AlertError
from alerts.model import AlertState, Observation, Severity
from alerts.store import AlertStore

S = 1_000_000_000
T0 = 1_700_000_000 * S


def engine_at(path: Path, **overrides: float) -> AlertEngine:
    return AlertEngine(
        AlertStore(path),
        channels=["webhook"],
        grafana_url="http://grafana.test",
        repeat_s=overrides.get("repeat_s", 3600.0),
        escalate_after_s=overrides.get("escalate_after_s", 600.0),
    )


def obs(
    t_s: float,
    *,
    trigger: bool,
    clear: bool = False,
    rule: str = "distraction_force",
    severity: Severity = Severity.WARNING,
    for_s: float = 0.0,
    value: float = 1.0,
    device: str = "DX-0001",
) -> Observation:
    return Observation(
        device=device,
        hub="HUB-A",
        patient="P-7F3A",
        rule=rule,
        t_ns=T0 + round(t_s * S),
        trigger=trigger,
        clear=clear,
        severity=severity,
        value=value,
        summary="test",
        for_s=for_s,
    )


def queued(engine: AlertEngine, channel: str = "webhook") -> list[str]:
    return [i.payload["event"] for i in engine.store.due(now_ns=2**62) if i.channel == channel]


def test_alert_fires_at_once_without_for_duration(tmp_path: Path) -> None:
    """A triggering observation with no for-duration fires and queues one notification."""
    engine = engine_at(tmp_path / "a.db")
    [alert] = engine.observe([obs(0, trigger=True)], now_ns=T0)
    assert alert.state is AlertState.FIRING
    assert queued(engine) == ["firing"]


def test_pending_fires_after_for_duration(tmp_path: Path) -> None:
    """An alert stays pending until its condition held for the for-duration, then fires."""
    engine = engine_at(tmp_path / "a.db")
    [alert] = engine.observe([obs(0, trigger=True, for_s=60)], now_ns=T0)
    assert alert.state is AlertState.PENDING
    engine.observe([obs(30, trigger=True, for_s=60)], now_ns=T0 + 30 * S)
    assert queued(engine) == []
    [alert] = engine.observe([obs(60, trigger=True, for_s=60)], now_ns=T0 + 60 * S)
    assert alert.state is AlertState.FIRING
    assert queued(engine) == ["firing"]


def test_pending_fires_on_tick_when_condition_persists(tmp_path: Path) -> None:
    """A pending alert fires from the timer once its for-duration has passed."""
    engine = engine_at(tmp_path / "a.db")
    engine.observe([obs(0, trigger=True, for_s=60)], now_ns=T0)
    assert engine.tick(now_ns=T0 + 59 * S) == []
    [alert] = engine.tick(now_ns=T0 + 60 * S)
    assert alert.state is AlertState.FIRING


def test_pending_is_cancelled_when_condition_goes(tmp_path: Path) -> None:
    """A pending alert whose condition goes away is cancelled and never notified."""
    engine = engine_at(tmp_path / "a.db")
    engine.observe([obs(0, trigger=True, for_s=60)], now_ns=T0)
    [alert] = engine.observe([obs(10, trigger=False)], now_ns=T0 + 10 * S)
    assert alert.state is AlertState.CANCELLED
    assert queued(engine) == []


def test_hysteresis_keeps_firing_between_thresholds(tmp_path: Path) -> None:
    """Between the firing and the clearing threshold a firing alert keeps firing."""
    engine = engine_at(tmp_path / "a.db")
    engine.observe([obs(0, trigger=True)], now_ns=T0)
    [alert] = engine.observe([obs(10, trigger=False, clear=False)], now_ns=T0 + 10 * S)
    assert alert.state is AlertState.FIRING
    [alert] = engine.observe([obs(20, trigger=False, clear=True)], now_ns=T0 + 20 * S)
    assert alert.state is AlertState.RESOLVED
    assert queued(engine) == ["firing", "resolved"]


def test_duplicate_observations_make_one_alert(tmp_path: Path) -> None:
    """The same condition seen again does not raise a second alert or notification."""
    engine = engine_at(tmp_path / "a.db")
    for t in range(5):
        engine.observe([obs(t, trigger=True, value=float(t))], now_ns=T0 + t * S)
    [alert] = engine.store.alerts()
    assert alert.value == 4.0
    assert queued(engine) == ["firing"]


def test_alerts_of_one_patient_are_grouped(tmp_path: Path) -> None:
    """Two alerts of one patient raised together go out as one notification."""
    engine = engine_at(tmp_path / "a.db")
    engine.observe([obs(0, trigger=True), obs(0, trigger=True, rule="battery_low")], now_ns=T0)
    [item] = [i for i in engine.store.due(now_ns=T0) if i.channel == "webhook"]
    assert sorted(a["rule"] for a in item.payload["alerts"]) == ["battery_low", "distraction_force"]
    assert item.payload["patient"] == "P-7F3A"


def test_unacknowledged_alert_repeats(tmp_path: Path) -> None:
    """A firing alert nobody acknowledged is notified again after the repeat interval."""
    engine = engine_at(tmp_path / "a.db", repeat_s=3600)
    engine.observe([obs(0, trigger=True)], now_ns=T0)
    assert engine.tick(now_ns=T0 + 3599 * S) == []
    engine.tick(now_ns=T0 + 3600 * S)
    assert queued(engine) == ["firing", "repeat"]


def test_acknowledged_alert_does_not_repeat(tmp_path: Path) -> None:
    """An acknowledged alert is not repeated, and the acknowledgement is audited by name."""
    engine = engine_at(tmp_path / "a.db", repeat_s=3600)
    [alert] = engine.observe([obs(0, trigger=True)], now_ns=T0)
    engine.acknowledge(alert.id, by="Dr Example", note="frame checked", now_ns=T0 + S)
    assert engine.tick(now_ns=T0 + 7200 * S) == []
    [entry] = [e for e in engine.store.audit(alert_id=alert.id) if e.action == "acknowledged"]
    assert (entry.actor, entry.t_ns) == ("Dr Example", T0 + S)
    assert "frame checked" in entry.detail


def test_unacknowledged_critical_escalates_once(tmp_path: Path) -> None:
    """A critical alert unacknowledged past the escalation time is escalated once."""
    engine = engine_at(tmp_path / "a.db", escalate_after_s=600, repeat_s=10**6)
    engine.observe([obs(0, trigger=True, severity=Severity.CRITICAL)], now_ns=T0)
    engine.tick(now_ns=T0 + 600 * S)
    engine.tick(now_ns=T0 + 1200 * S)
    assert queued(engine) == ["firing", "escalation"]


def test_warning_does_not_escalate(tmp_path: Path) -> None:
    """Only critical alerts escalate."""
    engine = engine_at(tmp_path / "a.db", escalate_after_s=600, repeat_s=10**6)
    engine.observe([obs(0, trigger=True, severity=Severity.WARNING)], now_ns=T0)
    engine.tick(now_ns=T0 + 6000 * S)
    assert queued(engine) == ["firing"]


def test_silence_holds_notifications_until_it_ends(tmp_path: Path) -> None:
    """A silenced alert still fires but is notified only after the silence ends."""
    engine = engine_at(tmp_path / "a.db")
    engine.silence(
        device="DX-0001", rule="distraction_force", until_ns=T0 + 100 * S,
        by="Dr Example", note="planned frame adjustment", now_ns=T0,
    )  # fmt: skip
    [alert] = engine.observe([obs(1, trigger=True)], now_ns=T0 + S)
    assert alert.state is AlertState.FIRING
    assert queued(engine) == []
    engine.tick(now_ns=T0 + 100 * S)
    assert queued(engine) == ["firing"]


def test_silence_covers_only_its_rule(tmp_path: Path) -> None:
    """A silence for one rule does not hold back another rule's alert."""
    engine = engine_at(tmp_path / "a.db")
    engine.silence(
        device="DX-0001", rule="battery_low", until_ns=T0 + 100 * S, by="Dr Example", note="",
        now_ns=T0,
    )  # fmt: skip
    engine.observe([obs(1, trigger=True)], now_ns=T0 + S)
    assert queued(engine) == ["firing"]


@pytest.mark.parametrize(
    ("by", "note"), [("", "x"), ("Dr Example", " ")], ids=["no-name", "no-note"]
)
def test_acknowledgement_needs_name_and_note(tmp_path: Path, by: str, note: str) -> None:
    """An acknowledgement without a name or a note is refused."""
    engine = engine_at(tmp_path / "a.db")
    [alert] = engine.observe([obs(0, trigger=True)], now_ns=T0)
    with pytest.raises(AlertError):
        engine.acknowledge(alert.id, by=by, note=note, now_ns=T0)


def test_severity_rise_renotifies_and_clears_ack(tmp_path: Path) -> None:
    """A warning that turns critical is notified again and needs a new acknowledgement."""
    engine = engine_at(tmp_path / "a.db")
    [alert] = engine.observe([obs(0, trigger=True)], now_ns=T0)
    engine.acknowledge(alert.id, by="Dr Example", note="seen", now_ns=T0)
    [alert] = engine.observe([obs(5, trigger=True, severity=Severity.CRITICAL)], now_ns=T0)
    assert (alert.severity, alert.acked_by) == (Severity.CRITICAL, None)
    assert queued(engine) == ["firing", "acknowledged", "firing"]


def test_restart_keeps_state_and_audit(tmp_path: Path) -> None:
    """After a restart the open alert, its acknowledgement and the audit trail are still there."""
    path = tmp_path / "a.db"
    engine = engine_at(path)
    [alert] = engine.observe([obs(0, trigger=True)], now_ns=T0)
    engine.acknowledge(alert.id, by="Dr Example", note="seen", now_ns=T0 + S)
    audit_before = engine.store.audit()
    engine.store.close()

    again = engine_at(path)
    reopened = again.store.get(alert.id)
    assert reopened is not None
    assert (reopened.state, reopened.acked_by) == (AlertState.FIRING, "Dr Example")
    assert again.store.audit() == audit_before
    [resolved] = again.observe([obs(9, trigger=False, clear=True)], now_ns=T0 + 9 * S)
    assert resolved.id == alert.id
    assert resolved.state is AlertState.RESOLVED


def test_audit_trail_refuses_changes(tmp_path: Path) -> None:
    """The audit table cannot be updated or deleted from, even with direct SQL."""
    path = tmp_path / "a.db"
    engine = engine_at(path)
    engine.observe([obs(0, trigger=True)], now_ns=T0)
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'someone'")
    db.close()


def test_history_lines_are_queued(tmp_path: Path) -> None:
    """Firing and acknowledging queue `alert` and `alert_ack` lines for InfluxDB."""
    engine = engine_at(tmp_path / "a.db")
    [alert] = engine.observe([obs(0, trigger=True)], now_ns=T0)
    engine.acknowledge(alert.id, by="Dr Example", note="seen", now_ns=T0 + S)
    lines = [
        i.payload["lines"] for i in engine.store.due(now_ns=2**62) if i.channel == HISTORY_CHANNEL
    ]
    assert lines[0].startswith("alert,device=DX-0001,hub=HUB-A,patient=P-7F3A,rule=")
    assert lines[1].startswith("alert_ack,device=DX-0001,patient=P-7F3A,rule=distraction_force ")
