"""`osteotel ingest` as a real process, for the end-to-end and fault tests."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apps.services import InfluxDB, Mosquitto, free_ports
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore, Series

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_REGISTRY = REPO / "deploy" / "registry.example.toml"
DEADLINE_S = 60.0
# Starting ingest compiles the numba kernels when their on-disk cache is cold (a new clone).
START_DEADLINE_S = 240.0


@dataclass
class IngestProcess:
    """One `osteotel ingest` process and where it keeps its files."""

    env: dict[str, str]
    workdir: Path
    args: tuple[str, ...] = ()
    processes: int = 1
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def log_path(self) -> Path:
        return self.workdir / "ingest.log"

    @property
    def dead_letter_dir(self) -> Path:
        return self.workdir / "dead-letter"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.env['OSTEOTEL_INGEST__HTTP_PORT']}"

    def get(self, path: str) -> tuple[int, str]:
        """GET one of ingest's HTTP endpoints; returns the status and the body."""
        request = urllib.request.Request(self.http_url + path)  # noqa: S310 - loopback
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def start(self) -> None:
        """Start ingest and wait until it is subscribed."""
        self.starts += self.processes
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "apps.cli", "ingest", *self.args],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: self.log().count("ingest_started") >= self.starts,
            "ingest to start",
            self,
            deadline_s=START_DEADLINE_S,
        )

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        """Signal ingest and wait for it to exit; returns its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def running_ingest(env: dict[str, str], workdir: Path, **options: Any) -> Iterator[IngestProcess]:
    """Start `osteotel ingest`, and on leaving check that it stops cleanly (exit status 0)."""
    running = IngestProcess(env, workdir, **options)
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0


def ingest_env(
    mosquitto: Mosquitto, influxdb: InfluxDB, database: str, client_id: str, workdir: Path,
    **extra: str,
) -> dict[str, str]:  # fmt: skip
    """The environment that points `osteotel ingest` at these servers and this workdir."""
    return {
        **os.environ,
        "OSTEOTEL_MQTT__HOST": mosquitto.host,
        "OSTEOTEL_MQTT__PORT": str(mosquitto.port),
        "OSTEOTEL_MQTT__CLIENT_ID": client_id,
        "OSTEOTEL_INFLUX__URL": influxdb.url,
        "OSTEOTEL_INFLUX__DATABASE": database,
        "OSTEOTEL_INGEST__REGISTRY": str(EXAMPLE_REGISTRY),
        "OSTEOTEL_INGEST__DEAD_LETTER_DIR": str(workdir / "dead-letter"),
        "OSTEOTEL_INGEST__SPOOL_DIR": str(workdir / "spool"),
        "OSTEOTEL_INGEST__STATE_DIR": str(workdir / "state"),
        "OSTEOTEL_INGEST__BATCH_MAX_DELAY_S": "0.05",
        # With --processes N, child k listens on this port + k.
        "OSTEOTEL_INGEST__HTTP_PORT": str(free_ports(4)),
        **{f"OSTEOTEL_INGEST__{key.upper()}": value for key, value in extra.items()},
    }


def wait_for(
    condition: Callable[[], bool],
    what: str,
    ingest: IngestProcess | None = None,
    *,
    deadline_s: float = DEADLINE_S,
) -> None:
    """Poll `condition` until it holds; fail the test after `deadline_s` or if ingest died."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return
        if ingest is not None and ingest.process is not None and ingest.process.poll() is not None:
            pytest.fail(f"ingest exited with {ingest.process.returncode}:\n{ingest.log()[-3000:]}")
        time.sleep(0.1)
    tail = ingest.log()[-3000:] if ingest is not None else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def query_series(influxdb: InfluxDB, database: str, influxql: str) -> list[Series]:
    """Every series an InfluxQL query returns."""
    with InfluxStore(InfluxSettings(url=influxdb.url, database=database, api="v1")) as store:
        return store.query(influxql)


def query(influxdb: InfluxDB, database: str, influxql: str) -> list[list[object]]:
    """The rows of every series an InfluxQL query returns."""
    return [row for series in query_series(influxdb, database, influxql) for row in series.values]
