"""The alert phases of `osteotel bench ingest`: notification latency, and alerts in normal healing.

1. Latency. Mosquitto, `osteotel ingest` and `osteotel alerts run` run as processes; the alert
   service notifies a webhook served by a thread here. Each trial takes a device not used
   before and publishes, as its hub would, a distraction step event and then one 10 Hz frame
   covering the step and its whole relaxation window (600 s, `dsp.steps.StepConfig`), its last
   sample stamped at publish time. That frame closes the step window in ingest's estimator,
   whose step estimate (peak 1500 N) crosses the critical `distraction_force` limit (1000 N):
   publish -> Mosquitto -> ingest (DSP) -> `osteotel/v1/derived/{device}/estimates` -> alert
   service -> webhook. The clock runs from the frame's publish to the POST's arrival.
2. Normal healing. In process, as tests/test_alerts_scenarios.py: the emulator's `normal`
   scenario from osteotomy to removal for a few devices, each stream through the estimator
   (as ingest) into the rules and the alert engine; alerts that fired are counted by severity
   and divided by the device-months the treatments lasted.

Figures (keys; documented in docs/ingest.md and docs/alerts.md):
    alert_trials, alert_notifications, alert_latency_p50_s, alert_latency_p99_s
    normal_device_months, normal_alerts_per_device_month_{critical,warning,info}
"""

import argparse
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from apps.bench.processes import Child, IngestProcess, device_ids, http_get, wait, write_registry

__all__ = ["add_options", "alert_latency", "normal_alert_counts"]

_RATE_HZ = 10.0  # resolves the fast relaxation (tau_f ~ 0.97 s needs >= 10 Hz, docs/domain.md)
_PRE_S = 5.0  # baseline before the step
_WINDOW_S = 600.0  # dsp.steps.StepConfig.window_s: the frame must pass it to close the window
_RAMP_S = 2.0  # the estimator's step ramp (dsp.estimator.EstimatorConfig)
_STEP_MM = 0.25  # limb step: 4 x 0.25 mm a day (docs/domain.md, "The treatment")
_BASE_N = 100.0
# Above the 1000 N critical limit (frames failed beyond 1000 N in congenital cases, docs/domain.md).
_PEAK_N = 1500.0
_TRIAL_TIMEOUT_S = 30.0
_DRAIN_S = 2.0  # after the last trial: a notification that was not expected would show by then
_START_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 30.0
_DAY_NS = 86_400 * 1_000_000_000
_MONTH_DAYS = 365.25 / 12
_SEVERITIES = ("critical", "warning", "info")


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the alert phases' options to `osteotel bench ingest`."""
    parser.add_argument(
        "--alert-trials", type=int, default=50, help="latency trials, one device each (default 50)"
    )
    parser.add_argument(
        "--normal-devices", type=int, default=3, help="normal treatments emulated (default 3)"
    )
    parser.add_argument(
        "--normal-target-mm",
        type=float,
        default=50.0,
        help="lengthening of each normal treatment, mm (default 50)",
    )


# --- latency ------------------------------------------------------------------------------------


class _Hook:
    """A stdlib HTTP receiver noting when each (device, rule) notification arrived, epoch ns."""

    def __init__(self) -> None:
        from apps.services import free_port  # noqa: PLC0415

        self.arrived: dict[tuple[str, str], int] = {}
        self.alerts = 0
        self.changed = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received_ns = time.time_ns()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.changed:
                    for alert in body["alerts"]:
                        hook.alerts += 1
                        hook.arrived.setdefault((alert["device"], alert["rule"]), received_ns)
                    hook.changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass  # one line per POST would drown the benchmark's own output

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, key: tuple[str, str], timeout_s: float) -> int | None:
        """When `key` was notified (epoch ns), or None if not within `timeout_s`."""
        with self.changed:
            self.changed.wait_for(lambda: key in self.arrived, timeout=timeout_s)
            return self.arrived.get(key)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


class _AlertProcess(Child):
    """`osteotel alerts run` as a child process, webhook only, its own database and port."""

    def __init__(self, workdir: Path, *, mqtt: tuple[str, int], registry: Path, hook: str) -> None:
        from apps.services import free_port  # noqa: PLC0415

        super().__init__(workdir)
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "OSTEOTEL_MQTT__HOST": mqtt[0],
            "OSTEOTEL_MQTT__PORT": str(mqtt[1]),
            "OSTEOTEL_ALERTS__DATA_DIR": str(workdir / "data"),
            "OSTEOTEL_ALERTS__REGISTRY": str(registry),
            "OSTEOTEL_ALERTS__WEBHOOK_URLS": json.dumps([hook]),
            "OSTEOTEL_ALERTS__MQTT_ALERTS": "false",
            "OSTEOTEL_ALERTS__WRITE_HISTORY": "false",
            "OSTEOTEL_ALERTS__CLIENT_ID": f"bench-alerts-{workdir.name}",
            "OSTEOTEL_ALERTS__HTTP_PORT": str(self.http_port),
            "OSTEOTEL_LOG_LEVEL": "WARNING",
        }

    def start(self) -> None:
        self._spawn(
            ["alerts", "run"],
            log_name="alerts.log",
            ready=lambda: http_get(f"http://127.0.0.1:{self.http_port}/metrics")[0] == 200,
            what="the alert service",
        )

    def status_inputs(self) -> float:
        """Hub status messages the service has taken (its subscriptions are in place)."""
        _, body = http_get(f"http://127.0.0.1:{self.http_port}/metrics")
        prefix = 'osteotel_alerts_inputs_total{kind="status"} '
        return sum(
            float(line[len(prefix) :]) for line in body.splitlines() if line.startswith(prefix)
        )


