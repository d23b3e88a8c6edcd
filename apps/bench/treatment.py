"""An emulated treatment through the DSP and the alert rules, in process, in simulated time.

The same chain as production — emulator frames and events -> `FleetEstimator` fed as ingest
feeds it -> the estimate messages ingest publishes -> the alert service's rule book and engine,
ticked every simulated minute — without MQTT or processes, so a whole treatment takes seconds.
The scenario tests and the false-alert figure of `osteotel bench ingest` both run it.
"""

from pathlib import Path

from alerts.engine import AlertEngine
from alerts.inputs import parse_estimate
from alerts.model import Alert, AlertState, Observation
from alerts.rules import RuleBook
from alerts.store import AlertStore
from devices.contract import HubStatus
from devices.emulator.generator import Emitted, generate
from devices.emulator.timeline import DeviceConfig
from devices.registry import Registry
from dsp.adherence import Protocol
from dsp.estimator import FleetEstimator
from ingest.estimates import estimate_message, feed_event

__all__ = ["run_treatment"]

_TICK_NS = 60 * 1_000_000_000  # the alert service's tick, in simulated time


def run_treatment(
    config: DeviceConfig, registry: Registry, db: Path, *, start_ns: int, end_ns: int
) -> tuple[list[Alert], dict[int, int]]:
    """Run one emulated device from `start_ns` to `end_ns` through the estimator and the rules.

    Args:
        config: the emulated device; its hub and id must be in `registry`.
        registry: what the alert service knows (patient, site, protocol, overrides).
        db: the alert database to create.
        start_ns: the osteotomy, UTC epoch ns.
        end_ns: the end of the run, UTC epoch ns.

    Returns:
        Every alert, and for each one that fired the simulated time it fired at (its own
        `fired_ns` is the time of the measurement, e.g. the start of a day for a daily record).
    """
    fleet = FleetEstimator(capacity=1)
    # The emulated prescription: the registry's target may differ from the emulated one.
    fleet.set_protocol(
        config.device,
        Protocol(
            steps_per_day=config.steps_per_day, step_mm=config.step_mm, target_mm=config.target_mm
        ),
    )
    patient = registry.devices[config.device].patient
    rules = RuleBook(registry, now_ns=start_ns)
    raised: dict[int, int] = {}
    with AlertStore(db) as store:
        engine = AlertEngine(
            store, channels=[], grafana_url="http://127.0.0.1:3000", repeat_s=14_400.0,
            escalate_after_s=1_800.0, history=False,
        )  # fmt: skip
        pending = False
        tick_ns = start_ns
        for item in generate(config, start_ns=start_ns, end_ns=end_ns):
            while tick_ns + _TICK_NS <= item.t_ns:
                tick_ns += _TICK_NS
                changed = engine.observe(rules.tick(tick_ns), now_ns=tick_ns)
                pending |= any(a.state is AlertState.PENDING for a in changed)
                # Only pending alerts change on a tick (repeats are notifications, not
                # alerts): skipping the idle ticks keeps a treatment's minutes fast.
                if pending:
                    changed += engine.tick(now_ns=tick_ns)
                    pending = bool(store.alerts(states=[AlertState.PENDING]))
                _note_fired(changed, tick_ns, raised)
            observations = _observe(item, fleet, rules, config.hub, patient)
            if observations:
                changed = engine.observe(observations, now_ns=item.t_ns)
                pending |= any(a.state is AlertState.PENDING for a in changed)
                _note_fired(changed, item.t_ns, raised)
        return store.alerts(), raised


def _observe(
    item: Emitted, fleet: FleetEstimator, rules: RuleBook, hub: str, patient: str
) -> list[Observation]:
    """One published item through the estimator (as ingest) and the rules (as the service)."""
    if item.frame is not None:
        frame = item.frame
        records = fleet.frame(
            frame.device, frame.force_n, frame.disp_mm, frame.ref_load_n, frame.t0_ns,
            frame.rate_hz,
        )  # fmt: skip
        observations = rules.frame(hub, frame)
    elif item.event is not None:
        records = feed_event(fleet, item.event)
        observations = rules.event(hub, item.event)
    else:
        assert item.online is not None
        records = []
        observations = rules.status(HubStatus(hub=hub, online=item.online, t_ns=item.t_ns))
    for record in records:
        observations += rules.estimate(parse_estimate(estimate_message(hub, patient, record)))
    return observations


def _note_fired(changed: list[Alert], now_ns: int, raised: dict[int, int]) -> None:
    for alert in changed:
        if alert.state is not AlertState.PENDING and alert.fired_ns is not None:
            raised.setdefault(alert.id, now_ns)
