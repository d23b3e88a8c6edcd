"""The alert lifecycle: pending -> firing -> resolved, repeats, escalation, silences, acks.

Rules (alerts.rules) turn inputs into `Observation`s; the engine keeps one open alert per
device and rule (deduplication) and moves it along:

    (none) --trigger--> pending --held for for_s--> firing --clear--> resolved
                           \\--no trigger--> cancelled         (between thresholds: stays firing)

A firing alert is notified when it fires, when its severity rises, again every `repeat_s`
until acknowledged, once as an escalation when it is critical and unacknowledged for
`escalate_after_s`, and when it resolves. Notifications of one call are grouped per patient
and event. A silence holds notifications back (state still changes and is audited); a
firing alert silenced when it fired is notified once the silence ends.

Every change is written in one SQLite transaction with its audit line and its outbox rows
(one per channel, plus `history` for InfluxDB), so a crash can lose nothing half-done. The
input the observations came from (`Input`) is recorded in that transaction too: applying an
input a second time (a redelivery after a crash) changes nothing and notifies nothing.
Times are passed in (`now_ns`): the engine never reads the clock, which keeps it testable.
"""

import logging
import math
import sqlite3
import urllib.parse
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from alerts.model import Alert, AlertState, Input, Observation, Severity
from alerts.store import AlertStore
from devices.contract import MAX_TIME_NS
from osteotel.errors import OsteotelError
from osteotel.logs import kv
from osteotel.store.lineproto import point_line

__all__ = ["HISTORY_CHANNEL", "AlertEngine", "AlertError", "alert_message", "iso_time"]

_log = logging.getLogger("osteotel.alerts.engine")

HISTORY_CHANNEL = "history"
"""The outbox channel whose rows are InfluxDB line protocol (`alert`, `alert_ack`)."""

_NS = 1_000_000_000
_SYSTEM = "system"


class AlertError(OsteotelError):
    """An acknowledgement or silence cannot be applied (unknown alert, empty name...)."""


def iso_time(t_ns: int) -> str:
    """Format UTC epoch nanoseconds as ISO 8601 with microseconds and `Z`."""
    seconds, rest_ns = divmod(t_ns, _NS)
    moment = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=rest_ns // 1000)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _link(grafana_url: str, device: str) -> str:
    query = urllib.parse.urlencode({"var-device": device})
    return f"{grafana_url.rstrip('/')}/d/osteotel-patient?{query}"


def alert_message(alert: Alert, *, event: str, t_ns: int, grafana_url: str) -> dict[str, Any]:
    """The JSON form of one alert in a notification: pseudonym, device, rule, value, time, link,
    and `key` (alert id, event and time), the notification's idempotency key.

    Args:
        alert: the alert.
        event: `firing`, `repeat`, `escalation`, `resolved` or `acknowledged`.
        t_ns: when this event happened, UTC epoch ns.
        grafana_url: Grafana's base URL, for the device board link.

    Returns:
        A dict with nothing more personal than the patient pseudonym.
    """
    return {
        "id": alert.id,
        "event": event,
        # The same for every copy of this notification: a receiver drops what it has seen.
        "key": f"{alert.id}:{event}:{t_ns}",
        "patient": alert.patient,
        "device": alert.device,
        "hub": alert.hub,
        "rule": alert.rule,
        "severity": alert.severity.value,
        "priority": alert.severity.priority,
        "state": alert.state.value,
        "value": alert.value,
        "summary": alert.summary,
        "t_ns": t_ns,
        "time": iso_time(t_ns),
        "started_ns": alert.started_ns,
        "started": iso_time(alert.started_ns),
        "fired_ns": alert.fired_ns,
        "resolved_ns": alert.resolved_ns,
        "acked_by": alert.acked_by,
        "link": _link(grafana_url, alert.device),
    }


