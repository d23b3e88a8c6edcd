"""Settings from `OSTEOTEL_*` environment variables and an optional TOML file.

Precedence, highest first: keyword arguments, environment (`OSTEOTEL_MQTT__PORT=1883`),
the TOML file named by `OSTEOTEL_CONFIG` (sections `[mqtt]`, `[influx]`, `[ingest]`, `[alerts]`,
`[grafana]`), defaults.
Secrets are `SecretStr`: they print as `**********` and reach the wire only through
`get_secret_value()` at the boundary that needs them.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "AlertSettings",
    "GrafanaSettings",
    "InfluxSettings",
    "IngestSettings",
    "MqttSettings",
    "Settings",
    "SmtpSettings",
]


class _Section(BaseModel):
    # A misspelt key must fail loudly rather than leave a default silently in force.
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Section):
    """How a service reaches the MQTT broker."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    # A file holding the password (mode 0600, e.g. made by `python -m apps.brokerconf`);
    # used when `password` is not set, so the secret need not sit in the environment.
    password_file: Path | None = None
    client_id: str = "osteotel-ingest"
    tls_ca_file: Path | None = None
    keepalive_s: int = Field(30, ge=5)
    # How ingest and the alert service receive (osteotel.mqttwire.open_source): MQTT 3.1.1 on
    # the event loop (osteotel/mqttwire.py), or paho's network thread. asyncio measured 71.5-74
    # against paho's 97-101.5 us of ingest CPU a frame, 1.09x the frames/s (docs/ingest.md).
    receive_path: Literal["paho", "asyncio"] = "asyncio"

    def password_text(self) -> str | None:
        """The password to send, from `password` or else `password_file`; None for none."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return None


class InfluxSettings(_Section):
    """How a service reaches InfluxDB (1.x, 2.x, 3.x or another server speaking its protocols).

    `api` picks the write path: `auto` asks the server's `/ping` version header, `v1` posts
    to `/write?db=...`, `v2` writes through influxdb-client to `/api/v2/write`.
    """

    url: str = "http://127.0.0.1:8086"
    api: Literal["auto", "v1", "v2"] = "auto"
    database: str = "osteotel"
    retention_policy: str | None = None
    org: str = "osteotel"
    bucket: str = "osteotel"
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = Field(10.0, gt=0)


class IngestSettings(_Section):
    """What ingest accepts and where it keeps what it refuses."""

    registry: Path = Path("deploy/registry.example.toml")
    registry_reload_s: float = Field(2.0, gt=0)
    dead_letter_dir: Path = Path("var/dead-letter")
    # Dead letters read back at start to recognise a rejected message the broker delivers
    # again after a crash (docs/ingest.md): ten times Mosquitto's in-flight window (1000 in
    # deploy/mosquitto), the most messages that can be unacknowledged when ingest dies.
    dead_letter_recall: int = Field(10_000, ge=0)
    # A full frame of 10,000 samples in three JSON arrays stays well under 1 MiB.
    max_payload_bytes: int = Field(1_048_576, ge=1024)
    # Hub clocks are NTP-synchronised; 5 s ahead of server time already means a broken clock.
    future_skew_s: float = Field(5.0, ge=0)
    # Scaling across processes and machines: this process owns the hubs whose BLAKE2b hash
    # modulo `partitions` is `partition`; under `--processes N`, this machine's first
    # partition of the site's total (docs/ingest.md, ingest/partition.py).
    partitions: int = Field(1, ge=1, le=64)
    partition: int = Field(0, ge=0)
    # /metrics, /healthz and /readyz; port 0 turns the endpoint off.
    http_host: str = "127.0.0.1"
    http_port: int = Field(9310, ge=0, le=65535)
    stats_interval_s: float = Field(10.0, gt=0)
    spool_dir: Path = Path("var/spool")
    # The DSP estimator's checkpoint (ingest/checkpoint.py, docs/ingest.md).
    state_dir: Path = Path("var/state")
    # A checkpoint is taken after this long or this many committed batches, whichever first.
    checkpoint_interval_s: float = Field(60.0, gt=0)
    checkpoint_batches: int = Field(1_000, ge=1)
    # How far back a device without a checkpoint is rebuilt from the store: a whole treatment.
    # Gains reach about 10.6 cm (tibia 7.7 +/- 2.9 cm) at a healing index of up to 50 days per
    # cm (docs/domain.md), i.e. about 530 days from osteotomy to removal.
    rebuild_max_days: float = Field(540.0, gt=0)
    # How long a start waits for InfluxDB to catch the estimator up before going live without.
    catchup_store_wait_s: float = Field(300.0, ge=0)
    # An hour of 10 devices at 100 Hz is ~0.25 GB of line protocol: 2 GiB rides out a long outage.
    spool_max_bytes: int = Field(2 * 1024**3, ge=1024)
    # While InfluxDB is unavailable, it is asked `/ping` this often (never less often), and
    # the spool drains at full speed as soon as it answers (docs/ingest.md, "Outages").
    store_probe_interval_s: float = Field(1.0, gt=0)
    batch_max_lines: int = Field(20_000, ge=1)
    # A batch is written once it holds this many messages: at most half the broker's window
    # of unacknowledged messages (max_inflight_messages, 1000 in deploy/mosquitto), so the
    # next batch fills while this one is written.
    batch_max_messages: int = Field(400, ge=1)
    batch_max_delay_s: float = Field(0.2, gt=0)
    # Batches written to InfluxDB at once; their messages are still acknowledged in the order
    # received (docs/ingest.md, "Writes in flight"). 1 writes one batch at a time; 2 measured
    # best: one process 3,539 -> 5,092 frames/s on 2 cores (3 no faster).
    write_concurrency: int = Field(2, ge=1, le=16)
    queue_max_messages: int = Field(1_000, ge=1)
    # What `raw` keeps (docs/schema.md, "What is kept where"): every sample ("full"), or the
    # full rate only in windows around distraction steps, probes and load tests and 1 s
    # summaries (`raw_1s`) elsewhere ("windows"), the whole stream then kept in capture files.
    raw_tier: Literal["full", "windows"] = "full"
    # A full-rate window around each accepted distraction step or probe (ingest/tier.py):
    # before, the emulator's recording margin ahead of a step (devices/emulator/timeline.py,
    # window_before_s); after, the span the DSP's step fit reads (dsp/stepconfig.py, window_s).
    tier_before_s: float = Field(30.0, ge=0)
    tier_after_s: float = Field(600.0, ge=0)
    # Every accepted message, as received, appended to {capture_dir}/{hub}/{UTC day}.jsonl
    # (docs/capture.md's format) and fsync'd before it is acknowledged; off when unset.
    capture_dir: Path | None = None

    @model_validator(mode="after")
    def _tier_keeps_the_stream(self) -> "IngestSettings":
        # Outside the windows `raw` keeps summaries only: the capture files are then the only
        # copy of the samples, and what catch-up rebuilds estimates from.
        if self.raw_tier == "windows" and self.capture_dir is None:
            raise ValueError("raw_tier = 'windows' needs capture_dir (the full stream's only copy)")
        return self


class SmtpSettings(_Section):
    """How e-mail notifications leave: an SMTP relay and the addresses involved.

    No e-mail is sent when `to` is empty.
    """

    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    sender: str = "osteotel-alerts@localhost"
    to: list[str] = []
    # Escalations of unacknowledged critical alerts go here as well as to `to`.
    escalation_to: list[str] = []
    timeout_s: float = Field(10.0, gt=0)


class AlertSettings(_Section):
    """The alert service (`osteotel alerts run`) and its CLI.

    Attributes:
        data_dir: the directory of the SQLite database `alerts.db` (state, audit, outbox).
        registry: the device registry, with the optional `[alerts]` override tables.
        grafana_url: base URL of Grafana; messages link `{grafana_url}/d/osteotel-patient`.
        webhook_urls: JSON webhooks, one POST per notification.
        alertmanager_url: Prometheus Alertmanager base URL (v2 API); None to not use it.
        mqtt_alerts: publish each alert on `osteotel/v1/alerts/{device}` (QoS 1).
        client_id: the MQTT client id of the alert service (its persistent session).
        smtp: the e-mail relay and recipients.
        write_history: write `alert` and `alert_ack` points to InfluxDB.
        tick_s: how often silence, repeat and escalation timers are checked, seconds.
        repeat_s: a firing, unacknowledged alert is notified again after this long, seconds.
        escalate_after_s: a critical alert unacknowledged this long is escalated, seconds.
        retry_min_s: first retry delay of a failed notification, seconds.
        retry_max_s: the retry delay doubles up to this, seconds.
        send_timeout_s: timeout of one HTTP or MQTT notification, seconds.
        http_host: where `/metrics` and `/healthz` listen.
        http_port: their port; 0 turns the endpoint off.
        watch_telemetry: also subscribe to telemetry topics (QoS 0) only to see that a device
            is alive; without it, silence is judged from estimates and events alone.
    """

    data_dir: Path = Path("var/alerts")
    registry: Path = Path("deploy/registry.example.toml")
    grafana_url: str = "http://127.0.0.1:3000"
    webhook_urls: list[str] = []
    alertmanager_url: str | None = None
    mqtt_alerts: bool = True
    client_id: str = "osteotel-alerts"
    smtp: SmtpSettings = SmtpSettings()
    write_history: bool = True
    tick_s: float = Field(5.0, gt=0)
    # Four hours: a nurse shift sees an open alert about twice, not every few minutes, which
    # is the alert fatigue docs/domain.md ("Sensorized implants today", CareLink) warns about.
    repeat_s: float = Field(4 * 3600.0, gt=0)
    escalate_after_s: float = Field(30 * 60.0, gt=0)
    retry_min_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)
    send_timeout_s: float = Field(10.0, gt=0)
    http_host: str = "127.0.0.1"
    http_port: int = Field(9311, ge=0, le=65535)
    watch_telemetry: bool = True

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.data_dir / "alerts.db"


class GrafanaSettings(_Section):
    """Where `osteotel grafana push` uploads the boards, and the datasource they read.

    Attributes:
        url: Grafana's base URL.
        token: a Grafana service-account token (Bearer).
        influx_url: the InfluxDB URL as Grafana (not this machine) reaches it.
        influx_database: the InfluxQL database (on 2.x/3.x: the DBRP-mapped name).
        influx_token: the token Grafana's datasource uses on InfluxDB 2.x/3.x.
        timeout_s: per request, seconds.
    """

    url: str = "http://127.0.0.1:3000"
    token: SecretStr | None = None
    influx_url: str = "http://influxdb:8086"
    influx_database: str = "osteotel"
    influx_token: SecretStr | None = None
    timeout_s: float = Field(10.0, gt=0)


class Settings(BaseSettings):
    """All settings of the osteotel services."""

    model_config = SettingsConfigDict(
        env_prefix="OSTEOTEL_", env_nested_delimiter="__", extra="forbid"
    )

    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    ingest: IngestSettings = IngestSettings()
    alerts: AlertSettings = AlertSettings()
    grafana: GrafanaSettings = GrafanaSettings()
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read the TOML file named by `OSTEOTEL_CONFIG` below the environment."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("OSTEOTEL_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        sources.append(file_secret_settings)
        return tuple(sources)
