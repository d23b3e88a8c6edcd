"""The ingest service: MQTT in, validation, InfluxDB out, nothing lost and nothing silent.

    MqttSource ──receive──▶ validate ─▶ calibrate ─▶ DSP ─▶ bounded queue ──write──▶ InfluxDB
                               │                                                      │
                               │                                    ack to the broker ◀┘
                               └ rejections ─▶ dead letters (fsync'd) + `rejection` points
                                               + counters + log

Frames are checked raw, as they came on the wire, then calibrated with the registry's
calibration (ingest/calibration.py): storage and the DSP only ever see calibrated values.

A message is acknowledged to the broker only after its points are in InfluxDB (and, for a
rejection, its dead letter is on disk): a crash before that makes the broker deliver it again,
and because a point's identity is its series and timestamp, a redelivery overwrites instead of
duplicating. While InfluxDB is unavailable batches go to the spool and are acknowledged
(ingest/storage.py). The queue, the batches written and their acknowledgement in order are
the `Writer`'s (ingest/writer.py).
"""

import asyncio
import contextlib
import logging
import time
from collections import deque

import numpy as np

import dsp
from devices.contract import (
    Frame,
    HubStatus,
    Rejected,
    derived_topic,
)
from devices.registry import Device, Registry, RegistryFile
from devices.validation import Accepted, Limits, accept_many
from dsp.estimator import EstimateRecord, FleetEstimator
from osteotel.errors import StoreError
from osteotel.logs import kv
from osteotel.mqtt import MqttSource, Received
from osteotel.mqttwire import open_source
from osteotel.settings import Settings
from osteotel.store.influx import InfluxStore

from .accounting import Accounting
from .calibration import calibrate
from .capture import Captures
from .catchup import (
    CatchUp,
    CatchUpProgress,
    Outcome,
    ProgressCollector,
    catchup_line,
    catchup_message,
    event_unfed,
    feed_frame,
    unfed_part,
)
from .checkpoint import Checkpointer, Position, read_checkpoint
from .deadletter import DeadLetterWriter
from .estimates import estimate_line, estimate_message, feed_event, register_device
from .metrics import HealthServer, IngestMetrics, stats_lines
from .partition import Subscriptions, hub_partition, partition_of, subscriptions
from .records import (
    device_info_lines,
    event_lines,
    frames_lines,
    status_lines,
)
from .records import warm_up as warm_up_lines
from .redelivery import (
    Redeliveries,
    mark_all_acknowledged,
    take_all_acknowledged,
)
from .rejection import Rejections
from .spool import Spool
from .storage import Storage
from .tier import Tier
from .work import Batch, PendingFrames, Work
from .writer import Writer

__all__ = ["IngestService"]

log = logging.getLogger("osteotel.ingest")

# Records catch-up makes again are published again only this recent: a crash can have kept
# a record from being published, and the alert service recognises an estimate it has applied
# for 30 days (alerts/store.py, APPLIED_KEEP_S). A rebuild's older history would reach the
# rules as new input and raise alerts about weeks past.
REPUBLISH_DAYS = 30.0
# How long a graceful stop waits for received messages to be stored and acknowledged.
_DRAIN_TIMEOUT_S = 10.0
# Messages handled per turn of the event loop: enough to share the DSP call and the loop's
# overhead, few enough (about 50 ms of work) that the writer is not kept waiting.
_HANDLE_MAX_MESSAGES = 200


