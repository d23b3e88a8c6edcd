"""InfluxStore against real servers: influxd 1.6 (v1 API) and VictoriaMetrics (v2 write API)."""

import http.client
import inspect
import itertools
import json
import logging
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import urllib3.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.rest import ApiException
from pydantic import SecretStr

from apps.services import InfluxDB, VictoriaMetrics, free_port
from osteotel.errors import StoreError, StoreRejected, StoreUnavailable
from osteotel.settings import InfluxSettings
from osteotel.store.http import HttpClient, store_error
from osteotel.store.influx import InfluxStore, api_from_version
from osteotel.store.lineproto import array_lines, point_line


@pytest.fixture(scope="session")
def influxd(influxdb: InfluxDB) -> InfluxDB:
    """The session's influxd 1.6.7 (v1 API)."""
    return influxdb


@pytest.fixture(scope="session")
def victoria(victoria_metrics: VictoriaMetrics) -> VictoriaMetrics:
    """The session's VictoriaMetrics (v2 write API)."""
    return victoria_metrics


Server = InfluxDB | VictoriaMetrics

_database_numbers = itertools.count()


@pytest.fixture
def store(influxd: Server) -> Iterator[InfluxStore]:
    """A v1 store on its own fresh database."""
    settings_ = InfluxSettings(url=influxd.url, database=f"test_{next(_database_numbers)}")
    with InfluxStore(settings_) as store_:
        store_.ensure_database()
        yield store_


def _bits(values: list[float]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


def _extreme_floats(rng: np.random.Generator, size: int) -> np.ndarray:
    extremes = np.array(
        [
            0.0,
            -0.0,
            5e-324,
            -5e-324,
            2.2250738585072014e-308,
            2.225073858507201e-308,  # the largest subnormal
            1.7976931348623157e308,
            -1.7976931348623157e308,
            1e20,
            1e-300,
            0.1,
            1 / 3,
            2.0**53 + 2,
        ]
    )
    scales = 10.0 ** rng.integers(-320, 300, size)
    random = rng.standard_normal(size) * scales
    float32_cast = rng.standard_normal(size).astype(np.float32).astype(np.float64) * 100
    # Arbitrary bit patterns cover every exponent; non-finite ones are replaced below.
    bit_patterns = rng.integers(0, 2**63, size, dtype=np.int64).view(np.float64)
    mixed = np.where(rng.random(size) < 0.5, random, float32_cast)
    mixed = np.where(rng.random(size) < 0.3, bit_patterns, mixed)
    mixed = np.where(np.isfinite(mixed), mixed, 1.5)
    mixed[: extremes.size] = extremes
    return mixed


def test_floats_and_timestamps_round_trip_exactly_through_influxd(store: InfluxStore) -> None:
    """10,000 float64 values, extremes included, read back from influxd bit for bit at exact ns."""
    rng = np.random.default_rng(20240611)
    size = 10_000
    force_n = _extreme_floats(rng, size)
    # One day of unique nanosecond timestamps (one shard), odd nanoseconds included.
    day_ns = 86_400 * 10**9
    offsets = rng.choice(day_ns, size=size, replace=False)
    ts_ns = np.sort(1_700_000_000 * 10**9 + offsets).astype(np.int64)
    seq = np.arange(size, dtype=np.int64) * (2**40) - 2**62
    store.write(
        array_lines(
            "raw", {"hub": "H-01", "device": "D-7F3A"}, {"force_n": force_n, "seq": seq}, ts_ns
        )
    )
    [series] = store.query('SELECT "force_n", "seq" FROM "raw"')
    assert series.columns == ["time", "force_n", "seq"]
    assert [row[0] for row in series.values] == ts_ns.tolist()
    assert _bits([float(row[1]) for row in series.values]) == _bits(force_n.tolist())
    assert [row[2] for row in series.values] == seq.tolist()


_NAME = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="\\")
    | st.sampled_from(" ,=\"'"),
    min_size=1,
    max_size=12,
)
_timestamps = itertools.count(1_700_000_000 * 10**9)


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


