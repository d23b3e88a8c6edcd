"""Durable state of the alert service: one SQLite database in `AlertSettings.data_dir`.

Tables (all in `alerts.db`, WAL mode, `synchronous=FULL` so a committed acknowledgement or
audit line survives a power cut):

- `alerts`: every alert ever raised, one row each; at most one open (pending or firing)
  alert per device and rule, enforced by a partial unique index;
- `silences`: who silenced what until when;
- `audit`: the append-only trail (triggers refuse UPDATE and DELETE);
- `outbox`: notifications and history points waiting for delivery, with retry bookkeeping;
- `inputs`: the recent estimates per device, replayed into the rules at start-up so that
  patient-relative rules keep their trajectory across restarts;
- `published`: notifications of undelivered outbox rows that the MQTT broker is known to have
  accepted (read back from its session by `alerts.notify.MqttNotifier`), so that sending the
  row again skips them; a row's keys leave with the row's delivery;
- `applied`: the key of every MQTT input (estimate, event, hub status) whose effect is
  committed, written in the same transaction as that effect, so that a redelivered input
  is recognised and changes nothing (kept `APPLIED_KEEP_S`).

The CLI (`osteotel alerts ack|silence|list`) opens the same file while the service runs;
WAL lets one writer and many readers work at once, and `busy_timeout` waits out the writer.
All methods are synchronous: the service calls them from a worker thread.
"""

import json
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from alerts.model import Alert, AlertState, AuditEntry, Severity, Silence