class IngestService:
    """Subscribes to every hub, validates, stores, and accounts for each message.

    Args:
        settings: broker, store and ingest settings.
    """

    def __init__(self, *, settings: Settings) -> None:
        self._settings = settings
        self._registry = RegistryFile(settings.ingest.registry)
        self._limits = Limits(
            max_payload_bytes=settings.ingest.max_payload_bytes,
            future_skew_ns=round(settings.ingest.future_skew_s * 1e9),
        )
        self._dead_letters = DeadLetterWriter(settings.ingest.dead_letter_dir)
        # Work made from received messages and not in the writer's queue yet (it was full).
        self._handed: deque[Work] = deque()
        self.accounting = Accounting()
        self._rejections = Rejections(
            accounting=self.accounting,
            redeliveries=Redeliveries(limit=settings.ingest.dead_letter_recall),
        )
        self._estimator = FleetEstimator()
        self._estimated: set[str] = set()
        spool = Spool(settings.ingest.spool_dir, max_bytes=settings.ingest.spool_max_bytes)
        self.metrics = IngestMetrics(self.accounting, spool)
        capture_dir = settings.ingest.capture_dir
        self._captures = (
            None if capture_dir is None else Captures(capture_dir, accounting=self.accounting)
        )
        self._tier = (
            Tier(
                before_s=settings.ingest.tier_before_s,
                after_s=settings.ingest.tier_after_s,
                accounting=self.accounting,
            )
            if settings.ingest.raw_tier == "windows"
            else None
        )
        self._storage = Storage(
            store=InfluxStore(settings.influx),
            spool=spool,
            dead_letters=self._dead_letters,
            metrics=self.metrics,
            probe_interval_s=settings.ingest.store_probe_interval_s,
        )
        self.ready = asyncio.Event()
        self._source: MqttSource | None = None
        # The checkpoint (ingest/checkpoint.py): each device's position in its data, where
        # catch-up left it (a redelivered message at or before it is not fed again), and the
        # number of the last work made.
        self._positions: dict[str, Position] = {}
        self._fed_until: dict[str, Position] = {}
        self._handled = 0
        self._checkpointer = Checkpointer(
            directory=settings.ingest.state_dir,
            config=self._estimator.config,
            interval_s=settings.ingest.checkpoint_interval_s,
            batches=settings.ingest.checkpoint_batches,
        )
        self._writer = Writer(
            limits=settings.ingest,
            storage=self._storage,
            dead_letters=self._dead_letters,
            captures=self._captures,
            rejections=self._rejections,
            accounting=self.accounting,
            metrics=self.metrics,
            checkpointer=self._checkpointer,
        )
        self.catchup = CatchUpProgress()
        self._caught_up = False
        self.metrics.registry.register(ProgressCollector(self.catchup))

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then store and acknowledge what was received, and return."""
        # Compile (or load from numba's cache) every kernel now, not on the first frame.
        await asyncio.to_thread(dsp.warm_up)
        await asyncio.to_thread(warm_up_lines)
        await self._restore()
        drained = False
        try:
            # No ensure_database here: the store creates the database on its first write, so
            # ingest starts (and spools) even while InfluxDB is still down.
            filters = self._subscriptions()
            source = open_source(
                settings=self._settings.mqtt, subscriptions=filters.wanted, stale=filters.stale
            )
            self._source = source
            async with source, self._http(), asyncio.TaskGroup() as tasks:
                # Until the drain at the stop is done: writing, acknowledging, the spool, stats.
                background = [
                    tasks.create_task(self._writer.write(source), name="ingest.write"),
                    tasks.create_task(self._writer.acknowledge(source), name="ingest.acknowledge"),
                    tasks.create_task(self._storage.drain(), name="ingest.spool"),
                    tasks.create_task(self._write_stats(), name="ingest.stats"),
                ]
                registry = tasks.create_task(self._watch_registry(), name="ingest.registry")
                await source.wait_connected(timeout_s=30)
                # Live messages wait (unacknowledged, at the broker or in paho's buffer)
                # until the estimator has read what was stored after its checkpoint.
                catch_up = tasks.create_task(self._catch_up(source), name="ingest.catchup")
                stopping = tasks.create_task(stop.wait(), name="ingest.stopping")
                await asyncio.wait([catch_up, stopping], return_when=asyncio.FIRST_COMPLETED)
                if not catch_up.done():
                    # The checkpoint on disk is still consistent with the store: leave it.
                    catch_up.cancel()
                    log.warning(kv("shutdown_during_catchup"))
                receive = tasks.create_task(self._receive(source), name="ingest.receive")
                quiet = tasks.create_task(self._checkpoint_quiet(source), name="ingest.quiet")
                self.ready.set()
                log.info(kv("ingest_started", influx_url=self._settings.influx.url))
                await stopping
                quiet.cancel()
                receive.cancel()
                registry.cancel()
                await asyncio.wait([receive])  # returns once it has stopped, raises nothing
                try:
                    await asyncio.wait_for(self._drain(), _DRAIN_TIMEOUT_S)
                except TimeoutError:
                    # Not acknowledged, so the broker delivers it again to the next ingest;
                    # the last checkpoint written stays the one to start from.
                    log.warning(kv("shutdown_undrained", messages=self._writer.queue.qsize()))
                else:
                    drained = True
                    if self._caught_up:
                        await self._checkpointer.write_now(
                            self._estimator, self._positions, self._handled, source.confirmed
                        )
                await self._checkpointer.written()
                for task in background:
                    task.cancel()
            if drained:
                # Every message received is stored and acknowledged: nothing can come back.
                await asyncio.to_thread(mark_all_acknowledged, self._settings.ingest.state_dir)
        finally:
            self._dead_letters.close()
            if self._captures is not None:
                self._captures.close()
            await asyncio.to_thread(self._storage.close)
        log.info(kv("ingest_stopped"))

    async def _restore(self) -> None:
        """The estimator from its checkpoint, and the rejections a crash may bring back."""
        ingest = self._settings.ingest
        restored = await asyncio.to_thread(
            read_checkpoint, ingest.state_dir, self._estimator.config
        )
        if restored is not None:
            self._estimator, self._positions = restored
        if not await asyncio.to_thread(take_all_acknowledged, ingest.state_dir):
            # The last stop may have left rejected messages unacknowledged: recognise them.
            redeliveries = self._rejections.redeliveries
            await asyncio.to_thread(redeliveries.recall, ingest.dead_letter_dir)
            log.info(kv("dead_letters_recalled", rejections=len(redeliveries)))

    def _subscriptions(self) -> Subscriptions:
        """This process's topic filters for the registry in force (ingest/partition.py)."""
        ingest = self._settings.ingest
        return subscriptions(self._registry.current.hubs, ingest.partitions, ingest.partition)

    def _http(self) -> contextlib.AbstractAsyncContextManager[object]:
        port = self._settings.ingest.http_port
        if port == 0:
            return contextlib.nullcontext()
        return HealthServer(
            host=self._settings.ingest.http_host,
            port=port,
            metrics=self.metrics,
            ready=self._is_ready,
        )

    def _is_ready(self) -> bool:
        """Caught up, connected to the broker and not blocked on a full spool."""
        return (
            self._caught_up
            and self._source is not None
            and self._source.connected
            and not self._storage.spool_full
        )

    def _owns(self, hub: str) -> bool:
        """Whether this process stores the hub's devices (ingest/partition.py)."""
        ingest = self._settings.ingest
        return hub_partition(hub, ingest.partitions) == ingest.partition

    async def _catch_up(self, source: MqttSource) -> None:
        """Feed the estimator what was stored after its checkpoint (ingest/catchup.py)."""
        settings = self._settings.ingest
        self.catchup.running = True
        started = time.monotonic()
        deadline = started + settings.catchup_store_wait_s
        # Spooled batches were acknowledged and are not in InfluxDB yet: they go in first.
        await self._storage.drained(deadline)
        registry = self._registry.current
        checkpointed = set(self._positions)
        devices = [
            (device, device.id not in checkpointed)
            for device in registry.devices.values()
            if self._owns(device.hub)
        ]
        for device, _ in devices:
            self._know(device)
        for device_id in sorted(checkpointed - set(registry.devices)):
            log.info(kv("catchup_skipped", device=device_id, reason="not_in_registry"))

        async def emit(records: list[EstimateRecord], outcome: Outcome | None) -> None:
            current = self._registry.current
            body = b"".join(
                estimate_line(current.devices[record.device].hub, record) for record in records
            )
            if outcome is not None:
                body += catchup_line(outcome)
            await self._writer.store_or_spool(body, Batch())
            if outcome is not None:
                # Stored first, like an estimate: the alert service hears of a device whose
                # history could not be read (docs/derived.md, `catchup`).
                source.publish(derived_topic(outcome.device.id), catchup_message(outcome))
            republish_from_ns = time.time_ns() - round(REPUBLISH_DAYS * 86_400e9)
            for record in records:
                if record.t_ns < republish_from_ns:
                    continue  # published long ago; the alert service would judge it anew
                device = current.devices[record.device]
                source.publish(
                    derived_topic(record.device),
                    estimate_message(device.hub, device.patient, record),
                )

        catch_up = CatchUp(
            store=self._storage.store,
            fleet=self._estimator,
            positions=self._positions,
            progress=self.catchup,
            wait_s=max(0.0, deadline - time.monotonic()),
            # Under the storage tier the store lacks most samples: the capture files have them.
            capture_dir=settings.capture_dir if settings.raw_tier == "windows" else None,
        )
        rebuild_from_ns = time.time_ns() - round(settings.rebuild_max_days * 86_400e9)
        statuses = await catch_up.run(devices, emit, rebuild_from_ns=rebuild_from_ns)
        self._fed_until = {
            device: Position(position.sample_ns, position.event_ns)
            for device, position in self._positions.items()
        }
        # A rebuild may have taken long: its result is on disk before anything else happens.
        await self._checkpointer.write_now(
            self._estimator, self._positions, self._handled, source.confirmed
        )
        self._caught_up = True
        log.info(
            kv(
                "catchup_done",
                devices=len(statuses),
                rebuilt=sum(status != "caught_up" for status in statuses.values()),
                samples=self.catchup.samples,
                events=self.catchup.events,
                seconds=round(time.monotonic() - started, 3),
            )
        )

    async def _checkpoint_quiet(self, source: MqttSource) -> None:
        # Between two turns of the loop, the estimator holds exactly the messages handled.
        while True:
            await asyncio.sleep(self._settings.ingest.checkpoint_interval_s)
            self._checkpointer.quiet(
                self._estimator, self._positions, self._handled, source.confirmed
            )

    async def _write_stats(self) -> None:
        instance = self._settings.mqtt.client_id
        while True:
            await asyncio.sleep(self._settings.ingest.stats_interval_s)
            lines = stats_lines(
                self.accounting, self._storage.spool, instance=instance, now_ns=time.time_ns()
            )
            try:
                await asyncio.to_thread(self._storage.store.write, lines)
            except StoreError as exc:
                # A snapshot of cumulative counters: the next one carries the same information.
                log.info(kv("stats_not_written", detail=str(exc)))

    async def _write_device_info(self, retired: set[str]) -> None:
        lines = device_info_lines(self._registry.current, retired=retired, now_ns=time.time_ns())
        # Through the spool like any batch: the boards must not lose a patient's entry.
        await self._writer.store_or_spool(lines, Batch())

    async def _watch_registry(self) -> None:
        await self._write_device_info(retired=set())
        while True:
            await asyncio.sleep(self._settings.ingest.registry_reload_s)
            before = set(self._registry.current.devices)
            if await asyncio.to_thread(self._registry.reload_if_changed):
                registry = self._registry.current
                await self._write_device_info(retired=before - set(registry.devices))
                self._estimated.clear()  # prescriptions may have changed: pass them on again
                if self._source is not None and self._settings.ingest.partitions > 1:
                    filters = self._subscriptions()
                    self._source.set_subscriptions(filters.wanted, filters.stale)
                log.info(
                    kv("registry_reloaded", hubs=len(registry.hubs), devices=len(registry.devices))
                )

    async def _receive(self, source: MqttSource) -> None:
        pipeline = self.accounting.pipeline
        async for messages in source.batches(max_messages=_HANDLE_MAX_MESSAGES):
            pipeline["receipts"] += 1
            pipeline["unacked_at_receipt"] += self._writer.unacked
            self._writer.unacked += len(messages)
            self._handed.extend(self._handle_batch(messages))
            queue = self._writer.queue
            while self._handed:
                if queue.full():
                    started_ns = time.monotonic_ns()
                    await queue.put(self._handed[0])  # waits for the writer to make room
                    pipeline["queue_full_waits"] += 1
                    pipeline["queue_full_wait_ns"] += time.monotonic_ns() - started_ns
                else:
                    queue.put_nowait(self._handed[0])  # no coroutine per message
                self._handed.popleft()

    async def _drain(self) -> None:
        """Store and acknowledge everything received: the work a cancelled `_receive` had not
        queued yet included, as the estimator has already seen those messages."""
        while self._handed:
            await self._writer.queue.put(self._handed.popleft())
        await self._writer.queue.join()

    def _handle_batch(self, messages: list[Received]) -> list[Work]:
        """Turn a batch of messages into work, in order; the DSP runs frames in runs."""
        partitions = self._settings.ingest.partitions
        mine = self._settings.ingest.partition
        registry = self._registry.current  # one version for the whole batch
        works: list[Work] = []
        pending = PendingFrames()
        clock, spent = time.thread_time_ns, self.accounting.stage_ns
        handle_started = clock()
        self.accounting.messages_received += len(messages)
        owned = [
            partitions == 1 or partition_of(message.topic, partitions) == mine
            for message in messages
        ]
        started = clock()
        verdicts = iter(
            accept_many(
                [
                    (message.topic, message.payload, message.received_ns)
                    for message, own in zip(messages, owned, strict=True)
                    if own
                ],
                registry=registry,
                limits=self._limits,
            )
        )
        spent["validate"] += clock() - started
        for message, own in zip(messages, owned, strict=True):
            if not own:
                # Another process owns this hub: queued for this session before its hub moved
                # (a registry change, another process count). Acknowledge in turn, store nothing.
                self.accounting.messages_foreign += 1
                works.append(Work(message, [], 0))
                continue
            accepted = next(verdicts)
            if isinstance(accepted, Rejected):
                works.append(self._reject(message, accepted))
                continue
            if not isinstance(accepted.message, Frame):
                # An event reaches the estimator after every frame received before it.
                self._estimate_frames(pending, registry)
            works.append(self._store(message, accepted, registry, pending))
        self._estimate_frames(pending, registry)
        for work in works:
            self._handled += 1
            work.seq = self._handled
        started = clock()
        self._checkpointer.handled(self._estimator, self._positions, self._handled)
        spent["checkpoint"] += clock() - started
        spent["handle"] += clock() - handle_started
        return works

    def _estimate_frames(self, pending: PendingFrames, registry: Registry) -> None:
        """Write the lines of the frames waiting for them, then run the frames waiting for the
        DSP through it at once, in order of receipt (a run's estimates follow its lines)."""
        if pending.unwritten:
            started = time.thread_time_ns()
            unwritten, pending.unwritten = pending.unwritten, []
            if self._tier is not None:
                self._tier.write(unwritten)  # raw or raw_1s (ingest/tier.py)
            else:
                lines = frames_lines([(hub, frame, enc) for _, hub, frame, enc in unwritten])
                for (work, *_), (raw, meta) in zip(unwritten, lines, strict=True):
                    work.lines += (raw, meta)
            self.accounting.stage_ns["lines"] += time.thread_time_ns() - started
        if not pending.frames:
            return
        started = time.thread_time_ns()
        try:
            self._run_dsp(pending, registry)
        finally:
            self.accounting.stage_ns["dsp"] += time.thread_time_ns() - started

    def _run_dsp(self, pending: PendingFrames, registry: Registry) -> None:
        frames, works = pending.frames, pending.works
        pending.frames, pending.works = [], []
        for frame in frames:
            position = self._positions.setdefault(frame.device, Position())
            position.sample_ns = max(position.sample_ns, frame.t_last_ns)
        with_ref = sum(frame.ref_load_n is not None for frame in frames)
        if len(frames) == 1 or 0 < with_ref < len(frames):
            # `frames` takes a reference load for all frames or for none: one at a time here.
            for frame, work in zip(frames, works, strict=True):
                self._attach(work, feed_frame(self._estimator, frame), registry)
            return
        offsets = np.zeros(len(frames) + 1, dtype=np.int64)
        np.cumsum([frame.n for frame in frames], out=offsets[1:])
        records = self._estimator.frames(
            [frame.device for frame in frames],
            offsets,
            np.concatenate([frame.force_n for frame in frames]),
            np.concatenate([frame.disp_mm for frame in frames]),
            np.concatenate([frame.ref_load_n for frame in frames if frame.ref_load_n is not None])
            if with_ref
            else None,
            np.array([frame.t0_ns for frame in frames], dtype=np.int64),
            np.array([frame.rate_hz for frame in frames], dtype=np.float64),
        )
        # Which frame of a run closed a record is not known here; the run's last message
        # carries them all, so they are stored and published in the order the DSP made them.
        self._attach(works[-1], records, registry)

    def _attach(self, work: Work, records: list[EstimateRecord], registry: Registry) -> None:
        """Add estimate points and messages to a message's work."""
        if not records:
            return
        # A device's hub is its registered one: a frame from another hub was rejected.
        work.lines.append(
            b"".join(
                estimate_line(registry.devices[record.device].hub, record) for record in records
            )
        )
        work.points += len(records)
        work.estimates.extend(
            (
                derived_topic(record.device),
                estimate_message(
                    registry.devices[record.device].hub,
                    registry.devices[record.device].patient,
                    record,
                ),
            )
            for record in records
        )

    def _store(
        self,
        message: Received,
        accepted: Accepted,
        registry: Registry,
        pending: PendingFrames,
    ) -> Work:
        item = accepted.message
        if isinstance(item, HubStatus):
            return Work(message, [status_lines(item)], 1, capture=(accepted.hub, None))
        if isinstance(item, Frame):
            assert accepted.encoding is not None
            if not self.accounting.frame(item.device, item.seq, item.t0_ns):
                log.info(kv("duplicate", device=item.device, seq=item.seq, t0_ns=item.t0_ns))
                return Work(message, [], 0)
            device = registry.devices[item.device]
            self._know(device)
            # Calibrated before anything else: stored samples and the DSP see physical units.
            item = calibrate(item, device.calibration)
            # Its lines are written with the batch's other frames (_estimate_frames).
            work = Work(message, [], item.n + 1)
            work.capture = (accepted.hub, accepted.encoding == "json")
            pending.unwritten.append((work, accepted.hub, item, accepted.encoding))
            work.device, work.samples, work.t_last_ns = item.device, item.n, item.t_last_ns
            work.raw_points = item.n
            unfed = unfed_part(item, self._fed_until.get(item.device))
            if unfed is None:
                # Delivered again after a restart: stored again (the same points), but the
                # estimator read it before (ingest/checkpoint.py).
                self.catchup.frames_not_fed += 1
                return work
            pending.frames.append(unfed)
            pending.works.append(work)
            return work
        self._know(registry.devices[item.device])
        work = Work(message, [event_lines(accepted.hub, item)], 1, capture=(accepted.hub, None))
        if self._tier is not None:
            self._tier.event(work, item)  # a step's window: held frames' raw lines come along
        if not event_unfed(item, self._fed_until.get(item.device)):
            self.catchup.events_not_fed += 1  # read before: stored again, not fed again
            return work
        self._attach(work, feed_event(self._estimator, item), registry)
        position = self._positions.setdefault(item.device, Position())
        position.event_ns = max(position.event_ns, item.t_ns)
        return work

    def _know(self, device: Device) -> None:
        """Give the estimator the registry's prescription when a device first shows."""
        if device.id not in self._estimated:
            register_device(self._estimator, device)
            self._estimated.add(device.id)

    def _reject(self, message: Received, rejected: Rejected) -> Work:
        rejection = self._rejections.reject(message, rejected)
        return Work(
            message,
            [rejection.lines],
            1,
            dead_letter=rejection.dead_letter,
            rejection=rejection.identity,
        )
