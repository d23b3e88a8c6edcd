"""Catch-up: feed the estimator, at start, what was stored after its checkpoint.

A checkpoint (ingest/checkpoint.py) records, per device, the time of the last sample and the
last event the estimator had been fed. Messages acknowledged after it are in InfluxDB (or
were in the spool, which is drained first) and the broker will not deliver them again, so
before consuming live messages ingest reads them back, per device, and feeds them exactly as
live ingest did:

- frames from the `frame` measurement (their `t0_ns`, `n` and `rate_hz`: the estimator's
  quality counts depend on where a stream is cut into frames, so the stored cuts are used),
  their samples from `raw`, up to `_CHUNK_FRAMES` frames per query (memory stays bounded;
  long gaps between recordings cost no empty queries);
- events from `event`, fed among the frames in the order a hub publishes them: a frame when
  its last sample is taken, an event at its own time, an event first on a tie.

A device the checkpoint does not know (no checkpoint, a refused one, a new device) is rebuilt
from the start of its stored data, at most `rebuild_max_days` back. Every device caught up
gets a `catchup` point (docs/schema.md) and a `catchup` message on its estimates topic
(docs/derived.md) with its status: `caught_up` (from its checkpoint), `rebuilt` (from the
start of its data), `truncated` (rebuilt, but it has data older than the bound that were not
read) or `store_unreachable` (InfluxDB did not answer within `catchup_store_wait_s`, or
refused the query: its estimates go on from an older state). The alert service raises
`estimates_incomplete` on the last two.
The records it makes are written and published again (the same points: idempotent).

Under the storage tier (`raw_tier = "windows"`, a `capture_dir` given) the store no longer
holds every sample, so frames and events come from ingest's capture files instead
(ingest/replaycapture.py): in the order ingest received them, decoded and calibrated as live
ingest does, a chunk of `_CHUNK_FRAMES` frames at a time; what the moving position says was fed
is skipped (`unfed_part`, `event_unfed`), a line held twice included. A rebuild is `truncated`
when the files hold data at or before its bound; a checkpointed device whose hub's files start
after the day of its position gets `capture_missing` (fed what there is), also raised by the
alert service.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from inspect import GEN_RUNNING, getgeneratorstate
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import TypeAdapter, ValidationError

from devices.contract import Event, Frame
from devices.registry import Device
from dsp.estimator import EstimateRecord, FleetEstimator
from osteotel.errors import StoreRejected, StoreUnavailable
from osteotel.logs import kv
from osteotel.store.influx import InfluxStore
from osteotel.store.lineproto import point_line

from .capture import day_of
from .checkpoint import Position
from .estimates import feed_event
from .replaycapture import Unreadable, capture_days, device_messages

__all__ = [
    "CatchUp",
    "CatchUpProgress",
    "Outcome",
    "ProgressCollector",
    "Status",
    "StoreUnreachable",
    "catchup_line",
    "catchup_message",
    "event_unfed",
    "feed_frame",
    "unfed_part",
]

log = logging.getLogger("osteotel.ingest.catchup")

Status = Literal["caught_up", "rebuilt", "truncated", "store_unreachable", "capture_missing"]

# Frames read per query: at most 10,000 samples each (docs/contract.md), 100 of them bound a
# chunk to a million samples; a typical 100-sample frame makes it 10,000.
_CHUNK_FRAMES = 100
# Capture files: a chunk also ends after this many items (events, a few hundred bytes each).
_CHUNK_ITEMS = 1_000
_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 10.0
_T = TypeVar("_T")
_EVENT = TypeAdapter[Event](Event)
# Stored floats with an integral value come back as JSON integers.
_FLOAT_FIELDS = frozenset({"delta_mm", "pct"})


class StoreUnreachable(Exception):  # noqa: N818 - a state the caller handles, not a fault
    """InfluxDB did not answer within the catch-up's bound."""


