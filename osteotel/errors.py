"""The exceptions osteotel raises across its own boundaries.

    OsteotelError
    ├── ConfigError          settings or the device registry are invalid
    ├── MissingBinaryError   a server binary (mosquitto, influxd, ...) is not installed
    ├── StoreError           InfluxDB did not take a write or answer a query
    │   ├── StoreUnavailable the server could not be reached or answered 5xx: retry later
    │   └── StoreRejected    the server refused the request (4xx): retrying will not help
    ├── CaptureError         devices.emulator.capture: a bad capture line, or the broker failed
    ├── PublishError         devices.emulator.fastpub: the broker refused or dropped a publisher
    ├── AlertError           alerts.engine: an acknowledgement or silence was refused
    ├── NotifyError          alerts.notify: a notification channel failed (retried later)
    └── GrafanaPushError     apps.grafana.push: Grafana refused or could not be reached

The first five live here; the others next to the one boundary that raises them. Library
exceptions are mapped to these in one place per outside system (InfluxDB: `osteotel.store.http`;
notifiers: `alerts.notify`), so no other module sees a wire library's errors.
Contract violations in messages are not errors but outcomes: `devices.contract.Rejected`.
"""

__all__ = [
    "ConfigError",
    "MissingBinaryError",
    "OsteotelError",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
]


class OsteotelError(Exception):
    """Base of every exception osteotel raises on purpose."""


class ConfigError(OsteotelError):
    """Settings or the device registry are invalid."""


class MissingBinaryError(OsteotelError):
    """A server binary is not installed; the message says how to install it."""


class StoreError(OsteotelError):
    """InfluxDB did not take a write or answer a query.

    Attributes:
        status: the HTTP status, when the server answered at all.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StoreUnavailable(StoreError):  # noqa: N818 - reads as the state it names
    """The server could not be reached or failed (5xx); the same request may succeed later."""


class StoreRejected(StoreError):  # noqa: N818 - reads as the state it names
    """The server refused the request (4xx); sending it again will not help."""
