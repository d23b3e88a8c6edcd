"""Delivers the outbox: every queued message to its notifier, retried with backoff until sent.

The engine writes messages into the `outbox` table in the same transaction as the state change
that caused them, so a crash or a peer that is down loses nothing: a message leaves the outbox
only when its notifier returned. Failed attempts wait `retry_min_s * 2**attempts` (at most
`retry_max_s`) and are counted in `osteotel_alerts_notifications_total{outcome="failed"}`.
Messages of one channel go out in order: after a failure the rest of that channel waits.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from alerts.metrics import AlertMetrics
from alerts.notify import Notifier, NotifyError
from alerts.store import AlertStore, OutboxItem
from osteotel.logs import kv

__all__ = ["Dispatcher"]

_log = logging.getLogger("osteotel.alerts.outbox")
_NS = 1_000_000_000


class Dispatcher:
    """Sends due outbox messages through their notifiers."""

    def __init__(
        self,
        store: AlertStore,
        notifiers: Mapping[str, Notifier],
        *,
        retry_min_s: float,
        retry_max_s: float,
        metrics: AlertMetrics | None = None,
    ) -> None:
        """Args:
        store: the database holding the outbox.
        notifiers: channel name to notifier.
        retry_min_s: delay after the first failure, seconds.
        retry_max_s: the longest delay, seconds.
        metrics: counters to update, if any.
        """
        self._store = store
        self._notifiers = dict(notifiers)
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._metrics = metrics

    def backoff_s(self, attempts: int) -> float:
        """The wait after `attempts` failed attempts (1 or more), seconds."""
        return float(min(self._retry_max_s, self._retry_min_s * 2 ** max(attempts - 1, 0)))

    async def deliver_due(self, *, now_ns: int | None = None) -> int:
        """Try every due message once; returns how many were delivered.

        Args:
            now_ns: the time that decides what is due, UTC epoch ns; the clock when None.
        """
        now_ns = time.time_ns() if now_ns is None else now_ns
        items = await asyncio.to_thread(self._store.due, now_ns=now_ns)
        blocked: set[str] = set()
        sent = 0
        for item in items:
            if item.channel in blocked:
                continue
            error = await self._attempt(item)
            if error is not None:
                blocked.add(item.channel)
                wait_ns = round(self.backoff_s(item.attempts + 1) * _NS)
                await asyncio.to_thread(
                    self._store.failed, item.id, error=str(error), next_attempt_ns=now_ns + wait_ns
                )
                if self._metrics is not None:
                    self._metrics.notifications.labels(item.channel, "failed").inc()
                _log.warning(
                    kv(
                        "alert_delivery_failed",
                        channel=item.channel,
                        outbox_id=item.id,
                        attempts=item.attempts + 1,
                        retry_in_s=wait_ns / _NS,
                        error=error,
                    )
                )
                continue
            await asyncio.to_thread(self._store.delivered, item.id, now_ns=time.time_ns())
            if self._metrics is not None:
                self._metrics.notifications.labels(item.channel, "sent").inc()
            sent += 1
        return sent

    async def _attempt(self, item: OutboxItem) -> NotifyError | None:
        notifier = self._notifiers.get(item.channel)
        if notifier is None:
            return NotifyError(item.channel, "no notifier configured for this channel")
        try:
            await notifier.send(item.payload)
        except NotifyError as exc:
            return exc
        return None

    async def run(self, stop: asyncio.Event, *, interval_s: float) -> None:
        """Deliver due messages every `interval_s` seconds until `stop` is set."""
        while not stop.is_set():
            await self.deliver_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
