"""What the alert service did, for Prometheus (`/metrics` on `AlertSettings.http_port`).

- `osteotel_alerts_inputs_total{kind}`: estimates, events and status messages taken;
- `osteotel_alerts_repeated_total{kind}`: inputs applied before (a redelivery), skipped;
- `osteotel_alerts_rejected_total{reason}`: messages refused (malformed, unknown device...);
- `osteotel_alerts_notifications_total{channel,outcome}`: deliveries, `sent` or `failed`;
- `osteotel_alerts_outbox_backlog{channel}`: messages still waiting (read from SQLite on scrape);
- `osteotel_alerts_open{severity}`: firing alerts (read from SQLite on scrape).
"""

import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.model import AlertState
from alerts.store import AlertStore

__all__ = ["AlertMetrics"]


class _StoreCollector(Collector):
    def __init__(self, store: AlertStore) -> None:
        self._store = store

    def collect(self) -> Iterable[Metric]:
        backlog = GaugeMetricFamily(
            "osteotel_alerts_outbox_backlog", "Notifications not yet delivered", labels=["channel"]
        )
        for channel, count in sorted(self._store.backlog().items()):
            backlog.add_metric([channel], count)
        yield backlog
        firing = GaugeMetricFamily("osteotel_alerts_open", "Firing alerts", labels=["severity"])
        counts: dict[str, int] = {"critical": 0, "warning": 0, "info": 0}
        for alert in self._store.alerts(states=[AlertState.FIRING]):
            counts[alert.severity.value] += 1
        for severity, count in counts.items():
            firing.add_metric([severity], count)
        yield firing


class AlertMetrics:
    """The alert service's Prometheus registry and, optionally, its HTTP endpoint."""

    def __init__(self, store: AlertStore) -> None:
        """Create the metrics; the backlog and open-alert gauges read `store` on each scrape."""
        self.registry = CollectorRegistry()
        self.inputs = Counter(
            "osteotel_alerts_inputs", "Messages taken by the alert service", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self.repeated = Counter(
            "osteotel_alerts_repeated", "Inputs applied before (redelivered), skipped", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self.rejected = Counter(
            "osteotel_alerts_rejected", "Messages refused by the alert service", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.notifications = Counter(
            "osteotel_alerts_notifications", "Notification attempts", ["channel", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(_StoreCollector(store))
        self._server: tuple[WSGIServer, threading.Thread] | None = None

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """Serve `/metrics` on `host:port` from a daemon thread until `close()`."""
        self._server = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        """Stop the HTTP endpoint, if it runs."""
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None
