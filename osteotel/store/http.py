"""The one place that talks HTTP to InfluxDB, and maps the wire libraries' errors to ours.

v1 endpoints (`/ping`, `/write`, `/query`, the `/api/v2/write` probe) go through `HttpClient`
(stdlib http.client, persistent connections); v2 writes go through influxdb-client's
synchronous `WriteApi`. Whatever either library raises
leaves this module as `StoreUnavailable` (connection refused or reset, timeouts, HTTP 5xx and
429: try again later) or `StoreRejected` (any other HTTP 4xx, a malformed URL, a certificate the
client does not trust: the same request will fail again). No other module imports
http.client, urllib3 or influxdb-client.
"""

import http.client
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import urllib3.exceptions
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from osteotel.errors import StoreError, StoreRejected, StoreUnavailable

__all__ = [
    "LIBRARY_ERRORS",
    "HttpClient",
    "HttpResponse",
    "V2Writer",
    "check_status",
    "store_error",
]

# Long enough to carry InfluxDB's parse error with the offending line, short enough for a log.
_DETAIL_CHARS = 500

# Every exception family the wire libraries raise; anything else is a bug and propagates.
LIBRARY_ERRORS = (
    InfluxDBError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,  # refused, reset, DNS, socket timeouts and ssl errors included
    ValueError,
)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What the server answered.

    Attributes:
        status: the HTTP status code.
        headers: response headers, keys lower-case.
        body: the raw response body.
    """

    status: int
    headers: dict[str, str]
    body: bytes


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # some library exceptions cannot print when built bare
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _for_status(status: int, message: str) -> StoreError:
    if status == 429 or status >= 500:
        return StoreUnavailable(message, status=status)
    return StoreRejected(message, status=status)


def store_error(exc: BaseException, *, action: str) -> StoreError:
    """Map an exception raised by http.client, urllib3, influxdb-client or a socket to ours.

    Args:
        exc: the library's exception.
        action: what was being done, e.g. `write`, for the message.

    Returns:
        `StoreUnavailable` for connection failures, timeouts, HTTP 5xx and 429;
        `StoreRejected` for other HTTP statuses and for requests that can never succeed
        (malformed URL, untrusted certificate). A `StoreError` is returned unchanged.
    """
    if isinstance(exc, StoreError):
        return exc
    message = f"{action} failed: {_describe(exc)}"
    # Attributes are read with getattr: a library may raise an exception it built bare.
    if isinstance(exc, ApiException):
        status = getattr(exc, "status", None)
        if isinstance(status, int) and status:
            body = getattr(exc, "body", None)
            detail = body.decode(errors="replace") if isinstance(body, bytes) else body
            detail = str(detail or getattr(exc, "reason", ""))[:_DETAIL_CHARS]
            return _for_status(status, f"{action} failed: HTTP {status}: {detail}")
        return StoreUnavailable(message)
    if isinstance(exc, InfluxDBError):
        status = getattr(getattr(exc, "response", None), "status", None)
        if isinstance(status, int) and status:
            detail = str(getattr(exc, "message", ""))[:_DETAIL_CHARS]
            return _for_status(status, f"{action} failed: HTTP {status}: {detail}")
        return StoreUnavailable(message)
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(reason, Exception):
        return store_error(reason, action=action)
    if isinstance(
        exc,
        urllib3.exceptions.LocationValueError
        | http.client.InvalidURL
        | ssl.SSLCertVerificationError,
    ):
        # A malformed URL, unknown scheme or untrusted certificate: retrying cannot help.
        return StoreRejected(message)
    if isinstance(exc, urllib3.exceptions.HTTPError | http.client.HTTPException | OSError):
        # Refused, reset, timed out, DNS, TLS handshake, truncated response: all transient.
        return StoreUnavailable(message)
    if isinstance(exc, ValueError):
        # http.client's and urllib.parse's way of refusing a malformed URL, port or header.
        return StoreRejected(message)
    # Not a wire library's exception; callers only pass those, but be conservative.
    return StoreUnavailable(message)


def check_status(response: HttpResponse, *, action: str) -> HttpResponse:
    """Return a 2xx response unchanged, raise `StoreUnavailable`/`StoreRejected` otherwise.

    Args:
        response: the server's answer.
        action: what was being done, for the message.

    Raises:
        StoreUnavailable: HTTP 5xx or 429.
        StoreRejected: any other status outside 2xx; the message carries the server's reason.
    """
    if 200 <= response.status < 300:
        return response
    detail = response.headers.get("x-influxdb-error") or response.body.decode(errors="replace")
    message = f"{action} failed: HTTP {response.status}: {detail.strip()[:_DETAIL_CHARS]}"
    raise _for_status(response.status, message)


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    target: str  # path and query string
    body: bytes | None
    headers: dict[str, str]
    timeout_s: float


class _ThreadConnections(threading.local):
    def __init__(self) -> None:
        self.by_server: dict[tuple[str, str], http.client.HTTPConnection] = {}


class HttpClient:
    """HTTP/1.1 requests over persistent connections: one per thread and server, reused.

    A write costs InfluxDB less, and ingest a TCP handshake less, when the connection stays
    open. A request that fails on a connection the server closed while it sat idle is sent
    once more on a fresh one; every request osteotel sends is idempotent (a point is its series
    and time; `CREATE DATABASE` and queries change nothing twice), so a repeat is harmless.
    Proxy settings in the environment are ignored: store traffic goes straight to the server.
    """

    def __init__(self) -> None:
        """Create the client; connections open on first use."""
        self._local = _ThreadConnections()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float,
        action: str,
    ) -> HttpResponse:
        """Send one request and return the answer, whatever its status.

        Args:
            method: `GET` or `POST`.
            url: the full URL, query string included.
            body: the request body, if any.
            headers: request headers (authorization included; never logged).
            timeout_s: socket timeout for connecting and for each read, seconds.
            action: what is being done, for error messages.

        Returns:
            The status, lower-cased headers and body, for 2xx and error statuses alike.

        Raises:
            StoreUnavailable: the server could not be reached or did not answer in time.
            StoreRejected: the URL is malformed or the server's certificate is not trusted.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname
            if parts.scheme not in ("http", "https") or not host:
                raise StoreRejected(f"{action} failed: not an http(s) URL: {url!r}")
            key = (parts.scheme, parts.netloc)
            request = _Request(
                method=method,
                target=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                body=body,
                headers=dict(headers or {}),
                timeout_s=timeout_s,
            )
            idle = self._local.by_server.pop(key, None)
            if idle is not None:
                try:
                    return self._exchange(idle, key, request)
                except (ConnectionError, http.client.BadStatusLine):
                    pass  # closed by the server while idle: once more on a new connection
            fresh = self._connect(parts.scheme, host, parts.port, timeout_s)
            return self._exchange(fresh, key, request)
        except LIBRARY_ERRORS as exc:
            raise store_error(exc, action=action) from exc

    def _connect(
        self, scheme: str, host: str, port: int | None, timeout_s: float
    ) -> http.client.HTTPConnection:
        connection = (
            http.client.HTTPSConnection(host, port, timeout=timeout_s)
            if scheme == "https"
            else http.client.HTTPConnection(host, port, timeout=timeout_s)
        )
        with self._lock:
            self._open.add(connection)
        return connection

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        key: tuple[str, str],
        request: _Request,
    ) -> HttpResponse:
        """One request on `connection`; it goes back to the thread's pool only if still open."""
        try:
            if connection.sock is not None:
                connection.sock.settimeout(request.timeout_s)
            connection.request(
                request.method, request.target, body=request.body, headers=request.headers
            )
            with connection.getresponse() as answer:
                response = HttpResponse(
                    status=answer.status,
                    headers={name.lower(): value for name, value in answer.getheaders()},
                    body=answer.read(),
                )
                keep = not answer.will_close
        except BaseException:
            self._discard(connection)
            raise
        if keep:
            self._local.by_server[key] = connection
        else:
            self._discard(connection)
        return response

    def _discard(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        with self._lock:
            self._open.discard(connection)

    def close(self) -> None:
        """Close every connection, whichever thread opened it."""
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            connection.close()


class V2Writer:
    """Writes line protocol to `/api/v2/write` through influxdb-client, synchronously.

    Synchronous mode on purpose: the client's batching mode has a `flush()` that does nothing
    and a `close()` that can drop buffered points, and ingest does its own batching anyway.
    """

    def __init__(self, *, url: str, token: str | None, org: str, timeout_s: float) -> None:
        """Create the client; no request is sent until the first write.

        Args:
            url: the server's base URL.
            token: sent as `Authorization: Token ...`; for InfluxDB 1.8 `user:password`.
            org: the organisation writes go to.
            timeout_s: request timeout, seconds.
        """
        self._org = org
        # retries=False: ingest owns retrying, with its own backoff and accounting.
        # An empty token sends no Authorization header at all (servers with auth disabled).
        self._client = InfluxDBClient(
            url=url, token=token or "", org=org, timeout=int(timeout_s * 1000), retries=False
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, bucket: str, lines: bytes) -> None:
        """Write line protocol with nanosecond timestamps to `bucket`.

        Raises:
            StoreUnavailable: unreachable, timed out, HTTP 5xx or 429.
            StoreRejected: any other HTTP 4xx (bad line, unknown bucket, no permission).
        """
        try:
            self._write_api.write(
                bucket=bucket,
                org=self._org,
                record=lines,
                # The client's stubs type the enum's members as plain str.
                write_precision=cast(WritePrecision, WritePrecision.NS),
            )
        except LIBRARY_ERRORS as exc:
            # influxdb-client raises from several layers (its own, urllib3, sockets);
            # store_error sorts them, so the rest of osteotel sees only StoreError.
            raise store_error(exc, action="write (v2)") from exc

    def close(self) -> None:
        """Release the client's connection pool."""
        self._write_api.close()  # type: ignore[no-untyped-call]  # the library lacks annotations
        self._client.close()  # type: ignore[no-untyped-call]