@dataclass
class CatchUpProgress:
    """What catch-up did so far, for `/metrics` (ingest/service.py registers it)."""

    running: bool = False
    devices_total: int = 0
    devices_done: int = 0
    frames: int = 0
    samples: int = 0
    events: int = 0
    records: int = 0
    frames_incomplete: int = 0
    events_unreadable: int = 0
    # Capture files (raw_tier = "windows"): frames that do not decode, lines that do not parse.
    frames_unreadable: int = 0
    capture_lines_unreadable: int = 0
    seconds: float = 0.0
    # Live messages at or before a device's caught-up position: stored again, not fed again.
    frames_not_fed: int = 0
    events_not_fed: int = 0


class ProgressCollector(Collector):
    """`osteotel_ingest_catchup_*` on `/metrics`, read from a `CatchUpProgress` when scraped."""

    def __init__(self, progress: CatchUpProgress) -> None:
        self._progress = progress

    def collect(self) -> Iterable[Metric]:
        p = self._progress
        yield GaugeMetricFamily(
            "osteotel_ingest_catchup_running", "1 while catch-up runs (not ready)", int(p.running)
        )
        yield GaugeMetricFamily(
            "osteotel_ingest_catchup_devices", "Devices to catch up at this start", p.devices_total
        )
        yield GaugeMetricFamily(
            "osteotel_ingest_catchup_devices_done", "Devices caught up so far", p.devices_done
        )
        yield GaugeMetricFamily(
            "osteotel_ingest_catchup_seconds", "Time catch-up has taken so far", p.seconds
        )
        for name, value, documentation in (
            ("frames", p.frames, "Stored frames fed to the estimator at start"),
            ("samples", p.samples, "Stored samples fed to the estimator at start"),
            ("events", p.events, "Stored events fed to the estimator at start"),
            ("records", p.records, "Estimate records made again at start"),
            ("frames_incomplete", p.frames_incomplete, "Stored frames missing samples, not fed"),
            ("events_unreadable", p.events_unreadable, "Stored events that do not parse, not fed"),
            (
                "frames_unreadable",
                p.frames_unreadable,
                "Captured frames that do not decode, not fed",
            ),
            (
                "capture_lines_unreadable",
                p.capture_lines_unreadable,
                "Capture lines that do not parse: the rest of their file not read",
            ),
            ("frames_not_fed", p.frames_not_fed, "Redelivered frames already fed, stored only"),
            ("events_not_fed", p.events_not_fed, "Redelivered events already fed, stored only"),
        ):
            yield CounterMetricFamily(f"osteotel_ingest_catchup_{name}", documentation, value)


@dataclass
class _Chunk:
    """Frames and events of one device in the order to feed them, and where they end."""

    items: list[Frame | Event] = field(default_factory=list)
    last: bool = True
    # The last sample of the last frame read, fed or not (an incomplete frame is not).
    end_ns: int = -1


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one device's estimator started: its status, where reading began (UTC epoch ns),
    what was fed (`frames`, `samples`, `events`, `records`) and when it was done (UTC epoch ns).
    """

    device: Device
    status: Status
    from_ns: int
    counts: dict[str, int]
    t_ns: int


def catchup_line(outcome: Outcome) -> bytes:
    """The `catchup` point of a device (docs/schema.md): how its estimator started."""
    device = outcome.device
    return point_line(
        "catchup",
        {"hub": device.hub, "device": device.id},
        {"status": outcome.status, "from_ns": outcome.from_ns, **outcome.counts},
        outcome.t_ns,
    )


def catchup_message(outcome: Outcome) -> bytes:
    """The `catchup` message on the device's estimates topic (docs/derived.md), for the alerts."""
    device = outcome.device
    body = {
        "v": 1, "hub": device.hub, "patient": device.patient, "device": device.id,
        "t_ns": outcome.t_ns, "kind": "catchup", "status": outcome.status,
        "from_ns": outcome.from_ns, **outcome.counts,
    }  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def feed_frame(fleet: FleetEstimator, frame: Frame) -> list[EstimateRecord]:
    """Pass one calibrated frame to the estimator; returns the records it closed."""
    return fleet.frame(
        frame.device, frame.force_n, frame.disp_mm, frame.ref_load_n, frame.t0_ns, frame.rate_hz
    )


