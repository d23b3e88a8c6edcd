"""The server launchers start real servers that answer, restart in place and clean up."""

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from apps.services import Alertmanager, InfluxDB, Mosquitto, VictoriaMetrics, free_port
from osteotel.errors import MissingBinaryError

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_LAUNCHERS = [Mosquitto, InfluxDB, VictoriaMetrics, Alertmanager]
_LAUNCHER_IDS = ["mosquitto", "influxdb", "victoria-metrics", "alertmanager"]


def _http(url: str, body: bytes | None = None, content_type: str = "text/plain") -> bytes:
    # Every URL here is http on loopback, built by the launcher itself.
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})  # noqa: S310
    with _HTTP.open(request, timeout=10) as response:
        payload: bytes = response.read()
        return payload


def _influx_query(server: InfluxDB, query: str, db: str | None = None) -> Any:
    params = {"q": query} | ({"db": db} if db else {})
    return json.loads(
        _http(
            f"{server.url}/query",
            urllib.parse.urlencode(params).encode(),
            "application/x-www-form-urlencoded",
        )
    )


def _publish_retained(broker: Mosquitto, topic: str, payload_file: Path) -> None:
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            topic,
            "-q",
            "1",
            "-r",
            "-f",
            str(payload_file),
        ],
        check=True,
        timeout=10,
    )


def _first_message(broker: Mosquitto, topic: str, wait_s: int) -> bytes:
    """The first message on `topic` (a retained one arrives at once), or b"" after `wait_s`."""
    result = subprocess.run(
        [
            "mosquitto_sub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            str(wait_s),
            "-N",
        ],
        capture_output=True,
        check=False,
        timeout=wait_s + 10,
    )
    return result.stdout


def test_free_port_can_be_bound() -> None:
    """A port from free_port can be bound on loopback right away."""
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        assert sock.getsockname()[1] == port


@pytest.mark.parametrize(
    ("fixture_name", "path", "status"),
    [
        ("influxdb", "/ping", 204),
        ("victoria_metrics", "/health", 200),
        ("alertmanager", "/-/ready", 200),
    ],
    ids=["influxdb-ping", "victoria-metrics-health", "alertmanager-ready"],
)
def test_session_http_servers_answer(
    request: pytest.FixtureRequest, fixture_name: str, path: str, status: int
) -> None:
    """Each shared HTTP server fixture answers its readiness endpoint on loopback."""
    server = request.getfixturevalue(fixture_name)
    assert server.host == "127.0.0.1"
    with _HTTP.open(f"{server.url}{path}", timeout=10) as response:
        assert response.status == status


def test_session_broker_passes_a_2_mib_payload(
    mosquitto: Mosquitto, unique_topic_prefix: str, tmp_path: Path
) -> None:
    """The shared broker delivers a 2 MiB payload whole, so the ingest sees oversize input."""
    payload = os.urandom(2 * 1024 * 1024)
    payload_file = tmp_path / "payload.bin"
    payload_file.write_bytes(payload)
    topic = f"{unique_topic_prefix}/big"
    _publish_retained(mosquitto, topic, payload_file)
    assert _first_message(mosquitto, topic, wait_s=5) == payload


@pytest.mark.parametrize(
    ("persistence", "expected"),
    [(True, b"still here"), (False, b"")],
    ids=["persistent-keeps", "volatile-forgets"],
)
def test_mosquitto_restart_keeps_port_and_retained_messages_when_persistent(
    tmp_path: Path, persistence: bool, expected: bytes
) -> None:
    """A restarted broker keeps its port, and its retained messages only when persistent."""
    payload_file = tmp_path / "payload.txt"
    payload_file.write_bytes(b"still here")
    with Mosquitto(tmp_path / "broker", persistence=persistence) as broker:
        port = broker.port
        _publish_retained(broker, "osteotel-test/retained", payload_file)
        broker.restart()
        assert broker.port == port
        # The volatile case waits for nothing, so keep that wait short.
        received = _first_message(broker, "osteotel-test/retained", wait_s=5 if expected else 1)
    assert received == expected


def test_secured_broker_is_ready_and_refuses_anonymous_clients(tmp_path: Path) -> None:
    """A broker without anonymous access starts (its refusal is an answer) and refuses a guest."""
    with Mosquitto(tmp_path, allow_anonymous=False) as broker:
        result = subprocess.run(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", "x", "-C", "1"],
            capture_output=True,
            check=False,
            timeout=10,
        )
    assert result.returncode != 0
    assert b"not authori" in result.stderr


def test_mosquitto_reads_only_its_generated_config(tmp_path: Path) -> None:
    """The generated config names the workdir for persistence and log, and nothing under /etc."""
    with Mosquitto(tmp_path, extra_config="# a marker line") as broker:
        config = broker.config_path.read_text()
    assert f"listener {broker.port} 127.0.0.1" in config
    assert f"persistence_location {tmp_path}/mosquitto-data/" in config
    assert "/etc/" not in config
    assert config.rstrip().endswith("# a marker line")
    assert "Opening ipv4 listen socket" in broker.log_path.read_text()


