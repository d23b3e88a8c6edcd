"""Settings come from OSTEOTEL_* variables and a TOML file, and never show their secrets."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from osteotel.settings import IngestSettings, Settings


def test_environment_overrides_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value in the environment wins over the TOML file, which wins over the default."""
    config = tmp_path / "osteotel.toml"
    config.write_text(
        '[mqtt]\nhost = "10.1.2.3"\nport = 8883\n[influx]\ndatabase = "ward3"\n', encoding="utf-8"
    )
    monkeypatch.setenv("OSTEOTEL_CONFIG", str(config))
    monkeypatch.setenv("OSTEOTEL_MQTT__PORT", "1884")
    settings = Settings()
    assert settings.mqtt.host == "10.1.2.3"
    assert settings.mqtt.port == 1884
    assert settings.influx.database == "ward3"
    assert settings.ingest.max_payload_bytes == 1_048_576


def test_secrets_do_not_appear_in_the_settings_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passwords and tokens print masked, whatever prints the settings."""
    monkeypatch.setenv("OSTEOTEL_MQTT__PASSWORD", "hub-secret-123")
    monkeypatch.setenv("OSTEOTEL_INFLUX__TOKEN", "influx-token-456")
    settings = Settings()
    text = f"{settings} {settings!r} {settings.model_dump()}"
    assert "hub-secret-123" not in text
    assert "influx-token-456" not in text
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "hub-secret-123"


def test_unknown_settings_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A misspelt key in the config file is an error, not silently ignored."""
    config = tmp_path / "osteotel.toml"
    config.write_text('[mqtt]\nhots = "broker"\n', encoding="utf-8")
    monkeypatch.setenv("OSTEOTEL_CONFIG", str(config))
    with pytest.raises(ValueError, match="hots"):
        Settings()


def test_the_mqtt_password_can_come_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`password_file` supplies the password when `password` is unset; `password` wins."""
    secret = tmp_path / "ingest.secret"
    secret.write_text("from-a-file-0123456789\n", encoding="utf-8")
    monkeypatch.setenv("OSTEOTEL_MQTT__PASSWORD_FILE", str(secret))
    assert Settings().mqtt.password_text() == "from-a-file-0123456789"
    monkeypatch.setenv("OSTEOTEL_MQTT__PASSWORD", "from-the-environment")
    assert Settings().mqtt.password_text() == "from-the-environment"


def test_the_windows_tier_needs_capture_files() -> None:
    """Outside its windows the tier stores summaries: without capture files the samples there
    would be kept nowhere, so that configuration is refused."""
    assert IngestSettings().raw_tier == "full"
    with pytest.raises(ValidationError, match="needs capture_dir"):
        IngestSettings(raw_tier="windows")
    assert IngestSettings(raw_tier="windows", capture_dir=Path("c")).capture_dir == Path("c")
