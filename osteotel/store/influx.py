"""InfluxStore: writes line protocol to InfluxDB and reads it back with InfluxQL.

Two write paths, picked by `InfluxSettings.api`:

- `v1`: `POST /write?db=&rp=&precision=ns` (InfluxDB 1.x, and the 1.x-compatible endpoint of
  later servers), basic auth when a username is set, else a token if one is set;
- `v2`: `/api/v2/write` through influxdb-client (InfluxDB 1.8+, 2.x, 3.x, VictoriaMetrics).

With `api = "auto"` the first request resolves it from `/ping`'s `X-Influxdb-Version` header:
1.x below 1.8 means v1, 1.8 and later means v2. Without the header the store probes
`POST /api/v2/write` with an empty body: 404 means v1, any other answer v2.

Queries always use the InfluxQL endpoint `GET /query`, which 1.x serves natively and 2.x/3.x
serve for compatibility. The store is synchronous: ingest calls it from a worker thread.
"""

import base64
import json
import logging
import re
import urllib.parse
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from osteotel.errors import StoreRejected
from osteotel.logs import kv
from osteotel.settings import InfluxSettings
from osteotel.store.http import HttpClient, HttpResponse, V2Writer, check_status

__all__ = ["InfluxStore", "Series", "api_from_version"]

_log = logging.getLogger(__name__)

_EPOCHS = frozenset({"ns", "u", "µ", "ms", "s", "m", "h"})
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


@dataclass(frozen=True, slots=True)
class Series:
    """One series of an InfluxQL result.

    Attributes:
        name: the measurement name.
        tags: the GROUP BY tags of this series (empty without GROUP BY).
        columns: column names; `time` first for SELECT.
        values: rows, one value per column. Floats with an integral value arrive as `int`
            (InfluxDB's JSON writes `2`, not `2.0`); `float()` of them is exact.
    """

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]


def api_from_version(version: str) -> Literal["v1", "v2"] | None:
    """Choose the write API from an `X-Influxdb-Version` header.

    Args:
        version: the header's value, e.g. `1.6.7~rc0`, `v2.7.4`, `3.0.1`.

    Returns:
        `v1` below 1.8, `v2` from 1.8 on (1.8 added `/api/v2/write`), `None` when the value
        does not start with a version number.
    """
    match = _VERSION.match(version.strip())
    if match is None:
        return None
    major, minor = int(match.group(1)), int(match.group(2))
    return "v1" if (major, minor) < (1, 8) else "v2"


