"""The alert service's vocabulary: severities, what a rule observed, and an alert's record."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "RULES",
    "Alert",
    "AlertState",
    "AuditEntry",
    "Input",
    "Observation",
    "Severity",
    "Silence",
]

RULES = (
    "distraction_force",
    "premature_consolidation",
    "delayed_consolidation",
    "stiffness_drop",
    "force_drop",
    "overload",
    "missed_steps",
    "extra_steps",
    "sensor_fault",
    "data_gap",
    "device_fault",
    "device_silent",
    "hub_offline",
    "battery_low",
    "readiness",
    "sign_inconsistent",
    "poor_regenerate",
    "estimates_incomplete",
    "stiffness_unmeasured",
)
"""Every rule id, as used in alerts, silences and the CLI."""


class Severity(StrEnum):
    """How urgent an alert is; `priority` is its IEC 60601-1-8 alarm priority."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def priority(self) -> str:
        """The IEC 60601-1-8 priority: critical is high, warning medium, info low."""
        return {"critical": "high", "warning": "medium", "info": "low"}[self.value]

    @property
    def rank(self) -> int:
        """2 for critical, 1 for warning, 0 for info: higher is more urgent."""
        return {"critical": 2, "warning": 1, "info": 0}[self.value]


class AlertState(StrEnum):
    """Where an alert is in its life.

    `pending` waits out the rule's for-duration; `cancelled` is a pending alert whose
    condition went away before it fired (never notified); `resolved` fired and then cleared.
    """

    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Observation:
    """What one rule concluded about one device from one input (or from a timer).

    The two flags give hysteresis: an alert starts when `trigger` is true and ends when
    `clear` is true; between the two thresholds a firing alert keeps firing.

    Attributes:
        device: device id.
        hub: the device's hub id.
        patient: the patient pseudonym.
        rule: the rule id, e.g. `distraction_force`.
        t_ns: when the observed value was measured, UTC epoch ns.
        trigger: the value is beyond the firing threshold.
        clear: the value is back inside the resolving threshold.
        severity: the severity the alert has if it fires now.
        value: the observed value, in the unit the summary names; None when not a number.
        summary: one sentence for a clinician, with the value and the threshold.
        for_s: how long `trigger` must hold before the alert fires, seconds.
    """

    device: str
    hub: str
    patient: str
    rule: str
    t_ns: int
    trigger: bool
    clear: bool
    severity: Severity
    value: float | None
    summary: str
    for_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Input:
    """The message a call's observations came from, recorded with them in one transaction.

    Attributes:
        key: what identifies the input, e.g. `estimate/DX-0001/step/1700000000000000000`
            (`alerts.inputs.input_key`); an input whose key was applied before changes nothing.
        estimate: an estimate's fields, kept for the rules' replay at start-up; None for an
            event or a hub status.
    """

    key: str
    estimate: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert's current record (a row of the `alerts` table).

    Times are UTC epoch ns; None where the event has not happened.
    """

    id: int
    device: str
    hub: str
    patient: str
    rule: str
    severity: Severity
    state: AlertState
    value: float | None
    summary: str
    for_s: float
    started_ns: int
    updated_ns: int
    fired_ns: int | None
    resolved_ns: int | None
    last_notified_ns: int | None
    notify_count: int
    acked_by: str | None
    acked_ns: int | None
    ack_note: str | None
    escalated_ns: int | None


@dataclass(frozen=True, slots=True)
class Silence:
    """Notifications of matching alerts are held back until `until_ns`.

    `device` or `rule` None matches any device or any rule.
    """

    id: int
    device: str | None
    rule: str | None
    until_ns: int
    created_by: str
    note: str
    created_ns: int

    def matches(self, device: str, rule: str, now_ns: int) -> bool:
        """Whether this silence covers `device`/`rule` at `now_ns`."""
        return (
            now_ns < self.until_ns and self.device in (None, device) and self.rule in (None, rule)
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the append-only audit trail: who did what to which alert, and when.

    `actor` is `system` for the service's own transitions, or a clinician's name.
    """

    id: int
    t_ns: int
    actor: str
    action: str
    alert_id: int | None
    detail: str