def _influxql(columns: str, measurement: str, device: str, condition: str) -> str:
    """One device's rows of a measurement; `condition` holds only our own integers."""
    quoted = "'" + device.replace("\\", "\\\\").replace("'", "\\'") + "'"
    # The device id is quoted above and everything else is ours: no injection here.
    return f'SELECT {columns} FROM "{measurement}" WHERE "device" = {quoted} AND {condition}'  # noqa: S608


class CatchUp:
    """Reads stored data after each device's position and feeds the estimator with it.

    Args:
        store: the InfluxDB ingest writes to.
        fleet: the estimator (restored from the checkpoint, or fresh).
        positions: each device's position; updated as data are fed.
        progress: counters for `/metrics`.
        wait_s: how long InfluxDB may stay unreachable before the rest is given up.
        capture_dir: ingest's capture files (`raw_tier = "windows"`): frames and events are
            read from them instead of the store; None to read the store.
    """

    def __init__(
        self,
        *,
        store: InfluxStore,
        fleet: FleetEstimator,
        positions: dict[str, Position],
        progress: CatchUpProgress,
        wait_s: float,
        capture_dir: Path | None = None,
    ) -> None:
        self._capture_dir = capture_dir
        self._store = store
        self._fleet = fleet
        self._positions = positions
        self._progress = progress
        self._deadline = time.monotonic() + wait_s

    async def run(
        self,
        devices: Iterable[tuple[Device, bool]],
        emit: Callable[[list[EstimateRecord], Outcome | None], Awaitable[None]],
        *,
        rebuild_from_ns: int,
    ) -> dict[str, Status]:
        """Catch every device up; `emit` stores and publishes records and outcomes.

        Args:
            devices: each device, and whether it is rebuilt (unknown to the checkpoint).
            emit: called with the records of each chunk (and no outcome), and at each
                device's end with its outcome (and no records).
            rebuild_from_ns: where a rebuilt device starts (UTC epoch ns, exclusive).

        Returns:
            Each device's status.
        """
        started = time.monotonic()
        progress = self._progress
        todo = list(devices)
        progress.running, progress.devices_total = True, len(todo)
        statuses: dict[str, Status] = {}
        reachable = True
        for device, rebuild in todo:
            position = self._positions.setdefault(device.id, Position())
            if rebuild:
                position.sample_ns = max(position.sample_ns, rebuild_from_ns)
                position.event_ns = max(position.event_ns, rebuild_from_ns)
            from_ns = position.sample_ns
            counts = {"frames": 0, "samples": 0, "events": 0, "records": 0}
            status: Status = "rebuilt" if rebuild else "caught_up"
            if self._capture_dir is not None:
                status = await self._from_capture(
                    device,
                    position,
                    emit,
                    counts,
                    rebuild_from_ns=rebuild_from_ns if rebuild else None,
                )
            elif reachable:
                try:
                    if rebuild and await self._has_data_until(device.id, rebuild_from_ns):
                        status = "truncated"
                    await self._device(device.id, position, emit, counts)
                except StoreUnreachable:
                    reachable = False
            if not reachable and self._capture_dir is None:
                status = "store_unreachable"
            statuses[device.id] = status
            log_level = logging.INFO if status in {"caught_up", "rebuilt"} else logging.ERROR
            log.log(log_level, kv("device_caught_up", device=device.id, status=status,
                                  from_ns=from_ns, **counts))  # fmt: skip
            await emit([], Outcome(device, status, from_ns, counts, time.time_ns()))
            progress.devices_done += 1
            progress.seconds = time.monotonic() - started
        progress.running = False
        return statuses

    async def _device(
        self,
        device: str,
        position: Position,
        emit: Callable[[list[EstimateRecord], Outcome | None], Awaitable[None]],
        counts: dict[str, int],
    ) -> None:
        while True:
            chunk = await self._query(self._read_chunk, device, position)
            records, fed = await asyncio.to_thread(self._feed, chunk.items, position, False)
            position.sample_ns = max(position.sample_ns, chunk.end_ns)
            await self._count(fed, records, emit, counts)
            if chunk.last:
                return

    async def _from_capture(
        self,
        device: Device,
        position: Position,
        emit: Callable[[list[EstimateRecord], Outcome | None], Awaitable[None]],
        counts: dict[str, int],
        *,
        rebuild_from_ns: int | None,
    ) -> Status:
        """Feed what the device's capture files hold after its position; returns its status."""
        assert self._capture_dir is not None
        days = await asyncio.to_thread(capture_days, self._capture_dir / device.hub)
        fed_ns = max(position.sample_ns, position.event_ns)
        files = days.since(fed_ns) if fed_ns >= 0 else [path for _, path in days.files]
        status: Status = "caught_up"
        if rebuild_from_ns is not None:
            status = "rebuilt"
            if len(files) < len(days.files):
                status = "truncated"  # whole days before the bound
        elif fed_ns >= 0 and (days.first_day is None or days.first_day > day_of(fed_ns)):
            status = "capture_missing"
            log.error(kv("catchup_capture_missing", device=device.id, hub=device.hub,
                         fed_ns=fed_ns, first_day=str(days.first_day)))  # fmt: skip
        unreadable = Unreadable()
        items = device_messages(files, device, unreadable)
        try:
            while chunk := await asyncio.to_thread(_take_chunk, items):
                if rebuild_from_ns is not None and any(
                    _time_ns(item) <= rebuild_from_ns for item in chunk
                ):
                    status = "truncated"  # data at or before the bound in the files read
                records, fed = await asyncio.to_thread(self._feed, chunk, position, True)
                await self._count(fed, records, emit, counts)
        finally:
            # Cancelled while a worker thread reads a chunk, the generator is still running
            # there: it is left to be collected (its file closed then) rather than closed here.
            if isinstance(items, Generator) and getgeneratorstate(items) != GEN_RUNNING:
                items.close()
            self._progress.frames_unreadable += unreadable.frames
            self._progress.events_unreadable += unreadable.events
            self._progress.capture_lines_unreadable += unreadable.lines
        return status

    async def _count(
        self,
        fed: list[Frame | Event],
        records: list[EstimateRecord],
        emit: Callable[[list[EstimateRecord], Outcome | None], Awaitable[None]],
        counts: dict[str, int],
    ) -> None:
        """Count what a chunk fed, and emit its records."""
        progress = self._progress
        frames = [item for item in fed if isinstance(item, Frame)]
        samples = sum(frame.n for frame in frames)
        counts["frames"] += len(frames)
        counts["samples"] += samples
        counts["events"] += len(fed) - len(frames)
        counts["records"] += len(records)
        progress.frames += len(frames)
        progress.samples += samples
        progress.events += len(fed) - len(frames)
        progress.records += len(records)
        if records:
            await emit(records, None)

    def _feed(
        self, items: list[Frame | Event], position: Position, skip_fed: bool
    ) -> tuple[list[EstimateRecord], list[Frame | Event]]:
        """Feed a chunk (in a worker thread: nothing else uses the estimator meanwhile); with
        `skip_fed`, only what the position, as it moves, says was not fed. Returns the records
        and what was fed."""
        records: list[EstimateRecord] = []
        fed: list[Frame | Event] = []
        for item in items:
            if isinstance(item, Frame):
                part = unfed_part(item, position) if skip_fed else item
                if part is None:
                    continue
                records += feed_frame(self._fleet, part)
                position.sample_ns = max(position.sample_ns, part.t_last_ns)
                fed.append(part)
            else:
                if skip_fed and not event_unfed(item, position):
                    continue
                records += feed_event(self._fleet, item)
                position.event_ns = max(position.event_ns, item.t_ns)
                fed.append(item)
        return records, fed

    async def _query(self, read: Callable[..., _T], *args: Any) -> _T:
        """Run a read in a thread, retrying while InfluxDB is unavailable, up to the bound.

        Raises:
            StoreUnreachable: still unavailable at the bound, or the query was refused (bad
                credentials, say): the rest of catch-up is given up either way.
        """
        delay_s = _RETRY_MIN_S
        while True:
            try:
                return await asyncio.to_thread(read, *args)
            except StoreRejected as exc:
                log.error(kv("catchup_query_refused", status=exc.status, detail=str(exc)))
                raise StoreUnreachable from exc
            except StoreUnavailable as exc:
                if time.monotonic() + delay_s > self._deadline:
                    log.error(kv("catchup_store_unreachable", detail=str(exc)))
                    raise StoreUnreachable from exc
                log.warning(kv("catchup_store_unavailable", retry_in_s=delay_s, detail=str(exc)))
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _RETRY_MAX_S)

    def _select(self, influxql: str) -> list[dict[str, Any]]:
        """Rows of a query, as one series; none when the database does not exist yet."""
        try:
            series = self._store.query(influxql)
        except StoreRejected as exc:
            if "database not found" in str(exc):
                return []
            raise
        if not series:
            return []
        return [dict(zip(s.columns, row, strict=True)) for s in series for row in s.values]

    async def _has_data_until(self, device: str, until_ns: int) -> bool:
        rows = await self._query(
            self._select,
            _influxql('"n"', "frame", device, f"time <= {until_ns} LIMIT 1"),
        )
        return bool(rows)

    def _read_chunk(self, device: str, position: Position) -> _Chunk:
        """The next frames (with their samples) and events after `position`, in feeding order."""
        frame_rows = self._select(
            _influxql(
                '"seq", "n", "rate_hz"',
                "frame",
                device,
                f"time > {position.sample_ns} ORDER BY time ASC LIMIT {_CHUNK_FRAMES}",
            )
        )
        chunk = _Chunk(last=len(frame_rows) < _CHUNK_FRAMES)
        frames = self._frames(device, frame_rows)
        if frame_rows:
            t0_ns, n, rate_hz = (frame_rows[-1][key] for key in ("time", "n", "rate_hz"))
            chunk.end_ns = int(t0_ns) + round((int(n) - 1) * 1e9 / float(rate_hz))
        # Events up to the last frame's end, or all that are left with the last chunk.
        until = "" if chunk.last else f" AND time <= {chunk.end_ns}"
        event_rows = self._select(
            _influxql("*", "event", device, f"time > {position.event_ns}{until} ORDER BY time ASC")
        )
        events = [event for row in event_rows if (event := self._event(row)) is not None]
        # A hub publishes a frame once its last sample is taken and an event when it happens.
        keyed: list[tuple[int, int, Frame | Event]] = [(event.t_ns, 0, event) for event in events]
        keyed += [(frame.t_last_ns, 1, frame) for frame in frames]
        keyed.sort(key=lambda item: (item[0], item[1]))
        chunk.items = [item for _, _, item in keyed]
        return chunk

    def _frames(self, device: str, rows: list[dict[str, Any]]) -> list[Frame]:
        if not rows:
            return []
        starts = [
            (int(row["time"]), int(row["seq"]), int(row["n"]), float(row["rate_hz"]))
            for row in rows
        ]
        last_t0, _, last_n, last_rate = starts[-1]
        end_ns = last_t0 + round((last_n - 1) * 1e9 / last_rate)
        samples = self._select(
            _influxql(
                '"force_n", "disp_mm", "ref_load_n"',
                "raw",
                device,
                f"time >= {starts[0][0]} AND time <= {end_ns}",
            )
        )
        times = np.array([row["time"] for row in samples], dtype=np.int64)
        force = np.array([row["force_n"] for row in samples], dtype=np.float64)
        disp = np.array([row["disp_mm"] for row in samples], dtype=np.float64)
        ref = np.array([row.get("ref_load_n") for row in samples], dtype=np.float64)
        frames: list[Frame] = []
        for t0_ns, seq, n, rate_hz in starts:
            shell = Frame(device, seq, t0_ns, rate_hz, np.zeros(n), np.zeros(n))
            wanted = shell.timestamps_ns()
            at = np.searchsorted(times, wanted)
            found = at < len(times)
            found[found] = times[at[found]] == wanted[found]
            if not found.all():
                # The store lost samples of an acknowledged frame: feeding it cut would change
                # the estimates silently, so it is named, counted and not fed.
                self._progress.frames_incomplete += 1
                log.error(kv("catchup_frame_incomplete", device=device, t0_ns=t0_ns,
                             missing=int((~found).sum()), n=n))  # fmt: skip
                continue
            frame_ref = ref[at]
            usable_ref = None if np.isnan(frame_ref).any() else frame_ref
            frames.append(Frame(device, seq, t0_ns, rate_hz, force[at], disp[at], usable_ref))
        return frames

    def _event(self, row: dict[str, Any]) -> Event | None:
        data = {
            key: float(value) if key in _FLOAT_FIELDS else value
            for key, value in row.items()
            if value is not None and key not in {"time", "hub"}
        }
        data["t_ns"] = int(row["time"])
        try:
            return _EVENT.validate_python(data)
        except ValidationError as exc:
            self._progress.events_unreadable += 1
            log.error(kv("catchup_event_unreadable", device=row.get("device"),
                         t_ns=row["time"], detail=str(exc).splitlines()[0]))  # fmt: skip
            return None


