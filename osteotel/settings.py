"""Settings from `OSTEOTEL_*` environment variables and an optional TOML file.

Precedence, highest first: keyword arguments, environment (`OSTEOTEL_MQTT__PORT=1883`),
the TOML file named by `OSTEOTEL_CONFIG` (sections `[mqtt]`, `[influx]`, `[ingest]`), defaults.
Secrets are `SecretStr`: they print as `**********` and reach the wire only through
`get_secret_value()` at the boundary that needs them.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["InfluxSettings", "IngestSettings", "MqttSettings", "Settings"]


class _Section(BaseModel):
    # A misspelt key must fail loudly rather than leave a default silently in force.
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Section):
    """How a service reaches the MQTT broker."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    # A file holding the password (mode 0600, e.g. made by `python -m osteotel.brokerconf`);
    # used when `password` is not set, so the secret need not sit in the environment.
    password_file: Path | None = None
    client_id: str = "osteotel-ingest"
    tls_ca_file: Path | None = None
    keepalive_s: int = Field(30, ge=5)

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
    # A full frame of 10,000 samples in three JSON arrays stays well under 1 MiB.
    max_payload_bytes: int = Field(1_048_576, ge=1024)
    # Hub clocks are NTP-synchronised; 5 s ahead of server time already means a broken clock.
    future_skew_s: float = Field(5.0, ge=0)
    # Scaling across processes: this process stores the devices whose CRC-32 modulo
    # `partitions` is `partition` (docs/ingest.md).
    partitions: int = Field(1, ge=1, le=64)
    partition: int = Field(0, ge=0)
    # /metrics, /healthz and /readyz; port 0 turns the endpoint off.
    http_host: str = "127.0.0.1"
    http_port: int = Field(9310, ge=0, le=65535)
    stats_interval_s: float = Field(10.0, gt=0)
    spool_dir: Path = Path("var/spool")
    # An hour of 10 devices at 100 Hz is ~0.25 GB of line protocol: 2 GiB rides out a long outage.
    spool_max_bytes: int = Field(2 * 1024**3, ge=1024)
    batch_max_lines: int = Field(20_000, ge=1)
    batch_max_delay_s: float = Field(0.2, gt=0)
    queue_max_messages: int = Field(1_000, ge=1)


class Settings(BaseSettings):
    """All settings of the osteotel services."""

    model_config = SettingsConfigDict(
        env_prefix="OSTEOTEL_", env_nested_delimiter="__", extra="forbid"
    )

    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    ingest: IngestSettings = IngestSettings()
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