@settings(max_examples=60, deadline=None)
@given(
    measurement=_NAME.filter(lambda s: not s.startswith("#")),
    tag_key=_NAME.filter(lambda s: s not in {"time", "f"}),
    tag_value=_NAME,
    text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0")),
)
def test_escaped_names_read_back_identically(
    influxd: Server, measurement: str, tag_key: str, tag_value: str, text: str
) -> None:
    """Names with spaces, commas, equals signs and quotes, and string fields, read back as sent."""
    ts_ns = next(_timestamps)
    with InfluxStore(InfluxSettings(url=influxd.url, database="escaping")) as store_:
        store_.ensure_database()
        store_.write(point_line(measurement, {tag_key: tag_value}, {"f": 1, "s": text}, ts_ns))
        source = _identifier(measurement)
        influxql = f"SELECT f, s FROM {source} WHERE time = {ts_ns} GROUP BY *"
        [series] = store_.query(influxql)
    assert series.name == measurement
    assert {k: v for k, v in series.tags.items() if v} == {tag_key: tag_value}
    assert series.values == [[ts_ns, 1, text]]


@pytest.mark.parametrize(
    ("version", "api"),
    [
        ("1.6.7~rc0", "v1"),
        ("1.7.11", "v1"),
        ("1.8.0", "v2"),
        ("v2.7.4", "v2"),
        ("3.0.1", "v2"),
        ("", None),
        ("OSS", None),
    ],
    ids=["1.6-rc", "1.7", "1.8", "2.x-with-v", "3.x", "missing", "not-a-version"],
)
def test_api_from_version(version: str, api: str | None) -> None:
    """Versions below 1.8 choose v1, later ones v2, and non-versions leave it to a probe."""
    assert api_from_version(version) == api


@pytest.mark.parametrize(
    ("server_name", "api"),
    [("influxd", "v1"), ("victoria", "v2")],
    ids=["influxd-1.6-is-v1", "victoria-metrics-is-v2"],
)
def test_auto_detection_picks_the_api_the_server_speaks(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture, server_name: str, api: str
) -> None:
    """`api = auto` resolves to v1 for influxd 1.6 and to v2 for VictoriaMetrics, and logs it."""
    server: Server = request.getfixturevalue(server_name)
    caplog.set_level(logging.INFO, logger="osteotel.store.influx")
    with InfluxStore(InfluxSettings(url=server.url)) as store_:
        assert store_.api == api
    assert f"store_api_detected url={server.url}" in caplog.text
    assert f"api={api}" in caplog.text


def _victoria_export(server: Server, match: str) -> list[dict[str, object]]:
    # VictoriaMetrics buffers fresh samples for about a second; flushing makes them readable now.
    with urllib.request.urlopen(f"{server.url}/internal/force_flush", timeout=10):  # noqa: S310
        pass
    body = urllib.parse.urlencode({"match[]": match}).encode()
    with urllib.request.urlopen(f"{server.url}/api/v1/export", data=body, timeout=10) as answer:  # noqa: S310
        return [json.loads(line) for line in answer.read().splitlines() if line]