def _parse_int(text: str) -> int | float:
    # InfluxDB's JSON writes float -0.0 as "-0"; an integer field can never be negative zero.
    return -0.0 if text == "-0" else int(text)


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxStore:
    """A synchronous InfluxDB client for osteotel's writes and queries.

    Use it as a context manager, or call `close()`, so the v2 client's connections are released.
    """

    def __init__(self, settings: InfluxSettings) -> None:
        """Keep the settings; nothing is sent until the first call that needs the server.

        Args:
            settings: URL, API choice, database or bucket, credentials, timeout.
        """
        self._settings = settings
        self._base_url = settings.url.rstrip("/")
        self._api: Literal["v1", "v2"] | None = None if settings.api == "auto" else settings.api
        self._v2: V2Writer | None = None
        self._http = HttpClient()
        # The first v1 write creates the database if needed, whenever the server first answers.
        self._database_ready = False
        self._headers: dict[str, str] = {}
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            self._headers["Authorization"] = _basic_auth(settings.username, password)
        elif settings.token is not None:
            self._headers["Authorization"] = "Token " + settings.token.get_secret_value()

    @classmethod
    def from_settings(cls, settings: InfluxSettings) -> Self:
        """Create a store from settings; the same as calling the class."""
        return cls(settings)

    def __enter__(self) -> Self:
        """Return the store itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()

    def _url(self, path: str, params: dict[str, str | None]) -> str:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self._base_url}{path}?{query}" if query else f"{self._base_url}{path}"

    def _send(
        self, method: str, url: str, *, action: str, body: bytes | None = None
    ) -> HttpResponse:
        return self._http.request(
            method,
            url,
            body=body,
            headers=self._headers,
            timeout_s=self._settings.timeout_s,
            action=action,
        )

    def ping(self) -> str:
        """Check that the server answers.

        Returns:
            The server's `X-Influxdb-Version` header, `''` when it sends none.

        Raises:
            StoreUnavailable: the server is unreachable or answered 5xx.
            StoreRejected: the server answered another error status (e.g. 401).
        """
        response = check_status(
            self._send("GET", self._url("/ping", {}), action="ping"), action="ping"
        )
        return response.headers.get("x-influxdb-version", "")

    @property
    def api(self) -> Literal["v1", "v2"]:
        """The write API in use, detected from the server on first use when set to `auto`.

        Raises:
            StoreUnavailable: detection needed the server and could not reach it.
        """
        if self._api is None:
            self._api = self._detect_api()
        return self._api

    def _detect_api(self) -> Literal["v1", "v2"]:
        version = self.ping()
        api = api_from_version(version)
        via = "version"
        if api is None:
            probe = self._send("POST", self._url("/api/v2/write", {}), body=b"", action="probe")
            api = "v1" if probe.status == 404 else "v2"
            via = f"probe_status_{probe.status}"
        _log.info(
            kv(
                "store_api_detected",
                url=_redacted(self._base_url),
                version=version,
                api=api,
                via=via,
            )
        )
        return api

    def ensure_database(self) -> None:
        """Create the v1 database if it does not exist yet; nothing to do for v2 buckets.

        Raises:
            StoreError: the server refused or could not be reached.
        """
        if self.api == "v2":
            return
        # CREATE DATABASE is idempotent in InfluxDB 1.x, and 1.x accepts it only by POST.
        statement = f"CREATE DATABASE {_quote_identifier(self._settings.database)}"
        url = self._url("/query", {"q": statement})
        response = self._send("POST", url, body=b"", action="create database")
        self._parse_results(check_status(response, action="create database"), "create database")
        self._database_ready = True

    def write(self, lines: bytes) -> None:
        """Write line protocol with nanosecond timestamps; `b""` sends nothing.

        Writes are idempotent: a line with the same series and timestamp overwrites the
        field values already stored, so a write that timed out may be sent again. On a v1
        server the first write creates the database if it does not exist, so a writer that
        started while the server was down needs nothing else once it is back.

        Args:
            lines: newline-terminated line protocol, timestamps in UTC epoch nanoseconds.

        Raises:
            StoreUnavailable: unreachable, timed out, HTTP 5xx or 429: try again later.
            StoreRejected: HTTP 4xx, e.g. status 400 for a line the server cannot parse.
        """
        if not lines:
            return
        if self.api == "v2":
            self._v2_writer().write(self._settings.bucket, lines)
            return
        if not self._database_ready:
            self.ensure_database()
        params = {
            "db": self._settings.database,
            "rp": self._settings.retention_policy,
            "precision": "ns",
        }
        response = self._send("POST", self._url("/write", params), body=lines, action="write")
        check_status(response, action="write")

    def _v2_writer(self) -> V2Writer:
        if self._v2 is None:
            settings = self._settings
            token = settings.token.get_secret_value() if settings.token else None
            if token is None and settings.username is not None:
                # InfluxDB 1.8's v2 endpoint takes "user:password" as its token.
                password = settings.password.get_secret_value() if settings.password else ""
                token = f"{settings.username}:{password}"
            self._v2 = V2Writer(
                url=self._base_url, token=token, org=settings.org, timeout_s=settings.timeout_s
            )
        return self._v2

    def query(self, influxql: str, *, epoch: str = "ns") -> list[Series]:
        """Run InfluxQL through `GET /query` and return every series of every statement.

        Args:
            influxql: one or more statements separated by `;`.
            epoch: timestamp unit of the `time` column: `ns`, `u`, `ms`, `s`, `m` or `h`.

        Returns:
            The series of all statements, in order.

        Raises:
            ValueError: `epoch` is not one InfluxDB knows.
            StoreRejected: a syntax error, or a statement failed (e.g. database not found).
            StoreUnavailable: unreachable, timed out, or HTTP 5xx.
        """
        if epoch not in _EPOCHS:
            raise ValueError(f"epoch must be one of {sorted(_EPOCHS)}, got {epoch!r}")
        params = {
            "db": self._settings.database,
            "rp": self._settings.retention_policy,
            "q": influxql,
            "epoch": epoch,
        }
        response = self._send("GET", self._url("/query", params), action="query")
        return self._parse_results(check_status(response, action="query"), "query")

    @staticmethod
    def _parse_results(response: HttpResponse, action: str) -> list[Series]:
        try:
            document = json.loads(response.body, parse_int=_parse_int)
        except ValueError as exc:
            raise StoreRejected(
                f"{action} failed: answer is not JSON", status=response.status
            ) from exc
        if "error" in document:
            raise StoreRejected(f"{action} failed: {document['error']}", status=response.status)
        series: list[Series] = []
        for result in document.get("results", []):
            if "error" in result:
                statement = result.get("statement_id")
                raise StoreRejected(
                    f"{action} failed: statement {statement}: {result['error']}",
                    status=response.status,
                )
            series.extend(
                Series(
                    name=item.get("name", ""),
                    tags=dict(item.get("tags") or {}),
                    columns=list(item.get("columns", [])),
                    values=[list(row) for row in item.get("values", [])],
                )
                for item in result.get("series", [])
            )
        return series

    def close(self) -> None:
        """Release every connection; the store is not used afterwards."""
        self._http.close()
        if self._v2 is not None:
            self._v2.close()
            self._v2 = None


def _basic_auth(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return "Basic " + token
