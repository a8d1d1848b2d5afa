"""Group commit for general admission.

An event's row serialises every transaction that changes it, so one hot event sells at most
one transaction per lock hold, whatever the hardware. Here the reserves of one event that
reach this process while its previous transaction runs wait for it to finish, then go
together in the next one (`bookings.reserve_general`: one UPDATE for all, one INSERT, an
answer each). Nobody waits for company: a reserve of a quiet event starts its transaction
at once, alone. Under load batches form by themselves, as large as the arrivals during one
transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.errors import DomainError
from app.models import Booking
from app.services import bookings, outbox

MAX_BATCH = 200  # buyers per transaction: bounds how long one holds the event row
KNOWN_EVENTS = 100_000  # event kinds remembered; forgetting one only costs a look


@dataclass
class _Waiting:
    request: bookings.HoldRequest
    answer: asyncio.Future[Booking | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ReserveBatcher:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, holds: bookings.HoldTimes,
                 publish: Callable[[list[outbox.Message]], Awaitable[None]]) -> None:
        self._sessionmaker = sessionmaker
        self._holds = holds
        self._publish = publish
        self._queues: dict[int, list[_Waiting]] = {}  # per event with a transaction running
        self._drains: set[asyncio.Task[None]] = set()
        self._general: set[int] = set()  # events known to have general admission
        self._seated: set[int] = set()

    async def reserve(self, event_id: int, request: bookings.HoldRequest) -> Booking | None:
        """The buyer's PENDING booking, or its DomainError raised; None for an event with
        reserved seating, which the caller reserves by itself (`bookings.reserve`)."""
        if event_id in self._seated:
            return None
        waiting = _Waiting(request)
        queue = self._queues.get(event_id)
        if queue is None:
            queue = self._queues[event_id] = []
            # A task of its own: a buyer who hangs up must not cancel the others' transaction.
            drain = asyncio.create_task(self._drain(event_id, queue), name=f"reserve-batches-{event_id}")
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        queue.append(waiting)
        return await waiting.answer

    async def _drain(self, event_id: int, queue: list[_Waiting]) -> None:
        try:
            while queue:
                batch = queue[:MAX_BATCH]
                del queue[:MAX_BATCH]
                await self._serve(event_id, batch)
        finally:
            del self._queues[event_id]  # no await since the last look: nobody joined meanwhile
            for waiting in queue:  # only when cancelled (shutdown)
                waiting.answer.cancel()

    async def _serve(self, event_id: int, batch: list[_Waiting]) -> None:
        metrics.RESERVE_BATCH_SIZE.observe(len(batch))
        try:
            async with self._sessionmaker() as session:
                answers = await bookings.reserve_general(
                    session, event_id=event_id, requests=[waiting.request for waiting in batch],
                    holds=self._holds, known_general=event_id in self._general)
                await session.commit()
        except IntegrityError as error:
            if len(batch) > 1:
                # One buyer's rows could not be written (its account was deleted, say): the
                # others must not fail with it. Each goes again alone.
                for waiting in batch:
                    await self._serve(event_id, [waiting])
                return
            batch[0].answer.set_exception(error)
            return
        except Exception as error:
            # The transaction failed as a whole: nothing of it stands, and every buyer in it is
            # told so (as their own request's failure would have).
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(error)
            return
        except BaseException:  # cancelled (shutdown): rolled back, nobody gets an answer
            for waiting in batch:
                waiting.answer.cancel()
            raise
        if answers is None:
            self._remember(self._seated, event_id)
            for waiting in batch:
                waiting.answer.set_result(None)
            return
        self._remember(self._general, event_id)
        for waiting, answer in zip(batch, answers, strict=True):
            if waiting.answer.done():
                continue
            if isinstance(answer, DomainError):
                waiting.answer.set_exception(answer)
            else:
                waiting.answer.set_result(answer)
        await self._publish(outbox.take(session))

    @staticmethod
    def _remember(known: set[int], event_id: int) -> None:
        if len(known) >= KNOWN_EVENTS:
            known.clear()
        known.add(event_id)

    async def close(self) -> None:
        for drain in list(self._drains):
            drain.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