__all__ = ["APPLIED_KEEP_S", "AlertStore", "OutboxItem"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    hub TEXT NOT NULL,
    patient TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL CHECK (severity IN ('critical', 'warning', 'info')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved', 'cancelled')),
    value REAL,
    summary TEXT NOT NULL,
    for_s REAL NOT NULL,
    started_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    fired_ns INTEGER,
    resolved_ns INTEGER,
    last_notified_ns INTEGER,
    notify_count INTEGER NOT NULL DEFAULT 0,
    acked_by TEXT,
    acked_ns INTEGER,
    ack_note TEXT,
    escalated_ns INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open ON alerts (device, rule)
    WHERE state IN ('pending', 'firing');
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT,
    rule TEXT,
    until_ns INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    note TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t_ns INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    alert_id INTEGER,
    detail TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns INTEGER NOT NULL,
    last_error TEXT,
    delivered_ns INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered_ns, next_attempt_ns);
CREATE TABLE IF NOT EXISTS published (
    channel TEXT NOT NULL,
    device TEXT NOT NULL,
    key TEXT NOT NULL,
    seen_ns INTEGER NOT NULL,
    PRIMARY KEY (channel, device, key)
);
CREATE TABLE IF NOT EXISTS inputs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    t_ns INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inputs_device ON inputs (device, kind, t_ns);
CREATE TABLE IF NOT EXISTS applied (
    key TEXT PRIMARY KEY,
    applied_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS applied_age ON applied (applied_ns);
"""

_KEEP_ESTIMATES = 400
"""Estimates kept per device and kind for the rules' replay: ~100 days of 4 steps a day."""

APPLIED_KEEP_S = 30 * 86_400.0
"""How long an input's key is kept, seconds: a broker redelivers within a restart, and ingest
republishes what it re-derives from its last checkpoint (hours), both well inside this."""

_ALERT_COLUMNS = (
    "id, device, hub, patient, rule, severity, state, value, summary, for_s, started_ns, "
    "updated_ns, fired_ns, resolved_ns, last_notified_ns, notify_count, acked_by, acked_ns, "
    "ack_note, escalated_ns"
)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A message waiting for one channel.

    Attributes:
        id: row id, in creation order.
        channel: the notifier's name (`webhook`, `email`, `mqtt`, `alertmanager`, `history`).
        payload: the message, as built by the engine.
        attempts: failed attempts so far.
    """

    id: int
    channel: str
    payload: dict[str, Any]
    attempts: int


def _notifications(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The (device, key) of every alert in an outbox payload (none for a history row)."""
    alerts: list[dict[str, Any]] = payload.get("alerts", [])
    return [(alert["device"], alert["key"]) for alert in alerts if "key" in alert]


def _alert(row: sqlite3.Row) -> Alert:
    values = dict(row)
    values["severity"] = Severity(values["severity"])
    values["state"] = AlertState(values["state"])
    return Alert(**values)


class AlertStore:
    """The SQLite database behind the alert engine; thread-safe through one lock."""

    def __init__(self, path: Path) -> None:
        """Open (and create, with its directory) the database at `path`.

        Args:
            path: the database file, e.g. `var/alerts/alerts.db`.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection shared by the event loop's worker threads, serialised by the lock.
        self._db = sqlite3.connect(
            path, timeout=10.0, check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block as one transaction (IMMEDIATE: it takes the write lock at once)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- alerts -------------------------------------------------------------------------------

    def open_alert(self, device: str, rule: str) -> Alert | None:
        """The pending or firing alert of `device` and `rule`, if any."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE device = ? AND rule = ? "  # noqa: S608
                "AND state IN ('pending', 'firing')",
                (device, rule),
            ).fetchone()
        return None if row is None else _alert(row)

    def get(self, alert_id: int) -> Alert | None:
        """The alert with id `alert_id`, if it exists."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = ?",  # noqa: S608
                (alert_id,),
            ).fetchone()
        return None if row is None else _alert(row)

    def alerts(
        self, *, states: Sequence[AlertState] | None = None, limit: int = 1000
    ) -> list[Alert]:
        """Alerts, newest first, optionally only those in `states`."""
        wanted = [s.value for s in (states or list(AlertState))]
        marks = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state IN ({marks}) "  # noqa: S608
                "ORDER BY id DESC LIMIT ?",
                (*wanted, limit),
            ).fetchall()
        return [_alert(row) for row in rows]

    def insert_alert(self, db: sqlite3.Connection, fields: dict[str, Any]) -> int:
        """Insert an alert inside a transaction; returns its id."""
        names = ", ".join(fields)
        marks = ", ".join("?" * len(fields))
        cursor = db.execute(
            f"INSERT INTO alerts ({names}) VALUES ({marks})",  # noqa: S608 - names are ours
            tuple(fields.values()),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def update_alert(self, db: sqlite3.Connection, alert_id: int, fields: dict[str, Any]) -> None:
        """Update an alert's columns inside a transaction."""
        assignments = ", ".join(f"{name} = ?" for name in fields)
        db.execute(
            f"UPDATE alerts SET {assignments} WHERE id = ?",  # noqa: S608 - names are ours
            (*fields.values(), alert_id),
        )

    # --- audit ----------------------------------------------------------------------------------

    def append_audit(
        self,
        db: sqlite3.Connection,
        *,
        t_ns: int,
        actor: str,
        action: str,
        alert_id: int | None,
        detail: dict[str, Any],
    ) -> None:
        """Append one audit line inside a transaction."""
        db.execute(
            "INSERT INTO audit (t_ns, actor, action, alert_id, detail) VALUES (?, ?, ?, ?, ?)",
            (t_ns, actor, action, alert_id, json.dumps(detail, sort_keys=True)),
        )

    def audit(self, *, alert_id: int | None = None) -> list[AuditEntry]:
        """The audit trail in order, optionally for one alert."""
        query = "SELECT id, t_ns, actor, action, alert_id, detail FROM audit"
        params: tuple[int, ...] = ()
        if alert_id is not None:
            query += " WHERE alert_id = ?"
            params = (alert_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [AuditEntry(**dict(row)) for row in rows]

    # --- silences -------------------------------------------------------------------------------

    def insert_silence(
        self,
        db: sqlite3.Connection,
        *,
        device: str | None,
        rule: str | None,
        until_ns: int,
        by: str,
        note: str,
        now_ns: int,
    ) -> int:
        """Insert a silence inside a transaction; returns its id."""
        cursor = db.execute(
            "INSERT INTO silences (device, rule, until_ns, created_by, note, created_ns) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (device, rule, until_ns, by, note, now_ns),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def silences(self, *, now_ns: int) -> list[Silence]:
        """The silences still in force at `now_ns`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device, rule, until_ns, created_by, note, created_ns FROM silences "
                "WHERE until_ns > ? ORDER BY id",
                (now_ns,),
            ).fetchall()
        return [Silence(**dict(row)) for row in rows]

    # --- outbox ---------------------------------------------------------------------------------

    def enqueue(
        self, db: sqlite3.Connection, *, channel: str, payload: dict[str, Any], now_ns: int
    ) -> None:
        """Queue a message for `channel` inside a transaction, due at once."""
        db.execute(
            "INSERT INTO outbox (channel, payload, created_ns, next_attempt_ns) "
            "VALUES (?, ?, ?, ?)",
            (channel, json.dumps(payload, sort_keys=True), now_ns, now_ns),
        )

    def due(self, *, now_ns: int, limit: int = 100) -> list[OutboxItem]:
        """Undelivered messages whose turn has come, oldest first.

        A channel with a message backing off after a failure yields nothing until that message
        is due again: its messages are delivered in order or not at all.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, channel, payload, attempts FROM outbox "
                "WHERE delivered_ns IS NULL AND channel NOT IN "
                "(SELECT channel FROM outbox WHERE delivered_ns IS NULL AND next_attempt_ns > ?) "
                "ORDER BY id LIMIT ?",
                (now_ns, limit),
            ).fetchall()
        return [
            OutboxItem(
                id=row["id"],
                channel=row["channel"],
                payload=json.loads(row["payload"]),
                attempts=row["attempts"],
            )
            for row in rows
        ]

    def delivered(self, item_id: int, *, now_ns: int) -> None:
        """Mark a message delivered, and forget which of its notifications a broker had
        accepted (a delivered row is never sent again)."""
        with self.transaction() as db:
            db.execute("UPDATE outbox SET delivered_ns = ? WHERE id = ?", (now_ns, item_id))
            row = db.execute("SELECT channel, payload FROM outbox WHERE id = ?", (item_id,))
            for channel, payload in row.fetchall():
                db.executemany(
                    "DELETE FROM published WHERE channel = ? AND device = ? AND key = ?",
                    [(channel, *pair) for pair in _notifications(json.loads(payload))],
                )

    def failed(self, item_id: int, *, error: str, next_attempt_ns: int) -> None:
        """Count a failed attempt and schedule the next one."""
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_ns = ? "
                "WHERE id = ?",
                (error[:500], next_attempt_ns, item_id),
            )

    def record_published(
        self, channel: str, pairs: Collection[tuple[str, str]], *, now_ns: int
    ) -> int:
        """Record that `channel`'s peer accepted these notifications (device, key); only those
        of undelivered rows are kept. Returns how many were kept. Writes nothing (takes no
        write lock) when none belongs to an undelivered row, the usual case."""
        with self._lock:
            rows = self._db.execute(
                "SELECT payload FROM outbox WHERE channel = ? AND delivered_ns IS NULL", (channel,)
            ).fetchall()
            undelivered = {p for row in rows for p in _notifications(json.loads(row["payload"]))}
            kept = sorted(undelivered & set(pairs))
            if kept:
                with self.transaction() as db:
                    db.executemany(
                        "INSERT OR IGNORE INTO published (channel, device, key, seen_ns) "
                        "VALUES (?, ?, ?, ?)",
                        [(channel, device, key, now_ns) for device, key in kept],
                    )
        return len(kept)

    def published(self, channel: str) -> set[tuple[str, str]]:
        """The notifications (device, key) of `channel`'s undelivered rows its peer accepted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT device, key FROM published WHERE channel = ?", (channel,)
            ).fetchall()
        return {(row["device"], row["key"]) for row in rows}

    def backlog(self) -> dict[str, int]:
        """Undelivered messages per channel."""
        with self._lock:
            rows = self._db.execute(
                "SELECT channel, COUNT(*) AS n FROM outbox WHERE delivered_ns IS NULL "
                "GROUP BY channel"
            ).fetchall()
        return {row["channel"]: row["n"] for row in rows}

    # --- inputs (rule trajectories) -------------------------------------------------------------

    def record_input(
        self, db: sqlite3.Connection, *, payload: dict[str, Any], keep: int = _KEEP_ESTIMATES
    ) -> None:
        """Keep an estimate for replay at start-up, inside a transaction; only the newest `keep`
        per device and kind stay.

        Args:
            db: the open transaction.
            payload: the estimate's fields, with `device`, `kind` and `t_ns`.
            keep: how many estimates of the device and kind to keep.
        """
        device, kind, t_ns = payload["device"], payload["kind"], payload["t_ns"]
        db.execute(
            "INSERT INTO inputs (device, kind, t_ns, payload) VALUES (?, ?, ?, ?)",
            (device, kind, t_ns, json.dumps(payload)),
        )
        db.execute(
            "DELETE FROM inputs WHERE device = ? AND kind = ? AND id NOT IN "
            "(SELECT id FROM inputs WHERE device = ? AND kind = ? ORDER BY t_ns DESC, id DESC "
            "LIMIT ?)",
            (device, kind, device, kind, keep),
        )

    def inputs(self) -> list[dict[str, Any]]:
        """Every kept input, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT payload FROM inputs ORDER BY t_ns, id").fetchall()
        return [json.loads(row["payload"]) for row in rows]

    # --- applied inputs (idempotence) -----------------------------------------------------------

    def applied(self, key: str) -> bool:
        """Whether the input with `key` has been applied (its effect is committed)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM applied WHERE key = ?", (key,)).fetchone()
        return row is not None

    def mark_applied(self, db: sqlite3.Connection, key: str, *, now_ns: int) -> None:
        """Record inside a transaction that the input with `key` is applied."""
        db.execute("INSERT INTO applied (key, applied_ns) VALUES (?, ?)", (key, now_ns))

    def forget_applied(self, *, before_ns: int) -> int:
        """Drop the keys applied before `before_ns`; returns how many were dropped."""
        with self.transaction() as db:
            cursor = db.execute("DELETE FROM applied WHERE applied_ns < ?", (before_ns,))
        return cursor.rowcount
