"""Local server processes: Mosquitto, InfluxDB 1.x, VictoriaMetrics and Alertmanager.

The pytest fixtures and `osteotel demo` start the same launchers, so a demo runs on exactly
what the tests proved. Each launcher is a context manager that

* writes its own config and data directories under `workdir` (never `/etc`, never `/var/lib`),
* starts the Debian binary as a child in its own session, with stdout and stderr appended to
  `log_path`,
* waits, bounded, until the server answers its protocol (MQTT CONNACK, HTTP ping or health),
* stops it with SIGTERM, then SIGKILL after a bounded wait, on exit and on any exception.

`start`, `stop`, `restart` and `kill` block (process start-up, sleeps, HTTP probes): asyncio
callers run them in a thread.
"""

import atexit
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from osteotel.errors import MissingBinaryError

__all__ = ["Alertmanager", "InfluxDB", "Mosquitto", "VictoriaMetrics", "free_port", "free_ports"]

_READY_TIMEOUT_S = 20.0
_PROBE_INTERVAL_S = 0.05
_PROBE_TIMEOUT_S = 1.0
_LOG_TAIL_BYTES = 4000
# Debian installs server daemons into /usr/sbin, which is not on every user's PATH.
_SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
# An HTTP opener that ignores *_proxy variables: every probe goes straight to loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_running: "weakref.WeakSet[_ServerProcess]" = weakref.WeakSet()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that nothing listens on at the moment of the call.

    The kernel picks the port; another process may still take it before the caller binds it,
    which on a test machine is rare enough to accept.

    Args:
        host: the address the port will be bound on.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """Return the first of `count` consecutive TCP ports on `host` that nothing listens on.

    Drawn below the kernel's ephemeral range (32768-60999 on Linux), where client connections
    take ports at random: there the port after a free one was often in use (an ingest child's
    `http_port + 1` answered `GET /readyz` with another server's bytes). The same race as
    `free_port` remains, and is as rare.
    """
    draw = random.Random()  # noqa: S311 - spreads test ports, guards nothing
    for _ in range(_PORT_DRAWS):
        first = draw.randrange(20_000, 32_000 - count)
        with contextlib.ExitStack() as bound:
            try:
                for port in range(first, first + count):
                    sock = bound.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((host, port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports on {host} in {_PORT_DRAWS} draws")


_PORT_DRAWS = 200


def _find_binary(binary: str | Path | None, default: str, install_hint: str) -> Path:
    """Resolve the executable to run, or raise `MissingBinaryError` naming the install command."""
    wanted = str(binary) if binary is not None else default
    if os.sep in wanted:
        found = wanted if os.access(wanted, os.X_OK) and Path(wanted).is_file() else None
    else:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), *_SYSTEM_DIRS])
        found = shutil.which(wanted, path=search_path)
    if found is None:
        raise MissingBinaryError(f"{wanted} not found: install it with `{install_hint}`")
    return Path(found)


def _http_status(url: str) -> int | None:
    """GET `url` and return the HTTP status, or None when nothing answered."""
    try:
        with _HTTP.open(url, timeout=_PROBE_TIMEOUT_S) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        # The server answered, just not with 2xx; close the body so no socket is left behind.
        exc.close()
        return exc.code
    except (OSError, ValueError):
        return None


