"""Ingest's writer: work from the queue in batches, each made durable, then acknowledged.

`IngestService` (ingest/service.py) turns received messages into `Work` and queues it; the
`Writer` takes what is queued into a batch (up to `batch_max_lines` points or
`batch_max_messages` messages, or what came within `batch_max_delay_s`), makes its dead
letters and capture lines durable, and writes its body to InfluxDB (or the spool), up to
`write_concurrency` batches at once. `acknowledge` then commits the batches strictly in the
order they were taken, each once durable: its counts, its estimates published, its messages
acknowledged to the broker in the order received (docs/ingest.md, "Writes in flight").
"""

import asyncio
import time
from collections.abc import Callable, Sequence

from devices.contract import Reason, Rejected
from osteotel.errors import StoreRejected
from osteotel.mqtt import MqttSource
from osteotel.settings import IngestSettings

from .accounting import Accounting
from .capture import Captures
from .checkpoint import Checkpointer
from .deadletter import DeadLetterWriter
from .metrics import IngestMetrics
from .rejection import Rejections
from .storage import Storage
from .work import Batch, Work

__all__ = ["Writer"]


class Writer:
    """Batches queued work, makes it durable and acknowledges it in the order received.

    Args:
        limits: ingest's settings (the batch limits, `write_concurrency`, the queue's size).
        storage: InfluxDB with the spool behind it.
        dead_letters: where rejected messages are kept, made durable before their batch.
        captures: the capture files, when `capture_dir` is set.
        rejections: what a store refusal is recorded with.
        accounting, metrics: counters and latency histograms.
        checkpointer: told of each batch committed.
    """

    def __init__(
        self,
        *,
        limits: IngestSettings,
        storage: Storage,
        dead_letters: DeadLetterWriter,
        captures: Captures | None,
        rejections: Rejections,
        accounting: Accounting,
        metrics: IngestMetrics,
        checkpointer: Checkpointer,
    ) -> None:
        self._limits = limits
        self._storage = storage
        self._dead_letters = dead_letters
        self._captures = captures
        self._rejections = rejections
        self.accounting = accounting
        self.metrics = metrics
        self._checkpointer = checkpointer
        self.queue: asyncio.Queue[Work] = asyncio.Queue(limits.queue_max_messages)
        # Messages received and not acknowledged yet: what holds the broker's window (the
        # service counts them in, the commit counts them out).
        self.unacked = 0
        # Batches written at once may each add dead letters: one appends and syncs at a time.
        self._letters_lock = asyncio.Lock()
        # Batches being written, in the order taken from the queue, each with its write; at
        # most `write_concurrency` of them.
        self._slots = asyncio.Semaphore(limits.write_concurrency)
        self._in_flight: asyncio.Queue[tuple[Batch, asyncio.Task[None]]] = asyncio.Queue()

    async def write(self, source: MqttSource) -> None:
        """Take batches from the queue and start their writes, up to `write_concurrency` at
        once; `acknowledge` acknowledges them in the order received, once durable."""
        limits = self._limits
        queue = self.queue
        pipeline = self.accounting.pipeline
        slots = self._slots
        while True:
            # A slot first, then the batch: with one slot, the next batch takes everything
            # that queued while the last one was written, as a single writer would.
            started_ns = time.monotonic_ns()
            await slots.acquire()
            pipeline["writer_slot_wait_ns"] += time.monotonic_ns() - started_ns
            batch = Batch()
            work = await queue.get()
            deadline = time.monotonic() + limits.batch_max_delay_s
            while True:
                batch.items.append(work)
                batch.lines += work.points
                if (
                    batch.lines >= limits.batch_max_lines
                    or len(batch.items) >= limits.batch_max_messages
                ):
                    break
                # What is already queued is taken without a timer: wait_for costs a task.
                try:
                    work = queue.get_nowait()
                    continue
                except asyncio.QueueEmpty:
                    pass
                timeout_s = deadline - time.monotonic()
                if timeout_s <= 0:
                    break
                try:
                    work = await asyncio.wait_for(queue.get(), timeout_s)
                except TimeoutError:
                    break
            body = await self._prepare(batch)
            write = asyncio.create_task(self._durable(body, batch), name="ingest.store")
            self._in_flight.put_nowait((batch, write))

    async def acknowledge(self, source: MqttSource) -> None:
        """Acknowledge batches in the order their writes started, each once it is durable: a
        later batch stored first waits for the earlier one."""
        in_flight = self._in_flight
        try:
            while True:
                batch, write = await in_flight.get()
                await write
                self._commit(batch, source)
                self._slots.release()
                for _ in batch.items:
                    self.queue.task_done()
        finally:
            # Stopped (after the drain, or by a failure): writes left unacknowledged are
            # delivered again by the broker.
            while not in_flight.empty():
                in_flight.get_nowait()[1].cancel()

    async def _prepare(self, batch: Batch) -> bytes:
        """Make the batch's dead letters and capture lines durable and return its body."""
        if self._captures is not None:
            self.accounting.stage_ns["capture"] += await asyncio.to_thread(
                _timed, self._captures.append, batch.items
            )
        letters = [work.dead_letter for work in batch.items if work.dead_letter is not None]
        if letters:
            async with self._letters_lock:
                for letter in letters:
                    self._dead_letters.append(letter)
                await asyncio.to_thread(self._dead_letters.flush)
        started = time.thread_time_ns()
        body = b"".join([part for work in batch.items for part in work.lines])
        self.accounting.stage_ns["join"] += time.thread_time_ns() - started
        return body

    async def _durable(self, body: bytes, batch: Batch) -> None:
        """Store a batch's body (or spool it), timing the write."""
        started_ns = time.monotonic_ns()
        if body:
            await self.store_or_spool(body, batch)
        pipeline = self.accounting.pipeline
        pipeline["writes"] += 1
        pipeline["write_ns"] += time.monotonic_ns() - started_ns
        pipeline["write_messages"] += len(batch.items)
        pipeline["write_lines"] += batch.lines

    def _commit(self, batch: Batch, source: MqttSource) -> None:
        """Account for a durable batch and acknowledge its messages in the order received."""
        started = time.thread_time_ns()
        now_ns = time.time_ns()
        accounting = self.accounting
        for work in batch.items:
            accounting.raw_points_written += work.raw_points
            accounting.raw_1s_points_written += work.summary_points
            accounting.raw_1s_samples_written += work.summarised
            if work.device is not None:
                self.accounting.last_stored_ns = now_ns
                counts = self.accounting.device(work.device)
                counts.stored += 1
                counts.samples_stored += work.samples
                receive_to_stored_s, sample_to_stored_s = self.metrics.latencies(work.device)
                receive_to_stored_s.observe((now_ns - work.message.received_ns) / 1e9)
                sample_to_stored_s.observe(max(0, now_ns - work.t_last_ns) / 1e9)
            for topic, payload in work.estimates:
                source.publish(topic, payload)
            source.ack(work.message)
            if work.rejection is not None:
                self._rejections.redeliveries.forget(work.rejection)
        self.unacked -= len(batch.items)
        self._checkpointer.committed(batch.items[-1].seq, source.confirmed)
        self.accounting.stage_ns["acknowledge"] += time.thread_time_ns() - started

    async def store_or_spool(self, body: bytes, batch: Batch) -> None:
        """Write to InfluxDB or the spool (ingest/storage.py); a refused batch is written message
        by message so that the one the server refuses does not cost its neighbours."""
        if not await self._storage.write_or_spool(body):
            await self._commit_one_by_one(batch)

    async def _commit_one_by_one(self, batch: Batch) -> None:
        """Find the message the server refuses so that it does not cost its neighbours."""
        for work in batch.items:
            if not work.lines:
                continue
            try:
                await self._storage.write_waiting(b"".join(work.lines))
            except StoreRejected as exc:
                refused = self._rejections.reject(
                    work.message, Rejected(Reason.STORE_REJECTED, str(exc))
                )
                if refused.dead_letter is not None:  # else refused before, and redelivered
                    async with self._letters_lock:
                        self._dead_letters.append(refused.dead_letter)
                        await asyncio.to_thread(self._dead_letters.flush)
                work.device = None
                work.raw_points = work.summary_points = work.summarised = 0
                work.rejection = refused.identity


def _timed(work: Callable[[Sequence[Work]], None], items: Sequence[Work]) -> int:
    """Run `work(items)` and return the CPU it took in this thread, ns."""
    started = time.thread_time_ns()
    work(items)
    return time.thread_time_ns() - started