def _take_chunk(items: Iterator[Frame | Event]) -> list[Frame | Event]:
    """The next items, up to `_CHUNK_FRAMES` frames (and the events among them), at most
    `_CHUNK_ITEMS` in all (a long run of events without frames)."""
    chunk: list[Frame | Event] = []
    frames = 0
    for item in items:
        chunk.append(item)
        frames += isinstance(item, Frame)
        if frames == _CHUNK_FRAMES or len(chunk) == _CHUNK_ITEMS:
            break
    return chunk


def _time_ns(item: Frame | Event) -> int:
    return item.t0_ns if isinstance(item, Frame) else item.t_ns


def unfed_part(frame: Frame, fed: Position | None) -> Frame | None:
    """What of a frame the estimator has not read yet, given where catch-up left its device.

    A message delivered again after a restart was read before (from the checkpoint or from
    the store): all of it at or before `fed.sample_ns` gives None; a frame across that time
    gives its samples after it, its `t0_ns` moved to the first of them.
    """
    if fed is None or frame.t0_ns > fed.sample_ns:
        return frame
    if frame.t_last_ns <= fed.sample_ns:
        return None
    times = frame.timestamps_ns()
    first = int(np.searchsorted(times, fed.sample_ns, side="right"))
    return Frame(
        frame.device,
        frame.seq,
        int(times[first]),
        frame.rate_hz,
        frame.force_n[first:],
        frame.disp_mm[first:],
        None if frame.ref_load_n is None else frame.ref_load_n[first:],
        frame.temp_c,
        frame.battery_pct,
    )


def event_unfed(event: Event, fed: Position | None) -> bool:
    """Whether the estimator has not read this event yet (the rule of `unfed_part`)."""
    return fed is None or event.t_ns > fed.event_ns