class _Client:
    """A paho client on its own network thread; `publish` returns once the broker has it."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        import paho.mqtt.client as paho  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        connected = threading.Event()
        self._client.on_connect = lambda *_: connected.set()
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not connected.wait(10.0):
            self.close()
            raise TimeoutError("no answer from the broker within 10 s")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK (bounded)."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10.0)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic} within 10 s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _step_messages(hub: str, device: str) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    """A step event, and a frame of the step and its relaxation ending now: (topic, payload)."""
    import numpy as np  # noqa: PLC0415

    from devices.codec import encode_event, encode_frame_binary  # noqa: PLC0415
    from devices.contract import (  # noqa: PLC0415
        DistractionStep,
        Frame,
        events_topic,
        telemetry_topic,
    )

    samples = round((_PRE_S + _WINDOW_S + 5.0) * _RATE_HZ) + 1
    t0_ns = time.time_ns() - round((samples - 1) * 1e9 / _RATE_HZ)
    t_s = np.arange(samples) / _RATE_HZ - _PRE_S
    rng = np.random.default_rng(int(device.removeprefix("DX-")))
    ramp = np.clip(t_s / _RAMP_S, 0.0, 1.0)
    relaxed_s = np.maximum(t_s - _RAMP_S, 0.0)
    # Two-term Prony relaxation at step 1 (Bachmeier 2022): tau_f 0.97 s, tau_s 68 s.
    relaxation = 0.0034 + 0.694 * np.exp(-relaxed_s / 0.97) + 0.3026 * np.exp(-relaxed_s / 67.6)
    force_n = np.where(
        t_s < _RAMP_S,
        _BASE_N + (_PEAK_N - _BASE_N) * ramp,
        _BASE_N + (_PEAK_N - _BASE_N) * relaxation,
    )
    # Noise as a real sensor has it: without it the quality monitor would see a flatline.
    force_n = np.round(force_n + rng.normal(0.0, 0.5, samples), 2)
    disp_mm = np.round(20.0 + _STEP_MM * ramp + rng.normal(0.0, 0.002, samples), 3)
    step = DistractionStep(
        device=device, t_ns=t0_ns + round(_PRE_S * 1e9), delta_mm=_STEP_MM, source="motor"
    )
    frame = Frame(device, 0, t0_ns, _RATE_HZ, force_n, disp_mm)
    return (
        (events_topic(hub, device), encode_event(step)),
        (telemetry_topic(hub, device), encode_frame_binary(frame)),
    )


def _percentile(values: list[float], q: float) -> float:
    """The q-quantile of `values`, linear between order statistics (numpy's default)."""
    import numpy as np  # noqa: PLC0415

    return float(np.quantile(np.asarray(values), q))


@contextmanager
def _running(*stoppable: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for item in reversed(stoppable):
            item.stop()


def alert_latency(
    workdir: Path, influx_url: str, *, trials: int, timeout_s: float, raw_tier: str = "full"
) -> dict[str, object]:
    """Publish-to-webhook latency of a critical `distraction_force` alert, one device per trial.

    Args:
        workdir: where the broker, ingest and the alert service keep their files.
        influx_url: the InfluxDB ingest writes to.
        trials: devices, each stepped once.
        timeout_s: bound on the whole phase, s (each trial is also bounded, 30 s).
        raw_tier: ingest's storage tier (`ingest.raw_tier`).

    Returns:
        `alert_trials`, `alert_notifications` (every alert the webhook received, expected
        or not), `alert_latency_p50_s` and `alert_latency_p99_s` (s).

    Raises:
        TimeoutError: a server did not start, or no trial was notified.
    """
    from apps.services import Mosquitto  # noqa: PLC0415
    from devices.codec import encode_status  # noqa: PLC0415
    from devices.contract import HubStatus, status_topic  # noqa: PLC0415

    workdir.mkdir(parents=True, exist_ok=True)
    ids = device_ids(trials)
    registry = workdir / "registry.toml"
    write_registry(registry, ids)
    with registry.open("a", encoding="utf-8") as toml:
        # Devices wait their turn: none may count as silent while the trials run.
        toml.write("[alerts]\nsilent_after_s = 86400\n")
    deadline = time.monotonic() + timeout_s
    latencies_s: list[float] = []
    hook = _Hook()
    try:
        with Mosquitto(workdir / "broker", persistence=False) as broker:
            mqtt = (broker.host, broker.port)
            ingest = IngestProcess(
                workdir / "ingest",
                processes=1,
                mqtt=mqtt,
                influx_url=influx_url,
                database="bench_ingest_alerts",
                registry=registry,
                raw_tier=raw_tier,
            )
            alerts = _AlertProcess(workdir / "alerts", mqtt=mqtt, registry=registry, hook=hook.url)
            with _running(ingest, alerts):
                ingest.start()
                alerts.start()
                client = _Client(broker.host, broker.port, "osteotel-bench-alerts")
                try:
                    # Retained, so the service gets it whenever its subscription lands.
                    for hub in dict.fromkeys(hub for hub, _ in ids):
                        status = HubStatus(hub=hub, online=True, t_ns=time.time_ns())
                        client.publish(status_topic(hub), encode_status(status), retain=True)
                    wait(lambda: alerts.status_inputs() > 0, "alert subscriptions", 30.0)
                    for hub, device in ids:
                        event, frame = _step_messages(hub, device)
                        client.publish(*event)  # acknowledged first: the step opens the window
                        published_ns = time.time_ns()
                        client.publish(*frame)
                        left_s = min(_TRIAL_TIMEOUT_S, deadline - time.monotonic())
                        arrived_ns = hook.wait_for((device, "distraction_force"), left_s)
                        if arrived_ns is not None:
                            latencies_s.append((arrived_ns - published_ns) / 1e9)
                    time.sleep(_DRAIN_S)
                finally:
                    client.close()
    finally:
        hook.close()
    if not latencies_s:
        raise TimeoutError(f"none of {trials} trials was notified; see {workdir}")
    return {
        "alert_trials": trials,
        "alert_notifications": hook.alerts,
        "alert_latency_p50_s": _percentile(latencies_s, 0.50),
        "alert_latency_p99_s": _percentile(latencies_s, 0.99),
    }


# --- normal healing -----------------------------------------------------------------------------


def _removal_ns(config: Any, start_ns: int) -> int:
    """When the emulated treatment reaches removal, from its ground truth (epoch ns)."""
    from devices.emulator.groundtruth import ground_truth  # noqa: PLC0415

    horizon_ns = start_ns + 3 * 365 * _DAY_NS
    return next(
        int(record["t_ns"])
        for record in ground_truth(config, start_ns=start_ns, end_ns=horizon_ns)
        if record["type"] == "phase" and record["phase"] == "removal"
    )


def _treatment(
    device: str, hub: str, registry: Path, *, seed: int, target_mm: float, db: Path
) -> tuple[dict[str, int], float]:
    """One emulated normal treatment to removal: fired alerts by severity, and its months."""
    from apps.bench.treatment import run_treatment  # noqa: PLC0415
    from devices.emulator.generator import DeviceConfig  # noqa: PLC0415
    from devices.registry import Registry  # noqa: PLC0415

    full = Registry.load(registry)
    # One device per rule book: the others, not emulated here, would all be silent.
    one = full.model_copy(
        update={"devices": {device: full.devices[device]}, "hubs": {hub: full.hubs[hub]}}
    )
    config = DeviceConfig(device=device, hub=hub, seed=seed, rate_hz=_RATE_HZ, target_mm=target_mm)
    start_ns = 19_700 * _DAY_NS  # an osteotomy at midnight UTC
    end_ns = _removal_ns(config, start_ns)
    alerts, _ = run_treatment(config, one, db, start_ns=start_ns, end_ns=end_ns)
    # A pending alert that never fired notified nobody: it is not counted.
    counts = dict.fromkeys(_SEVERITIES, 0)
    for alert in alerts:
        if alert.fired_ns is not None:
            counts[alert.severity.value] += 1
    return counts, (end_ns - start_ns) / _DAY_NS / _MONTH_DAYS


def normal_alert_counts(workdir: Path, *, devices: int, target_mm: float) -> dict[str, object]:
    """Alerts fired per device-month over emulated normal treatments, osteotomy to removal.

    Args:
        workdir: where each treatment's alert database goes.
        devices: treatments, each with its own seed.
        target_mm: the lengthening of each, mm.

    Returns:
        `normal_device_months` and `normal_alerts_per_device_month_{critical,warning,info}`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ids = device_ids(devices)
    registry = workdir / "registry.toml"
    write_registry(registry, ids)
    totals = dict.fromkeys(_SEVERITIES, 0)
    months = 0.0
    for number, (hub, device) in enumerate(ids):
        counts, device_months = _treatment(
            device, hub, registry, seed=number + 1, target_mm=target_mm,
            db=workdir / f"{device}.db",
        )  # fmt: skip
        months += device_months
        for severity, count in counts.items():
            totals[severity] += count
    figures: dict[str, object] = {"normal_device_months": months}
    for severity in _SEVERITIES:
        figures[f"normal_alerts_per_device_month_{severity}"] = totals[severity] / months
    return figures