class _ServerProcess:
    """One server binary run as a child process: start, probe, stop, restart, kill."""

    _name: ClassVar[str]
    _default_binary: ClassVar[str]
    _install_hint: ClassVar[str]

    def __init__(
        self,
        workdir: Path,
        *,
        host: str,
        port: int | None,
        binary: str | Path | None,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.binary = _find_binary(binary, self._default_binary, self._install_hint)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """The file the server's stdout and stderr (and its own log, where it has one) go to."""
        return self.workdir / f"{self._name}.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def _prepare(self) -> None:
        """Write config files and create data directories; called before every start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and return once it answers on `host:port`.

        Raises:
            RuntimeError: the process exited early or did not answer within 20 s; the message
                carries the tail of its log. The process is gone when this is raised.
        """
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        command = self._command()
        with self.log_path.open("ab") as log:
            log.write(f"--- apps.services: starting {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # Own session and process group: a terminal's Ctrl-C does not reach the server
                # behind our back, and stop() can signal the whole group.
                start_new_session=True,
            )
        _running.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                raise RuntimeError(
                    f"{self._name} exited with code {returncode} before answering on "
                    f"{self.host}:{self.port}; log {self.log_path} ends with:\n{self._log_tail()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self._name} did not answer on {self.host}:{self.port} within "
                    f"{_READY_TIMEOUT_S:g} s; log {self.log_path} ends with:\n{self._log_tail()}"
                )
            time.sleep(_PROBE_INTERVAL_S)

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
                return log.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"

    def _signal_group(self, signum: signal.Signals) -> None:
        assert self._process is not None
        # The child leads its own process group, so its pid is the group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signum)

    def stop(self, *, timeout_s: float = 10) -> None:
        """Stop the server with SIGTERM, then SIGKILL if it is still alive after `timeout_s`.

        Args:
            timeout_s: how long to wait for a graceful exit, in seconds.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.wait()
        self._process = None
        _running.discard(self)

    def kill(self) -> None:
        """Kill the server with SIGKILL: no shutdown, no final save (a crash, for fault tests)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(signal.SIGKILL)
            process.wait()
        self._process = None
        _running.discard(self)

    def restart(self) -> None:
        """Stop gracefully and start again on the same port with the same data directories."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}(host={self.host!r}, port={self.port}, {state})"


@atexit.register
def _stop_all() -> None:
    # A launcher left running by a crashed caller must not outlive the interpreter.
    for server in list(_running):
        server.stop(timeout_s=5)


def _run_as_current_user() -> str:
    """The mosquitto `user` line that keeps the broker running as the calling user."""
    # Started as root, mosquitto would switch to the `mosquitto` user, which cannot write into
    # our workdir. The uid decides, not $USER, which may name someone else. Without a passwd
    # entry we are not root, and mosquitto changes no user anyway.
    try:
        return f"user {pwd.getpwuid(os.getuid()).pw_name}"
    except KeyError:
        return "# user: the calling uid has no passwd entry; mosquitto keeps it"


class Mosquitto(_ServerProcess):
    """An Eclipse Mosquitto 2.x broker with a generated config, on one loopback listener.

    The generated config reads nothing from /etc/mosquitto. It sets no payload limit, so a
    2 MiB publish reaches subscribers: the ingest sees oversize payloads and rejects them
    itself, counted, instead of the broker dropping them unseen. (`message_size_limit` is
    deprecated in 2.x and `max_packet_size` defaults to no limit, so neither is written.)
    """

    _name = "mosquitto"
    _default_binary = "mosquitto"
    _install_hint = "apt-get install mosquitto mosquitto-clients"

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        persistence: bool = True,
        allow_anonymous: bool = True,
        extra_config: str = "",
        binary: str | Path | None = None,
    ) -> None:
        """Describe the broker; nothing starts until `start()` or `with`.

        Args:
            workdir: directory for the config, the persistence database and the log.
            host: the listener's address.
            port: the listener's TCP port; a free one when None.
            persistence: keep retained messages and sessions across a restart.
            allow_anonymous: accept clients without credentials; a secured broker passes False
                and its `password_file`/`acl_file` lines in `extra_config`.
            extra_config: lines appended after the listener line, so listener options
                (`certfile`, `require_certificate`, ...) apply to it; do not repeat generated keys.
            binary: the mosquitto executable; found on PATH or in /usr/sbin when None.

        Raises:
            MissingBinaryError: mosquitto is not installed.
            ValueError: `workdir` contains whitespace, which mosquitto's config cannot express.
        """
        super().__init__(workdir, host=host, port=port, binary=binary)
        if any(c.isspace() for c in str(self.workdir)):
            raise ValueError(f"mosquitto config paths cannot contain whitespace: {self.workdir}")
        self.persistence = persistence
        self.allow_anonymous = allow_anonymous
        self.extra_config = extra_config

    @property
    def config_path(self) -> Path:
        """The generated mosquitto.conf."""
        return self.workdir / "mosquitto.conf"

    @property
    def persistence_dir(self) -> Path:
        """Where the broker saves retained messages and sessions (on stop and on autosave)."""
        return self.workdir / "mosquitto-data"

    def _prepare(self) -> None:
        self.persistence_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Generated by apps.services; rewritten on every start.",
            _run_as_current_user(),
            f"persistence {'true' if self.persistence else 'false'}",
            # 1.x joins location and file name without a separator; 2.x adds one, and the
            # double slash that results there is harmless.
            f"persistence_location {self.persistence_dir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            # Generous queues: a slow ingest under test must see backpressure in its own
            # bounded queue, not messages silently dropped by the broker.
            "max_queued_messages 100000",
            # Ingest acknowledges only stored messages, a batch at a time: the window of
            # unacknowledged messages must hold several batches (docs/ingest.md).
            "max_inflight_messages 1000",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"listener {self.port} {self.host}",
            self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _command(self) -> list[str]:
        return [str(self.binary), "-c", str(self.config_path)]

    def _answers(self) -> bool:
        # Any CONNACK counts, including "not authorized" from a secured broker: it answered.
        connacks: list[object] = []
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"osteotel-ready-probe-{os.getpid()}",
            protocol=mqtt.MQTTv311,
        )
        client.connect_timeout = _PROBE_TIMEOUT_S
        client.on_connect = lambda _c, _u, _f, reason_code, _p: connacks.append(reason_code)
        try:
            client.connect(self.host, self.port, keepalive=5)
            deadline = time.monotonic() + _PROBE_TIMEOUT_S
            while not connacks and time.monotonic() < deadline:
                client.loop(timeout=_PROBE_INTERVAL_S)
        except OSError:
            return False
        finally:
            client.disconnect()
        return bool(connacks)


class InfluxDB(_ServerProcess):
    """An InfluxDB 1.x server (influxd) with a generated config and its data under `workdir`.

    HTTP listens on `host:port`, the backup/restore RPC on `host:rpc_port`. Usage reporting,
    the `_internal` monitor database and the per-request HTTP log are off.
    """

    _name = "influxd"
    _default_binary = "influxd"
    _install_hint = "apt-get install influxdb"

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        rpc_port: int | None = None,
        max_body_size_bytes: int = 256 * 1024 * 1024,
        binary: str | Path | None = None,
    ) -> None:
        """Describe the server; nothing starts until `start()` or `with`.

        Args:
            workdir: directory for the config, meta, data and WAL directories and the log.
            host: the address HTTP and RPC listen on.
            port: the HTTP port; a free one when None.
            rpc_port: the backup/restore RPC port; a free one when None.
            max_body_size_bytes: the largest write body accepted, in bytes.
            binary: the influxd executable; found on PATH or in /usr/sbin when None.

        Raises:
            MissingBinaryError: influxd is not installed.
        """
        super().__init__(workdir, host=host, port=port, binary=binary)
        self.rpc_port = rpc_port if rpc_port is not None else free_port(host)
        self.max_body_size_bytes = max_body_size_bytes

    @property
    def url(self) -> str:
        """The HTTP API's base URL, e.g. `http://127.0.0.1:8086`."""
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        """The generated influxdb.conf."""
        return self.workdir / "influxdb.conf"

    def _prepare(self) -> None:
        # json.dumps writes a valid TOML basic string for any path.
        def path(name: str) -> str:
            return json.dumps(str(self.workdir / name))

        config = f"""\
# Generated by apps.services; rewritten on every start.
reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = {path("influxdb-meta")}

[data]
  dir = {path("influxdb-data")}
  wal-dir = {path("influxdb-wal")}
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  log-enabled = false
  max-body-size = {self.max_body_size_bytes}

[logging]
  level = "info"
  suppress-logo = true
"""
        self.config_path.write_text(config, encoding="utf-8")

    def _command(self) -> list[str]:
        return [str(self.binary), "run", "-config", str(self.config_path)]

    def _answers(self) -> bool:
        return _http_status(f"{self.url}/ping") == 204


class VictoriaMetrics(_ServerProcess):
    """A single-node VictoriaMetrics with its storage under `workdir`."""

    _name = "victoria-metrics"
    _default_binary = "victoria-metrics"
    _install_hint = "apt-get install victoria-metrics"

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | Path | None = None,
    ) -> None:
        """Describe the server; nothing starts until `start()` or `with`.

        Args:
            workdir: directory for the storage and the log.
            host: the HTTP listen address.
            port: the HTTP port; a free one when None.
            binary: the victoria-metrics executable; found on PATH when None.

        Raises:
            MissingBinaryError: victoria-metrics is not installed.
        """
        super().__init__(workdir, host=host, port=port, binary=binary)

    @property
    def url(self) -> str:
        """The HTTP API's base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def storage_dir(self) -> Path:
        """Where the time series are stored."""
        return self.workdir / "victoria-metrics-data"

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.storage_dir}",
        ]

    def _answers(self) -> bool:
        return _http_status(f"{self.url}/health") == 200


_ALERTMANAGER_CONFIG = """\
# Generated by apps.services: every alert goes to the receiver that sends nothing.
route:
  receiver: "null"