def test_v2_write_reaches_victoria_metrics_at_millisecond_resolution(victoria: Server) -> None:
    """The v2 path stores every value in VictoriaMetrics, timestamps truncated to milliseconds."""
    force_n = np.array([12.5, 0.1, 250.125, -3.75, 0.0])
    seq = np.arange(force_n.size, dtype=np.int64)
    # Recent timestamps: VictoriaMetrics drops samples older than its retention (one month).
    ts_ns = time.time_ns() - 60 * 10**9 + np.arange(force_n.size, dtype=np.int64) * 1_000_123
    lines = array_lines(
        "raw", {"hub": "H-02", "device": "D-V2"}, {"force_n": force_n, "seq": seq}, ts_ns
    )
    with InfluxStore(InfluxSettings(url=victoria.url)) as store_:
        store_.write(lines)
        assert store_.api == "v2"
    exported = {
        str(item["metric"]["__name__"]): item  # type: ignore[index]
        for item in _victoria_export(victoria, '{__name__=~"raw_.*",device="D-V2"}')
    }
    assert set(exported) == {"raw_force_n", "raw_seq"}
    assert exported["raw_force_n"]["metric"] == {
        "__name__": "raw_force_n",
        "hub": "H-02",
        "device": "D-V2",
    }
    assert exported["raw_force_n"]["values"] == force_n.tolist()
    assert exported["raw_force_n"]["timestamps"] == (ts_ns // 1_000_000).tolist()
    assert exported["raw_seq"]["values"] == seq.tolist()


@pytest.fixture
def refused_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


_OPERATIONS: dict[str, Callable[[InfluxStore], object]] = {
    "ping": lambda s: s.ping(),
    "detect": lambda s: s.api,
    "query": lambda s: s.query("SHOW DATABASES"),
    "write": lambda s: s.write(b"m f=1 1\n"),
    "ensure-database": lambda s: s.ensure_database(),
}


@pytest.mark.parametrize(
    ("api", "operation"),
    [
        ("auto", "ping"),
        ("auto", "detect"),
        ("v1", "query"),
        ("v1", "write"),
        ("v1", "ensure-database"),
        ("v2", "write"),
    ],
    ids=["ping", "detect", "query", "v1-write", "ensure-database", "v2-write"],
)
def test_refused_connection_is_unavailable(refused_url: str, api: str, operation: str) -> None:
    """Every call to a server that refuses connections raises StoreUnavailable without a status."""
    settings_ = InfluxSettings.model_validate({"url": refused_url, "api": api})
    with InfluxStore(settings_) as store_, pytest.raises(StoreUnavailable) as caught:
        _OPERATIONS[operation](store_)
    assert caught.value.status is None


def test_empty_write_sends_nothing(refused_url: str) -> None:
    """Writing zero bytes returns without contacting the server."""
    with InfluxStore(InfluxSettings(url=refused_url, api="v1")) as store_:
        store_.write(b"")
        assert store_.api == "v1"


def test_bad_line_is_rejected_with_status_400(store: InfluxStore) -> None:
    """influxd refuses an unparsable line with HTTP 400, raised as StoreRejected."""
    with pytest.raises(StoreRejected, match="unable to parse") as caught:
        store.write(b"raw,hub=H-01 force_n=oops 1\n")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "influxql",
    ["SELEC * FROM raw", "SELECT * FROM raw WHERE", "SELECT * FROM raw; SELECT FROM"],
    ids=["misspelt-keyword", "dangling-where", "second-statement"],
)
def test_query_syntax_error_is_rejected(store: InfluxStore, influxql: str) -> None:
    """An InfluxQL syntax error raises StoreRejected carrying the server's parse message."""
    with pytest.raises(StoreRejected, match="error parsing query") as caught:
        store.query(influxql)
    assert caught.value.status == 400


def test_statement_error_in_the_body_is_rejected(influxd: Server) -> None:
    """A statement that fails inside a 200 answer (unknown database) raises StoreRejected."""
    with (
        InfluxStore(InfluxSettings(url=influxd.url, database="never_created")) as store_,
        pytest.raises(StoreRejected, match="database not found"),
    ):
        store_.query("SELECT * FROM raw")


def test_multiple_statements_return_all_series_in_order(store: InfluxStore) -> None:
    """Series of several statements come back concatenated, statement by statement."""
    store.write(b"a,hub=H-01 f=1 10\nb,hub=H-01 f=2 20\n")
    series = store.query("SELECT f FROM a; SELECT f FROM b")
    assert [(s.name, s.values) for s in series] == [("a", [[10, 1]]), ("b", [[20, 2]])]


def test_ensure_database_is_idempotent(store: InfluxStore) -> None:
    """Creating the database again succeeds and leaves it listed once."""
    store.ensure_database()
    [series] = store.query("SHOW DATABASES")
    names = [row[0] for row in series.values]
    assert names.count(store._settings.database) == 1