def test_influxdb_restart_keeps_written_points(tmp_path: Path) -> None:
    """A point written before a restart is queryable after it, on the same port."""
    with InfluxDB(tmp_path) as server:
        url = server.url
        _influx_query(server, 'CREATE DATABASE "restart_test"')
        _http(
            f"{server.url}/write?db=restart_test",
            b"force,device=D-01 force_n=12.5 1700000000000000000",
        )
        server.restart()
        assert server.url == url
        result = _influx_query(server, "SELECT force_n FROM force", db="restart_test")
    assert result["results"][0]["series"][0]["values"] == [["2023-11-14T22:13:20Z", 12.5]]


def test_victoria_metrics_restart_keeps_imported_samples(tmp_path: Path) -> None:
    """A sample imported before a restart is exported after it."""
    with VictoriaMetrics(tmp_path) as server:
        _http(
            f"{server.url}/api/v1/import/prometheus", b'osteotel_test_force_n{device="D-01"} 42\n'
        )
        server.restart()
        query = urllib.parse.urlencode({"match[]": "osteotel_test_force_n"})
        # A new series becomes searchable only after VictoriaMetrics flushes its index (about a
        # second), so ask until it shows, within a bound.
        deadline = time.monotonic() + 10
        exported = b""
        while not exported and time.monotonic() < deadline:
            time.sleep(0.1)
            exported = _http(f"{server.url}/api/v1/export?{query}")
    assert exported, "the imported sample did not come back after the restart"
    series = json.loads(exported.splitlines()[0])
    assert series["metric"] == {"__name__": "osteotel_test_force_n", "device": "D-01"}
    assert series["values"] == [42]


def test_alertmanager_restart_keeps_silences(tmp_path: Path) -> None:
    """A silence created before a restart is listed after it."""
    silence = {
        "matchers": [{"name": "device", "value": "D-01", "isRegex": False}],
        "startsAt": "2020-01-01T00:00:00Z",
        "endsAt": "2099-01-01T00:00:00Z",
        "createdBy": "test_services",
        "comment": "restart test",
    }
    with Alertmanager(tmp_path) as server:
        created = json.loads(
            _http(f"{server.url}/api/v2/silences", json.dumps(silence).encode(), "application/json")
        )
        server.restart()
        listed = json.loads(_http(f"{server.url}/api/v2/silences"))
    assert created["silenceID"] in [entry["id"] for entry in listed]


@pytest.mark.parametrize(
    ("launcher", "install_command"),
    [
        (Mosquitto, "apt-get install mosquitto mosquitto-clients"),
        (InfluxDB, "apt-get install influxdb"),
        (VictoriaMetrics, "apt-get install victoria-metrics"),
        (Alertmanager, "apt-get install prometheus-alertmanager"),
    ],
    ids=_LAUNCHER_IDS,
)
def test_missing_binary_names_the_install_command(
    tmp_path: Path,
    launcher: type[Mosquitto | InfluxDB | VictoriaMetrics | Alertmanager],
    install_command: str,
) -> None:
    """A launcher given a nonexistent binary raises MissingBinaryError naming apt-get install."""
    with pytest.raises(MissingBinaryError, match=f"not found: install it with `{install_command}`"):
        launcher(tmp_path, binary=tmp_path / "no-such-binary")


def test_early_exit_raises_with_the_log_tail(tmp_path: Path) -> None:
    """A server exiting during start-up raises RuntimeError quoting its log, and is gone."""
    broker = Mosquitto(tmp_path, extra_config="no_such_option true")
    with pytest.raises(RuntimeError, match=r"(?s)exited with code \d+.*no_such_option"):
        broker.start()
    assert not broker.running


@pytest.mark.parametrize("launcher", _LAUNCHERS, ids=_LAUNCHER_IDS)
def test_exception_inside_with_stops_the_server(
    tmp_path: Path, launcher: type[Mosquitto | InfluxDB | VictoriaMetrics | Alertmanager]
) -> None:
    """An exception inside the with block stops the server: its port refuses connections."""
    with pytest.raises(ZeroDivisionError), launcher(tmp_path) as server:  # noqa: PT012
        port = server.port
        assert server.running
        _ = 1 / 0
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_kill_then_start_serves_again(tmp_path: Path, unique_topic_prefix: str) -> None:
    """After SIGKILL the broker is down, and start() brings it back on the same port."""
    with Mosquitto(tmp_path) as broker:
        broker.kill()
        assert not broker.running
        broker.start()
        assert broker.running
        payload_file = tmp_path / "payload.txt"
        payload_file.write_bytes(b"back")
        _publish_retained(broker, f"{unique_topic_prefix}/after-kill", payload_file)
        assert _first_message(broker, f"{unique_topic_prefix}/after-kill", wait_s=5) == b"back"
