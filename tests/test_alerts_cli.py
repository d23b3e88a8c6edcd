"""`osteotel alerts list | ack | silence` against the service's SQLite database."""

import argparse
import io
from pathlib import Path

import pytest

from alerts.cli import add_parsers, parse_until, run_command
from alerts.engine import AlertEngine
from alerts.model import Observation, Severity
from alerts.settings import AlertSettings
from alerts.store import AlertStore
from osteotel.settings import InfluxSettings, MqttSettings

T_NS = 1_700_000_000_000_000_000


def cli(settings: AlertSettings, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_parsers(parser)
    out = io.StringIO()
    status = run_command(
        parser.parse_args(argv), settings, mqtt=MqttSettings(), influx=InfluxSettings(), out=out
    )
    return status, out.getvalue()


@pytest.fixture
def settings(tmp_path: Path) -> AlertSettings:
    """Settings with one firing alert in the database."""
    settings = AlertSettings(data_dir=tmp_path, webhook_urls=["http://127.0.0.1:9/x"])
    with AlertStore(settings.db_path) as store:
        AlertEngine(
            store, channels=["webhook-0"], grafana_url="http://g", repeat_s=60, escalate_after_s=60
        ).observe(
            [
                Observation(
                    device="DX-0001",
                    hub="HUB-A",
                    patient="P-7F3A",
                    rule="battery_low",
                    t_ns=T_NS,
                    trigger=True,
                    clear=False,
                    severity=Severity.WARNING,
                    value=12.0,
                    summary="battery at 12 %",
                )
            ],
            now_ns=T_NS,
        )
    return settings


def test_list_ack_and_silence(settings: AlertSettings) -> None:
    """list shows the open alert, ack records the clinician, silence is stored and audited."""
    status, listed = cli(settings, "list")
    assert status == 0
    assert "battery_low" in listed
    assert "P-7F3A" in listed
    status, _ = cli(settings, "ack", "1", "--by", "Dr Example", "--note", "charger brought")
    assert status == 0
    status, _ = cli(
        settings, "silence", "--device", "DX-0001", "--rule", "battery_low",
        "--until", "2099-01-01T00:00:00Z", "--by", "Dr Example",
    )  # fmt: skip
    assert status == 0
    with AlertStore(settings.db_path) as store:
        actions = [(e.actor, e.action) for e in store.audit()]
        assert ("Dr Example", "acknowledged") in actions
        assert ("Dr Example", "silenced") in actions
        assert [s.rule for s in store.silences(now_ns=T_NS)] == ["battery_low"]


def test_ack_of_unknown_alert_is_refused(settings: AlertSettings) -> None:
    """Acknowledging an alert id that does not exist exits with status 2."""
    status, _ = cli(settings, "ack", "99", "--by", "Dr Example", "--note", "x")
    assert status == 2


@pytest.mark.parametrize(
    ("text", "t_ns"),
    [
        ("2023-11-14T22:13:20Z", T_NS),
        ("2023-11-14T23:13:20+01:00", T_NS),
        ("2023-11-14T22:13:20.000001", T_NS + 1000),
    ],
    ids=["zulu", "offset", "naive-is-utc"],
)
def test_parse_until(text: str, t_ns: int) -> None:
    """ISO 8601 times become exact UTC epoch nanoseconds; no offset means UTC."""
    assert parse_until(text) == t_ns