class AlertEngine:
    """Applies observations, timers, acknowledgements and silences to the stored alerts."""

    def __init__(
        self,
        store: AlertStore,
        *,
        channels: Sequence[str],
        grafana_url: str,
        repeat_s: float,
        escalate_after_s: float,
        history: bool = True,
    ) -> None:
        """Bind the engine to its store.

        Args:
            store: the SQLite state.
            channels: notifier names each notification is queued for.
            grafana_url: Grafana's base URL, for the links in messages.
            repeat_s: renotify an unacknowledged firing alert after this long, seconds.
            escalate_after_s: escalate a critical alert unacknowledged this long, seconds.
            history: also queue `alert`/`alert_ack` points for InfluxDB.
        """
        self.store = store
        self._channels = tuple(channels)
        self._grafana_url = grafana_url
        self._repeat_ns = round(repeat_s * _NS)
        self._escalate_ns = round(escalate_after_s * _NS)
        self._history = history

    # --- observations -------------------------------------------------------------------------

    def observe(
        self,
        observations: Iterable[Observation],
        *,
        now_ns: int,
        source: Input | None = None,
    ) -> list[Alert]:
        """Apply rule observations; returns the alerts that changed, as they are now.

        Args:
            observations: what the rules concluded, in input order.
            now_ns: the current time, UTC epoch ns (stamps notifications and the audit).
            source: the input they came from, recorded in the same transaction; when its key
                was applied before, nothing is changed and nothing returned.
        """
        changed: dict[int, Alert] = {}
        with self.store.transaction() as db:
            if source is not None:
                if self.store.applied(source.key):
                    _log.info(kv("alert_input_repeated", key=source.key))
                    return []
                self.store.mark_applied(db, source.key, now_ns=now_ns)
                if source.estimate is not None:
                    self.store.record_input(db, payload=source.estimate)
            events: list[tuple[str, int, int]] = []
            for observation in observations:
                alert_id = self._apply(db, observation, events)
                if alert_id is not None:
                    changed[alert_id] = self._get(alert_id)
            self._dispatch(db, events, now_ns)
        return [self._get(alert_id) for alert_id in changed]

    def _apply(
        self, db: sqlite3.Connection, obs: Observation, events: list[tuple[str, int, int]]
    ) -> int | None:
        current = self.store.open_alert(obs.device, obs.rule)
        if current is None:
            if not obs.trigger:
                return None
            firing = obs.for_s <= 0
            alert_id = self.store.insert_alert(
                db,
                {
                    "device": obs.device,
                    "hub": obs.hub,
                    "patient": obs.patient,
                    "rule": obs.rule,
                    "severity": obs.severity.value,
                    "state": (AlertState.FIRING if firing else AlertState.PENDING).value,
                    "value": obs.value,
                    "summary": obs.summary,
                    "for_s": obs.for_s,
                    "started_ns": obs.t_ns,
                    "updated_ns": obs.t_ns,
                    "fired_ns": obs.t_ns if firing else None,
                },
            )
            self._audit(db, obs.t_ns, "firing" if firing else "pending", alert_id, obs)
            if firing:
                events.append(("firing", alert_id, obs.t_ns))
            return alert_id
        update: dict[str, Any] = {"updated_ns": obs.t_ns}
        if current.state is AlertState.PENDING:
            if not obs.trigger:
                self.store.update_alert(
                    db, current.id, {**update, "state": "cancelled", "resolved_ns": obs.t_ns}
                )
                self._audit(db, obs.t_ns, "cancelled", current.id, obs)
                return current.id
            update |= {"value": obs.value, "summary": obs.summary, "severity": obs.severity.value}
            if obs.t_ns - current.started_ns >= round(current.for_s * _NS):
                update |= {"state": "firing", "fired_ns": obs.t_ns}
                self._audit(db, obs.t_ns, "firing", current.id, obs)
                events.append(("firing", current.id, obs.t_ns))
            self.store.update_alert(db, current.id, update)
            return current.id
        if obs.clear:
            update |= {"state": "resolved", "resolved_ns": obs.t_ns, "value": obs.value}
            self.store.update_alert(db, current.id, update)
            self._audit(db, obs.t_ns, "resolved", current.id, obs)
            events.append(("resolved", current.id, obs.t_ns))
            return current.id
        # Between the thresholds, or still beyond: the alert keeps firing; keep its value fresh.
        update |= {"value": obs.value, "summary": obs.summary}
        if obs.trigger and obs.severity.rank > current.severity.rank:
            # An acknowledgement covers the severity that was acknowledged, not a worse one.
            update |= {
                "severity": obs.severity.value,
                "acked_by": None,
                "acked_ns": None,
                "ack_note": None,
                "escalated_ns": None,
                "fired_ns": obs.t_ns,
            }
            self._audit(db, obs.t_ns, "severity_raised", current.id, obs)
            events.append(("firing", current.id, obs.t_ns))
        self.store.update_alert(db, current.id, update)
        return current.id

    def _audit(
        self, db: sqlite3.Connection, t_ns: int, action: str, alert_id: int, obs: Observation
    ) -> None:
        self.store.append_audit(
            db,
            t_ns=t_ns,
            actor=_SYSTEM,
            action=action,
            alert_id=alert_id,
            detail={
                "device": obs.device,
                "rule": obs.rule,
                "severity": obs.severity.value,
                "value": obs.value,
            },
        )

    # --- timers ---------------------------------------------------------------------------------

    def tick(self, *, now_ns: int) -> list[Alert]:
        """Fire pending alerts whose for-duration has passed, repeat and escalate; returns
        the alerts notified or fired.

        Args:
            now_ns: the current time, UTC epoch ns.
        """
        touched: list[int] = []
        with self.store.transaction() as db:
            events: list[tuple[str, int, int]] = []
            for alert in self.store.alerts(states=[AlertState.PENDING, AlertState.FIRING]):
                event = self._due_event(alert, now_ns)
                if event is None:
                    continue
                if event == "firing" and alert.state is AlertState.PENDING:
                    self.store.update_alert(db, alert.id, {"state": "firing", "fired_ns": now_ns})
                    self.store.append_audit(
                        db,
                        t_ns=now_ns,
                        actor=_SYSTEM,
                        action="firing",
                        alert_id=alert.id,
                        detail={"after_s": alert.for_s},
                    )
                events.append((event, alert.id, now_ns))
                touched.append(alert.id)
            self._dispatch(db, events, now_ns)
        return [self._get(alert_id) for alert_id in touched]

    def _due_event(self, alert: Alert, now_ns: int) -> str | None:
        if alert.state is AlertState.PENDING:
            due = now_ns - alert.started_ns >= round(alert.for_s * _NS)
            return "firing" if due else None
        if alert.acked_by is not None:
            return None
        if alert.last_notified_ns is None:
            # Fired while silenced: tell once the silence is over (_dispatch checks it again).
            return "firing"
        fired_ns = alert.fired_ns if alert.fired_ns is not None else alert.started_ns
        if (
            alert.severity is Severity.CRITICAL
            and alert.escalated_ns is None
            and now_ns - fired_ns >= self._escalate_ns
        ):
            return "escalation"
        if now_ns - alert.last_notified_ns >= self._repeat_ns:
            return "repeat"
        return None

    # --- notifications --------------------------------------------------------------------------

    def _dispatch(
        self, db: sqlite3.Connection, events: list[tuple[str, int, int]], now_ns: int
    ) -> None:
        silences = self.store.silences(now_ns=now_ns)
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for event, alert_id, t_ns in events:
            alert = self._get(alert_id)
            if self._history:
                self._queue_history(db, alert, event, t_ns, now_ns)
            held = next((s for s in silences if s.matches(alert.device, alert.rule, now_ns)), None)
            if held is not None:
                self.store.append_audit(
                    db,
                    t_ns=now_ns,
                    actor=_SYSTEM,
                    action="suppressed",
                    alert_id=alert.id,
                    detail={"event": event, "silence": held.id},
                )
                continue
            update: dict[str, Any] = {"last_notified_ns": now_ns}
            if event != "resolved":
                update["notify_count"] = alert.notify_count + 1
            if event == "escalation":
                update["escalated_ns"] = now_ns
            self.store.update_alert(db, alert.id, update)
            alert = self._get(alert_id)
            message = alert_message(alert, event=event, t_ns=t_ns, grafana_url=self._grafana_url)
            groups.setdefault((alert.patient, event), []).append(message)
            self.store.append_audit(
                db,
                t_ns=now_ns,
                actor=_SYSTEM,
                action=f"notified_{event}",
                alert_id=alert.id,
                detail={"channels": list(self._channels)},
            )
        for (patient, event), messages in groups.items():
            self._queue(db, patient=patient, event=event, messages=messages, now_ns=now_ns)

    def _queue(
        self,
        db: sqlite3.Connection,
        *,
        patient: str,
        event: str,
        messages: list[dict[str, Any]],
        now_ns: int,
    ) -> None:
        payload = {"v": 1, "event": event, "patient": patient, "alerts": messages}
        for channel in self._channels:
            self.store.enqueue(db, channel=channel, payload=payload, now_ns=now_ns)
        _log.info(kv("alert_notify", patient=patient, kind=event, alerts=len(messages)))

    def _queue_history(
        self, db: sqlite3.Connection, alert: Alert, event: str, t_ns: int, now_ns: int
    ) -> None:
        line = point_line(
            "alert",
            {
                "device": alert.device,
                "hub": alert.hub,
                "patient": alert.patient,
                "rule": alert.rule,
                "severity": alert.severity.value,
            },
            {
                "alert_id": alert.id,
                "event": event,
                "state": alert.state.value,
                "value": alert.value if _finite(alert.value) else None,
                "summary": alert.summary,
                "acked": alert.acked_by is not None,
            },
            t_ns,
        )
        self.store.enqueue(
            db, channel=HISTORY_CHANNEL, payload={"lines": line.decode()}, now_ns=now_ns
        )

    # --- clinicians -----------------------------------------------------------------------------

    def acknowledge(self, alert_id: int, *, by: str, note: str, now_ns: int) -> Alert:
        """Acknowledge an open alert: no more repeats or escalation for it.

        Args:
            alert_id: the alert's id.
            by: the clinician's name (staff, never a patient).
            note: what was done or decided.
            now_ns: the current time, UTC epoch ns.

        Returns:
            The acknowledged alert.

        Raises:
            AlertError: no such alert, it is not pending or firing, or `by` or `note` is empty.
        """
        by, note = by.strip(), note.strip()
        if not by or not note:
            raise AlertError("an acknowledgement needs a name (--by) and a note (--note)")
        with self.store.transaction() as db:
            alert = self.store.get(alert_id)
            if alert is None:
                raise AlertError(f"no alert with id {alert_id}")
            if alert.state not in (AlertState.PENDING, AlertState.FIRING):
                raise AlertError(f"alert {alert_id} is {alert.state.value}, not open")
            self.store.update_alert(
                db, alert_id, {"acked_by": by, "acked_ns": now_ns, "ack_note": note}
            )
            self.store.append_audit(
                db, t_ns=now_ns, actor=by, action="acknowledged", alert_id=alert_id,
                detail={"note": note},
            )  # fmt: skip
            alert = self._get(alert_id)
            if self._history:
                line = point_line(
                    "alert_ack",
                    {"device": alert.device, "patient": alert.patient, "rule": alert.rule},
                    {"alert_id": alert_id, "by": by, "note": note},
                    now_ns,
                )
                self.store.enqueue(
                    db, channel=HISTORY_CHANNEL, payload={"lines": line.decode()}, now_ns=now_ns
                )
            message = alert_message(
                alert, event="acknowledged", t_ns=now_ns, grafana_url=self._grafana_url
            )
            self._queue(
                db, patient=alert.patient, event="acknowledged", messages=[message], now_ns=now_ns
            )
        return alert

    def silence(
        self,
        *,
        device: str | None,
        rule: str | None,
        until_ns: int,
        by: str,
        note: str,
        now_ns: int,
    ) -> int:
        """Hold back notifications for a device and/or rule until `until_ns`.

        Args:
            device: the device id, or None for every device.
            rule: the rule id, or None for every rule.
            until_ns: end of the silence, UTC epoch ns; must be after `now_ns`.
            by: the clinician's name.
            note: why.
            now_ns: the current time, UTC epoch ns.

        Returns:
            The silence's id.

        Raises:
            AlertError: the end is not in the future, `by` is empty, or neither device nor
                rule is given (silencing everything is not an option a CLI should have).
        """
        if not now_ns < until_ns <= MAX_TIME_NS:
            raise AlertError("a silence must end in the future, before the year 2262")
        if not by.strip():
            raise AlertError("a silence needs a name (--by)")
        if device is None and rule is None:
            raise AlertError("a silence names a device, a rule or both")
        with self.store.transaction() as db:
            silence_id = self.store.insert_silence(
                db, device=device, rule=rule, until_ns=until_ns, by=by.strip(), note=note,
                now_ns=now_ns,
            )  # fmt: skip
            self.store.append_audit(
                db,
                t_ns=now_ns,
                actor=by.strip(),
                action="silenced",
                alert_id=None,
                detail={
                    "silence": silence_id,
                    "device": device,
                    "rule": rule,
                    "until": iso_time(until_ns),
                    "note": note,
                },
            )
        return silence_id

    def _get(self, alert_id: int) -> Alert:
        alert = self.store.get(alert_id)
        assert alert is not None
        return alert


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
