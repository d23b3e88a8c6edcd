"""Real servers for the whole test session, and per-test names that keep tests apart.

One broker, one InfluxDB, one VictoriaMetrics and one Alertmanager serve every test that asks
for them; each test isolates itself by a unique MQTT topic prefix and a fresh database name.
A test that restarts, kills or reconfigures a server starts its own from `apps.services`
in its `tmp_path` rather than disturbing the shared one.

A missing binary fails the run with the apt-get command that installs it: never a skip.
"""

import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from apps.services import Alertmanager, InfluxDB, Mosquitto, VictoriaMetrics

# Loopback only: ignore *_proxy variables for the fixtures' own HTTP calls.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A Mosquitto broker on a free loopback port, shared by the session."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """An InfluxDB 1.x server on a free loopback port, shared by the session."""
    with InfluxDB(tmp_path_factory.mktemp("influxdb")) as server:
        yield server


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics server on a free loopback port, shared by the session."""
    with VictoriaMetrics(tmp_path_factory.mktemp("victoria-metrics")) as server:
        yield server


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """An Alertmanager (receiver "null", no gossip) on a free loopback port, for the session."""
    with Alertmanager(tmp_path_factory.mktemp("alertmanager")) as server:
        yield server


@pytest.fixture
def unique_id() -> str:
    """Twelve hex digits, different for every test."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def unique_topic_prefix(unique_id: str) -> str:
    """An MQTT topic prefix no other test publishes under, e.g. `osteotel-test/3f9c0a1b2d4e`.

    It has no trailing slash and no wildcard characters: append `/...` levels to it.
    """
    return f"osteotel-test/{unique_id}"


@pytest.fixture
def influx_db_name(influxdb: InfluxDB, unique_id: str) -> Iterator[str]:
    """A database name no other test uses; the database is dropped after the test if it exists.

    The fixture does not create it: the code under test creates what it needs.
    """
    name = f"osteotel_test_{unique_id}"
    yield name
    body = urllib.parse.urlencode({"q": f'DROP DATABASE "{name}"'}).encode()
    with _HTTP.open(f"{influxdb.url}/query", data=body, timeout=10) as response:
        response.read()
