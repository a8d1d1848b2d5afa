"""Webhook delivery: runs in every instance. Each round claims due deliveries in a short
transaction (SKIP LOCKED, so instances take different ones), sends each in a task of its own
outside any transaction, and records its outcome in another short one. A slow or dead
endpoint only ever holds its own tasks (up to the timeout), never the others, and never the
booking path: bookings only write rows."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta

import httpx

from app import metrics
from app.models import utcnow
from app.resolvers.context import AppServices
from app.services import webhooks

logger = logging.getLogger(__name__)

USER_AGENT = "BookMyEvent-Webhooks/1"


class Deliverer:
    def __init__(self, services: AppServices) -> None:
        settings = services.settings
        self._services = services
        self._policy = webhooks.RetryPolicy(delays=settings.webhook_retry_delays,
                                            disable_after=timedelta(seconds=settings.webhook_disable_after_seconds))
        # Redirects are not followed: a public URL could redirect into the private network.
        self._client = httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False,
                                         headers={"user-agent": USER_AGENT})
        # Past the send's timeout: a claim outlives its attempt only when this process died.
        self._lease = timedelta(seconds=settings.webhook_timeout_seconds * 2 + 5)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def deliver_due(self) -> int:
        """Claim what is due (as many as there is room for) and start sending it."""
        room = self._services.settings.webhook_concurrency - len(self._in_flight)
        async with self._services.sessionmaker() as session:
            claimed = await webhooks.claim_due(session, now=utcnow(), lease=self._lease, limit=room)
            await session.commit()
        for attempt in claimed:
            task = asyncio.create_task(self._attempt(attempt), name=f"webhook-{attempt.delivery_id}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(claimed)

    async def _attempt(self, attempt: webhooks.Attempt) -> None:
        status, error = None, None
        allow_private = self._services.settings.webhook_allow_private_targets
        try:
            await webhooks.check_target(attempt.url, allow_private=allow_private)
            timestamp = int(utcnow().timestamp())
            response = await self._client.post(attempt.url, content=attempt.body.encode(), headers={
                "content-type": "application/json", "webhook-id": attempt.message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": webhooks.signature_header(attempt.secrets, attempt.message_id, timestamp,
                                                               attempt.body)})
            status = response.status_code
        except webhooks.TargetRefused as refused:
            error = str(refused)
        except httpx.HTTPError as failure:  # timeouts, refused connections, broken responses
            error = f"{type(failure).__name__}: {failure}"
        try:
            async with self._services.sessionmaker() as session:
                outcome = await webhooks.record_attempt(session, attempt, response_status=status, error=error,
                                                        policy=self._policy)
                await session.commit()
        except Exception:  # the lease runs out and the attempt is made again: at least once
            logger.exception("Recording webhook delivery %s failed", attempt.delivery_id)
            return
        metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()
        if outcome != "delivered":
            logger.info("Webhook delivery %s attempt %s: %s", attempt.delivery_id, attempt.attempt,
                        json.dumps({"status": status, "error": error}))

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self._client.aclose()


async def run_deliverer(services: AppServices) -> None:
    """Deliver every poll interval; a full claim means more are due: go again at once."""
    deliverer = Deliverer(services)
    interval = services.settings.webhook_poll_interval_seconds
    try:
        while True:
            try:
                full = await deliverer.deliver_due() >= services.settings.webhook_concurrency
            except Exception:  # a database blip must not end deliveries
                logger.exception("Claiming webhook deliveries failed; retrying in %s s", interval)
                full = False
            if not full:
                await asyncio.sleep(interval)
    finally:
        await deliverer.close()