def test_secrets_reach_neither_logs_nor_errors(
    influxd: Server, refused_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Passwords and tokens appear in no log line and no error message."""
    caplog.set_level(logging.DEBUG)
    secrets = ("pw-5ecret-1", "tok-5ecret-2")
    with_password = InfluxSettings(
        url=influxd.url, username="osteotel", password=SecretStr(secrets[0])
    )
    with InfluxStore(with_password) as store_:
        assert store_.api == "v1"
    messages = []
    for api in ("v1", "v2"):
        settings_ = InfluxSettings.model_validate(
            {"url": refused_url, "api": api, "token": secrets[1]}
        )
        with InfluxStore(settings_) as store_, pytest.raises(StoreUnavailable) as caught:
            store_.write(b"m f=1 1\n")
        messages.append(str(caught.value))
    for secret in secrets:
        assert secret not in caplog.text
        assert all(secret not in message for message in messages)


def _urllib3_exception_classes() -> list[type[Exception]]:
    return [
        cls
        for _, cls in inspect.getmembers(urllib3.exceptions, inspect.isclass)
        if issubclass(cls, Exception) and not issubclass(cls, Warning)
    ]


@pytest.mark.parametrize("cls", _urllib3_exception_classes(), ids=lambda cls: cls.__name__)
def test_every_urllib3_exception_maps_to_a_store_error(cls: type[Exception]) -> None:
    """Each exception class urllib3 defines becomes StoreUnavailable or StoreRejected."""
    exc = cls.__new__(cls)
    mapped = store_error(exc, action="write")
    assert type(mapped) in {StoreUnavailable, StoreRejected}
    rejected = issubclass(cls, urllib3.exceptions.LocationValueError) or (
        issubclass(cls, ValueError) and not issubclass(cls, urllib3.exceptions.HTTPError)
    )
    assert isinstance(mapped, StoreRejected) == rejected


def _api_error(status: int, reason: str) -> ApiException:
    return ApiException(status=status, reason=reason)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("exc", "expected", "status"),
    [
        (ConnectionRefusedError(111, "refused"), StoreUnavailable, None),
        (ConnectionResetError(104, "reset"), StoreUnavailable, None),
        (TimeoutError("timed out"), StoreUnavailable, None),
        (socket.gaierror(-2, "Name or service not known"), StoreUnavailable, None),
        (OSError(113, "No route to host"), StoreUnavailable, None),
        (http.client.RemoteDisconnected("closed"), StoreUnavailable, None),
        (http.client.IncompleteRead(b""), StoreUnavailable, None),
        (http.client.BadStatusLine("junk"), StoreUnavailable, None),
        (ssl.SSLError("handshake"), StoreUnavailable, None),
        (ssl.SSLCertVerificationError("untrusted"), StoreRejected, None),
        (_api_error(400, "Bad Request"), StoreRejected, 400),
        (_api_error(401, "Unauthorized"), StoreRejected, 401),
        (_api_error(413, "Too Large"), StoreRejected, 413),
        (_api_error(429, "Too Many"), StoreUnavailable, 429),
        (_api_error(500, "Internal"), StoreUnavailable, 500),
        (_api_error(0, "no answer"), StoreUnavailable, None),
        (InfluxDBError(message="no response"), StoreUnavailable, None),
        (ValueError("Port could not be cast to integer value as 'x'"), StoreRejected, None),
        (http.client.InvalidURL("nonnumeric port: 'x'"), StoreRejected, None),
    ],
    ids=[
        "refused",
        "reset",
        "timeout",
        "dns",
        "no-route",
        "remote-disconnected",
        "incomplete-read",
        "bad-status-line",
        "ssl",
        "ssl-untrusted",
        "api-400",
        "api-401",
        "api-413",
        "api-429",
        "api-500",
        "api-no-status",
        "influxdb-error",
        "value-error",
        "invalid-url",
    ],
)
def test_library_exceptions_map_to_store_errors(
    exc: BaseException, expected: type[StoreError], status: int | None
) -> None:
    """Each stdlib and influxdb-client failure maps to the retryable or the final store error."""
    mapped = store_error(exc, action="write")
    assert type(mapped) is expected
    assert mapped.status == status


class _Peers(BaseHTTPRequestHandler):
    """Answers 204 over HTTP/1.1 keep-alive; records each request's client port.

    With `server.close_after_first` the server closes the connection after its first answer
    without saying so (no `Connection: close`), as a server does with an idle connection.
    """

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        assert isinstance(server, _PeerServer)
        server.ports.append(self.client_address[1])
        self.send_response(204)
        self.end_headers()
        if server.close_after_first:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test reads `ports`, not a log


class _PeerServer(ThreadingHTTPServer):
    def __init__(self, *, close_after_first: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Peers)
        self.ports: list[int] = []
        self.close_after_first = close_after_first


@pytest.fixture(params=[False, True], ids=["kept-open", "closed-by-server"])
def peer(request: pytest.FixtureRequest) -> Iterator[_PeerServer]:
    """A loopback HTTP/1.1 server that keeps connections open, or closes them after one answer."""
    server = _PeerServer(close_after_first=request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_requests_reuse_one_connection_until_the_server_closes_it(peer: _PeerServer) -> None:
    """Three writes share one connection; one the server closed idle is replaced, not failed."""
    client = HttpClient()
    url = f"http://127.0.0.1:{peer.server_address[1]}/write?db=x"
    try:
        statuses = [
            client.request("POST", url, body=b"m v=1 1\n", timeout_s=10, action="write").status
            for _ in range(3)
        ]
    finally:
        client.close()
    assert statuses == [204, 204, 204]
    assert len(peer.ports) == 3  # each request reached the server exactly once
    assert len(set(peer.ports)) == (3 if peer.close_after_first else 1)
