"""Where ingest's batches go: InfluxDB, or the spool while InfluxDB is away.

While InfluxDB is unavailable batches go to the spool (and are acknowledged: the spool is
fsync'd); the drain task asks InfluxDB `/ping` every `store_probe_interval_s` and, as soon as
it answers, replays the spool at full speed, after which batches are written directly again.
An outage counts once in `osteotel_ingest_store_outages_total` when a write first fails, and
once in `osteotel_ingest_store_recovery_seconds` when it is over (docs/ingest.md, "Outages").
"""

import asyncio
import logging
import time

from osteotel.errors import StoreRejected, StoreUnavailable
from osteotel.logs import kv
from osteotel.store.influx import InfluxStore

from .deadletter import DeadLetterWriter
from .metrics import IngestMetrics
from .spool import Spool, SpoolFull

__all__ = ["Storage"]

log = logging.getLogger("osteotel.ingest")


class Storage:
    """InfluxDB with the spool in front of it for outages.

    Args:
        store: the InfluxDB client; closed by `close`.
        spool: batches waiting for InfluxDB, oldest first.
        dead_letters: where a spooled batch InfluxDB refuses is kept for an operator.
        metrics: the outage counter and recovery histogram.
        probe_interval_s: how often InfluxDB is asked whether it is back, and a full spool
            whether it has room.
    """

    def __init__(
        self,
        *,
        store: InfluxStore,
        spool: Spool,
        dead_letters: DeadLetterWriter,
        metrics: IngestMetrics,
        probe_interval_s: float,
    ) -> None:
        self.store = store
        self.spool = spool
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._probe_interval_s = probe_interval_s
        self._spooled = asyncio.Event()
        self.spool_full = False
        # An outage, in monotonic seconds: when a write first failed, and when InfluxDB first
        # answered again; both None while the store is up and nothing is left to recover.
        self._lost_s: float | None = None
        self._answered_s: float | None = None

    async def write_or_spool(self, body: bytes) -> bool:
        """Write to InfluxDB, or, while it is unavailable or the spool still drains, spool.

        Returns:
            False when InfluxDB refused the body (HTTP 4xx): nothing was stored, and the caller
            finds the line it refuses.
        """
        if self.spool.batches == 0:
            try:
                await asyncio.to_thread(self.store.write, body)
            except StoreUnavailable as exc:
                self._lost(exc, action="spooling")
            except StoreRejected as exc:
                log.error(kv("batch_rejected", status=exc.status, detail=str(exc)))
                return False
            else:
                if self.spool.batches == 0:
                    # Else a batch written at the same time went to the spool: not over yet.
                    self._recovered()
                return True
        while True:
            try:
                await asyncio.to_thread(self.spool.append, body)
            except SpoolFull as exc:
                # Not acknowledged until there is room: the broker holds the messages meanwhile.
                self.spool_full = True
                log.error(kv("spool_full", detail=str(exc)))
                await asyncio.sleep(self._probe_interval_s)
            else:
                self.spool_full = False
                self._spooled.set()
                return True

    async def write_waiting(self, body: bytes) -> None:
        """Write to InfluxDB, waiting out an outage; raises StoreRejected if it refuses."""
        while True:
            try:
                await asyncio.to_thread(self.store.write, body)
            except StoreUnavailable as exc:
                self._lost(exc, action="probing")
                await self._wait_for_store()
            else:
                return

    async def drain(self) -> None:
        """Replay spooled batches, oldest first and back to back, whenever InfluxDB takes them."""
        while True:
            body = await asyncio.to_thread(self.spool.oldest)
            if body is None:
                self._spooled.clear()
                await self._spooled.wait()
                continue
            try:
                await asyncio.to_thread(self.store.write, body)
            except StoreUnavailable as exc:
                self._lost(exc, action="probing")
                await self._wait_for_store()
                continue
            except StoreRejected as exc:
                # Lines that were stored before cannot be refused now, short of a schema
                # change on the server: keep the batch for an operator, never drop it.
                kept = self._dead_letters.keep_refused_batch(body)
                log.error(kv("spooled_batch_rejected", kept=kept, detail=str(exc)))
            else:
                self._answered()
            await asyncio.to_thread(self.spool.pop_oldest)
            if self.spool.batches == 0:
                log.info(kv("spool_drained"))
                # The next batch goes directly to InfluxDB (`write_or_spool`).
                self._recovered()

    async def drained(self, deadline_s: float) -> None:
        """Return once the spool is empty, or at `deadline_s` (monotonic)."""
        # A poll, not an Event: the drain task (not the caller) lowers the count.
        while self.spool.batches and time.monotonic() < deadline_s:  # noqa: ASYNC110
            await asyncio.sleep(self._probe_interval_s)

    def close(self) -> None:
        """Release the store's connections (blocking)."""
        self.store.close()

    def _lost(self, exc: StoreUnavailable, *, action: str) -> None:
        """Note a failed write; the first one of an outage opens it."""
        log.warning(kv("store_unavailable", action=action, detail=str(exc)))
        if self._lost_s is None:
            self._lost_s = time.monotonic()
            self._answered_s = None
            self._metrics.store_outages.inc()

    def _answered(self) -> None:
        """InfluxDB answers again: from now on the recovery is ingest's own time."""
        if self._lost_s is not None and self._answered_s is None:
            self._answered_s = time.monotonic()
            log.info(kv("store_answered", outage_s=self._answered_s - self._lost_s))

    def _recovered(self) -> None:
        """The spool is drained, or a batch went directly to InfluxDB: an outage is over."""
        if self._lost_s is None:
            return
        self._answered()
        assert self._answered_s is not None
        recovery_s = time.monotonic() - self._answered_s
        self._metrics.store_recovery_s.observe(recovery_s)
        log.info(kv("store_recovered", recovery_s=recovery_s))
        self._lost_s = self._answered_s = None

    async def _wait_for_store(self) -> None:
        """Ask InfluxDB `/ping` every probe interval until it answers.

        The interval does not grow: a probe costs the server next to nothing, and each second
        the spool waits after InfluxDB is back is a second of data the boards do not show.
        """
        while True:
            await asyncio.sleep(self._probe_interval_s)
            try:
                await asyncio.to_thread(self.store.ping)
            except StoreUnavailable:
                continue
            except StoreRejected as exc:
                # It answers, if not to this: the write that follows tells what it refuses.
                log.warning(kv("store_probe_refused", status=exc.status, detail=str(exc)))
            self._answered()
            return