receivers:
  - name: "null"
"""


class Alertmanager(_ServerProcess):
    """A Prometheus Alertmanager without clustering, its silences and log under `workdir`."""

    _name = "alertmanager"
    _default_binary = "prometheus-alertmanager"
    _install_hint = "apt-get install prometheus-alertmanager"

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        config_path: Path | None = None,
        binary: str | Path | None = None,
    ) -> None:
        """Describe the server; nothing starts until `start()` or `with`.

        Args:
            workdir: directory for the generated config, the storage and the log.
            host: the web listen address.
            port: the web port; a free one when None.
            config_path: an alertmanager.yml to use; when None, a minimal one routing every
                alert to a receiver named "null" that sends nothing.
            binary: the alertmanager executable; found on PATH when None.

        Raises:
            MissingBinaryError: prometheus-alertmanager is not installed.
        """
        super().__init__(workdir, host=host, port=port, binary=binary)
        self._given_config = Path(config_path) if config_path is not None else None

    @property
    def url(self) -> str:
        """The web and API base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        """The alertmanager.yml in use."""
        if self._given_config is not None:
            return self._given_config
        return self.workdir / "alertmanager.yml"

    @property
    def storage_dir(self) -> Path:
        """Where silences and the notification log are kept across restarts."""
        return self.workdir / "alertmanager-data"

    def _prepare(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self._given_config is None:
            self.config_path.write_text(_ALERTMANAGER_CONFIG, encoding="utf-8")

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.path={self.storage_dir}",
            f"--web.listen-address={self.host}:{self.port}",
            # An empty address turns gossip off: no cluster port, no peers looked for.
            "--cluster.listen-address=",
        ]

    def _answers(self) -> bool:
        return _http_status(f"{self.url}/-/ready") == 200
