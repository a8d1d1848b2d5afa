"""Check-in at the door: a signed code is verified, then the ticket's first scan is recorded
with one conditional UPDATE, so scans of one ticket racing at two gates have one winner.

The rule for the first scan, online and offline alike:
- A scan's time is its `scannedAt` (capped at the server's now), or the server's now when the
  scanner did not give one (a live scan).
- A live scan takes the record only while there is none (`checked_in_at IS NULL`): of any
  number of concurrent live scans exactly one is answered OK.
- A scan that carries `scannedAt` (made earlier, uploaded now: an offline scanner's queue)
  also takes the record from a later scan: the record is always the earliest scan the server
  knows, whatever the upload order, and the scan holding it was answered OK. Every other scan
  is answered ALREADY_CHECKED_IN with the record's time and gate.
- A scan with a `nonce` is answered once: the same nonce for the same ticket gets the first
  answer again (a scanner re-uploading after a network drop), never a second check-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, ErrorCode, invalid_input
from app.models import Booking, CheckInScan, Ticket, TicketStatus, utcnow
from app.services import outbox, tickets

MAX_GATE_LENGTH = 100
MAX_NONCE_LENGTH = 100


class CheckInResult:
    OK = "OK"
    ALREADY_CHECKED_IN = "ALREADY_CHECKED_IN"


@dataclass(frozen=True)
class CheckIn:
    ticket: Ticket
    result: str
    checked_in_at: datetime
    gate: str | None


@dataclass(frozen=True)
class Counts:
    event_id: int
    checked_in: int
    sold: int


def _revoked() -> DomainError:
    return DomainError(ErrorCode.TICKET_REVOKED, "This ticket was cancelled or refunded", field="code")


def _check_text(value: str | None, field: str, limit: int) -> None:
    if value is not None and (not value.strip() or len(value) > limit):
        raise invalid_input(field, f"{field} must be 1 to {limit} characters")


async def _claim_nonce(session: AsyncSession, ticket_id: int, nonce: str, now: datetime) -> CheckInScan | None:
    """Claim the nonce for this scan, or return the scan that claimed it first (a concurrent
    upload of the same scan waits on the unique index until the first commits)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    claimed = await session.scalar(
        dialect.insert(CheckInScan).values(ticket_id=ticket_id, nonce=nonce, created_at=now)
        .on_conflict_do_nothing(index_elements=["ticket_id", "nonce"]).returning(CheckInScan.id))
    if claimed is not None:
        return None
    earlier = await session.scalar(select(CheckInScan).where(CheckInScan.ticket_id == ticket_id,
                                                             CheckInScan.nonce == nonce))
    assert earlier is not None and earlier.result is not None  # answered in the claiming transaction
    return earlier


async def check_in(
    session: AsyncSession, *, code: str, event_id: int | None, gate: str | None, scanned_at: datetime | None,
    nonce: str | None, now: datetime | None = None,
) -> CheckIn:
    """Admit a ticket (see the module's rule). TICKET_INVALID for a forged or tampered code, one
    signed by a retired key, or one of another event than `event_id`; TICKET_REVOKED when VOID."""
    now = now or utcnow()
    _check_text(gate, "gate", MAX_GATE_LENGTH)
    _check_text(nonce, "nonce", MAX_NONCE_LENGTH)
    if tickets.looks_signed(code):
        await tickets.verify(session, code)  # a retired key's tickets stop here
    # Codes issued before codes were signed are random secrets: knowing one is the proof.
    found = (await session.execute(select(Ticket, Booking.event_id).join(Booking, Booking.id == Ticket.booking_id)
                                   .where(Ticket.code == code))).first()
    if found is None or (event_id is not None and found.event_id != event_id):
        raise DomainError(ErrorCode.TICKET_INVALID, tickets.INVALID, field="code")
    ticket, ticket_event_id = found
    if nonce is not None and (earlier := await _claim_nonce(session, ticket.id, nonce, now)) is not None:
        assert earlier.result is not None and earlier.checked_in_at is not None
        return CheckIn(ticket=ticket, result=earlier.result, checked_in_at=earlier.checked_in_at, gate=earlier.gate)
    if ticket.status == TicketStatus.VOID:
        raise _revoked()
    at = min(scanned_at, now) if scanned_at is not None else now
    first = Ticket.checked_in_at.is_(None)
    if scanned_at is not None:
        first = first | (Ticket.checked_in_at > at)
    taken = await session.scalar(
        update(Ticket).where(Ticket.id == ticket.id, Ticket.status != TicketStatus.VOID, first)
        .values(checked_in_at=at, checked_in_gate=gate, status=TicketStatus.CHECKED_IN)
        .returning(Ticket.id).execution_options(synchronize_session=False))
    await session.refresh(ticket)  # what the update (ours, or the winner's) left
    if taken is None and ticket.status == TicketStatus.VOID:
        raise _revoked()  # cancelled while we looked
    assert ticket.checked_in_at is not None
    answer = CheckIn(ticket=ticket, result=CheckInResult.OK if taken is not None else CheckInResult.ALREADY_CHECKED_IN,
                     checked_in_at=ticket.checked_in_at, gate=ticket.checked_in_gate)
    if nonce is not None:
        await session.execute(
            update(CheckInScan).where(CheckInScan.ticket_id == ticket.id, CheckInScan.nonce == nonce)
            .values(result=answer.result, checked_in_at=answer.checked_in_at, gate=answer.gate))
    if taken is not None:
        outbox.record(session, outbox.checkins_channel(ticket_event_id), {"eventId": ticket_event_id})
    return answer


async def counts(session: AsyncSession, *, event_id: int) -> Counts:
    """Tickets of the event checked in, and sold (not VOID)."""
    checked_in, sold = (await session.execute(
        select(func.coalesce(func.sum(case((Ticket.status == TicketStatus.CHECKED_IN, 1), else_=0)), 0),
               func.coalesce(func.sum(case((Ticket.status != TicketStatus.VOID, 1), else_=0)), 0))
        .join(Booking, Booking.id == Ticket.booking_id).where(Booking.event_id == event_id))).one()
    return Counts(event_id=event_id, checked_in=int(checked_in), sold=int(sold))


async def revoked_codes(session: AsyncSession, *, event_id: int, since: datetime | None) -> list[str]:
    """Codes of the event's VOID tickets (voided at or after `since`), oldest first: a scanner
    syncing with its last sync time as `since` learns each revocation."""
    query = (select(Ticket.code).join(Booking, Booking.id == Ticket.booking_id)
             .where(Booking.event_id == event_id, Ticket.status == TicketStatus.VOID))
    if since is not None:
        query = query.where(Ticket.voided_at >= since)
    return list((await session.scalars(query.order_by(Ticket.voided_at, Ticket.id))).all())
