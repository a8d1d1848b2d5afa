"""Catalogue: venues and events (general admission or reserved seating), and their search."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Select, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, ErrorCode, invalid_input, not_found, parse_id
from app.models import Event, EventStatus, Seat, SeatStatus, Venue, utcnow
from app.services import inventory, webhooks

MAX_SEATS = 100_000
# Seat maps are read whole (Event.seatMap), so their shape is bounded too.
MAX_SECTIONS = 100
MAX_ROWS_PER_SECTION = 50
MAX_CAPACITY = 1_000_000
MAX_TICKETS_PER_BOOKING = 100
# A booking's total (price x places) must fit the contract's 32-bit Int `totalCents`.
MAX_PRICE_CENTS = 21_000_000  # x MAX_TICKETS_PER_BOOKING <= 2**31 - 1
MAX_PAGE_SIZE = 100
# Event.seats pages: one is what a seat-map client reads per request, and the cost limit counts.
SEATS_PAGE_SIZE = 5000
CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")


# --- input checks -----------------------------------------------------------------------

def _text(field: str, value: str | None, *, max_length: int, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise invalid_input(field, f"{field} is required")
        return None
    value = value.strip()
    if required and not value:
        raise invalid_input(field, f"{field} is required")
    if len(value) > max_length:
        raise invalid_input(field, f"{field} must be at most {max_length} characters")
    return value


def _int_in(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise invalid_input(field, f"{field} must be between {low} and {high}")
    return value


def _aware(field: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise invalid_input(field, f"{field} must include a timezone")
    return value


def _check_times(starts_at: datetime, ends_at: datetime) -> None:
    _aware("startsAt", starts_at)
    _aware("endsAt", ends_at)
    if ends_at <= starts_at:
        raise invalid_input("endsAt", "endsAt must be after startsAt")


@dataclass(frozen=True)
class SeatRow:
    label: str
    seats: int


@dataclass(frozen=True)
class Section:
    name: str
    price_cents: int
    rows: list[SeatRow]


def _check_seat_map(sections: list[Section]) -> list[dict[str, Any]]:
    """Validate a seat map and return its stored form."""
    if not sections:
        raise invalid_input("seatMap", "A seat map needs at least one section")
    if len(sections) > MAX_SECTIONS:
        raise invalid_input("seatMap", f"A seat map may have at most {MAX_SECTIONS} sections")
    names: set[str] = set()
    total = 0
    stored = []
    for section in sections:
        name = _text("seatMap.name", section.name, max_length=100)
        assert name is not None
        if name in names:
            raise invalid_input("seatMap.name", f"Section {name!r} appears twice")
        names.add(name)
        _int_in("seatMap.priceCents", section.price_cents, 0, MAX_PRICE_CENTS)
        if not section.rows:
            raise invalid_input("seatMap.rows", f"Section {name!r} has no rows")
        if len(section.rows) > MAX_ROWS_PER_SECTION:
            raise invalid_input("seatMap.rows", f"A section may have at most {MAX_ROWS_PER_SECTION} rows")
        labels: set[str] = set()
        for row in section.rows:
            label = _text("seatMap.rows.label", row.label, max_length=20)
            if label in labels:
                raise invalid_input("seatMap.rows.label", f"Row {label!r} appears twice in {name!r}")
            labels.add(label)  # type: ignore[arg-type]
            _int_in("seatMap.rows.seats", row.seats, 1, MAX_SEATS)
            total += row.seats
            if total > MAX_SEATS:
                raise invalid_input("seatMap", f"A seat map may hold at most {MAX_SEATS} seats")
        stored.append({"name": name, "priceCents": section.price_cents,
                       "rows": [{"label": r.label.strip(), "seats": r.seats} for r in section.rows]})
    return stored


def seat_map_capacity(seat_map: list[dict[str, Any]]) -> int:
    return sum(row["seats"] for section in seat_map for row in section["rows"])


# --- venues -------------------------------------------------------------------------------

def _timezone(name: str) -> str:
    """An IANA zone this machine knows (tickets show times in it)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid_input("timezone", "timezone must be an IANA name, e.g. Europe/Lisbon") from None
    return name


async def create_venue(
    session: AsyncSession, *, name: str, address: str, city: str, country: str, capacity: int,
    timezone: str = "UTC",
) -> Venue:
    venue = Venue(
        name=_text("name", name, max_length=200),
        address=_text("address", address, max_length=500),
        city=_text("city", city, max_length=100),
        country=_text("country", country, max_length=100),
        capacity=_int_in("capacity", capacity, 1, MAX_CAPACITY),
        timezone=_timezone(timezone),
        created_at=utcnow(),
    )
    session.add(venue)
    await session.flush()
    return venue


# --- events -------------------------------------------------------------------------------

async def create_event(
    session: AsyncSession,
    *,
    venue_id: int,
    name: str,
    description: str | None,
    category: str,
    starts_at: datetime,
    ends_at: datetime,
    currency: str,
    max_tickets_per_booking: int,
    capacity: int | None,
    max_tickets_per_user: int | None = None,
    price_cents: int | None,
    seat_map: list[Section] | None,
    sales_start_at: datetime | None = None,
) -> Event:
    """A DRAFT event. General admission takes `capacity` and `price_cents`; reserved seating
    takes `seat_map`, which creates one seat row per seat, in best-available order."""
    _check_times(starts_at, ends_at)
    if not CURRENCY_PATTERN.match(currency):
        raise invalid_input("currency", "currency must be a three-letter ISO code such as USD")
    _int_in("maxTicketsPerBooking", max_tickets_per_booking, 1, MAX_TICKETS_PER_BOOKING)
    # Unless told otherwise, a buyer may have one full booking's worth of an event.
    if max_tickets_per_user is None:
        max_tickets_per_user = max_tickets_per_booking
    _int_in("maxTicketsPerUser", max_tickets_per_user, 1, MAX_CAPACITY)
    if (capacity is None) == (seat_map is None):
        raise invalid_input("capacity", "Give exactly one of capacity (general admission) or seatMap")
    if capacity is not None:
        _int_in("capacity", capacity, 1, MAX_CAPACITY)
        if price_cents is None:
            raise invalid_input("priceCents", "priceCents is required for general admission")
        _int_in("priceCents", price_cents, 0, MAX_PRICE_CENTS)
        stored_map = None
    else:
        if price_cents is not None:
            raise invalid_input("priceCents", "Seated events take their prices from seatMap")
        assert seat_map is not None
        stored_map = _check_seat_map(seat_map)
        capacity = seat_map_capacity(stored_map)
        price_cents = min(section["priceCents"] for section in stored_map)
    if await session.get(Venue, venue_id) is None:
        raise DomainError(ErrorCode.NOT_FOUND, "Venue not found", field="venueId")
    event = Event(
        venue_id=venue_id,
        name=_text("name", name, max_length=200),
        description=_text("description", description, max_length=5000, required=False),
        category=_text("category", category, max_length=50),
        starts_at=starts_at,
        ends_at=ends_at,
        currency=currency,
        max_tickets_per_booking=max_tickets_per_booking,
        max_tickets_per_user=max_tickets_per_user,
        capacity=capacity,
        available=capacity,
        price_cents=price_cents,
        seat_map=stored_map,
        sales_start_at=_aware("salesStartAt", sales_start_at) if sales_start_at else None,
        status=EventStatus.DRAFT,
        version=1,
        created_at=utcnow(),
    )
    session.add(event)
    await session.flush()
    if stored_map is not None:
        await session.execute(insert(Seat), [
            {"event_id": event.id, "section": section["name"], "row": row["label"], "number": n,
             "price_cents": section["priceCents"], "status": SeatStatus.AVAILABLE}
            for section in stored_map for row in section["rows"]
            for n in range(1, row["seats"] + 1)
        ])
    return event


async def _event_for_update(session: AsyncSession, event_id: int) -> Event:
    event = await session.scalar(
        select(Event).where(Event.id == event_id).with_for_update().execution_options(
            populate_existing=True)
    )
    if event is None:
        raise not_found("Event")
    return event


async def update_event(
    session: AsyncSession,
    *,
    event_id: int,
    expected_version: int | None,
    changes: dict[str, Any],
) -> Event:
    """Change an event's details. `changes` holds only the fields the caller set."""
    event = await _event_for_update(session, event_id)
    if expected_version is not None and expected_version != event.version:
        raise DomainError(ErrorCode.VERSION_CONFLICT, "The event changed since you read it",
                          current_version=event.version)
    if event.status == EventStatus.CANCELLED:
        raise DomainError(ErrorCode.INVALID_STATE, "A cancelled event cannot be changed")
    if "name" in changes:
        event.name = _text("name", changes["name"], max_length=200)  # type: ignore[assignment]
    if "description" in changes:
        event.description = _text("description", changes["description"], max_length=5000,
                                  required=False)
    if "category" in changes:
        event.category = _text("category", changes["category"], max_length=50)  # type: ignore[assignment]
    if "max_tickets_per_booking" in changes:
        event.max_tickets_per_booking = _int_in(
            "maxTicketsPerBooking", changes["max_tickets_per_booking"], 1, MAX_TICKETS_PER_BOOKING)
    if "max_tickets_per_user" in changes:
        event.max_tickets_per_user = _int_in(
            "maxTicketsPerUser", changes["max_tickets_per_user"], 1, MAX_CAPACITY)
    if "price_cents" in changes:
        if event.is_seated:
            raise invalid_input("priceCents", "Seated events take their prices from the seat map")
        event.price_cents = _int_in("priceCents", changes["price_cents"], 0, MAX_PRICE_CENTS)
    if "sales_start_at" in changes:
        _change_sales_start(event, changes["sales_start_at"], utcnow())
    starts_at = changes.get("starts_at", event.starts_at)
    ends_at = changes.get("ends_at", event.ends_at)
    _check_times(starts_at, ends_at)
    event.starts_at, event.ends_at = starts_at, ends_at
    event.version += 1
    await session.flush()
    inventory.record_availability(session, event)
    return event


def _change_sales_start(event: Event, sales_start_at: datetime | None, now: datetime) -> None:
    """A draft or scheduled event may move its sales start; once sales began, they stay open."""
    if sales_start_at is not None:
        _aware("salesStartAt", sales_start_at)
    if event.status not in (EventStatus.DRAFT, EventStatus.SCHEDULED):
        if sales_start_at is not None and sales_start_at > now:
            raise DomainError(ErrorCode.INVALID_STATE, "Sales have started: salesStartAt cannot move to the future",
                              field="salesStartAt")
    elif event.status == EventStatus.SCHEDULED:
        event.status = _published_status(sales_start_at, now)
    event.sales_start_at = sales_start_at


def _published_status(sales_start_at: datetime | None, now: datetime) -> str:
    return EventStatus.SCHEDULED if sales_start_at is not None and sales_start_at > now else EventStatus.ON_SALE


async def publish_event(session: AsyncSession, *, event_id: int, now: datetime | None = None) -> Event:
    """DRAFT -> ON_SALE, or SCHEDULED when its sales start later (`open_due_sales` opens them)."""
    event = await _event_for_update(session, event_id)
    if event.status != EventStatus.DRAFT:
        raise DomainError(ErrorCode.INVALID_STATE, f"Only a draft can be published (it is {event.status})")
    event.status = _published_status(event.sales_start_at, now or utcnow())
    event.version += 1
    await webhooks.enqueue(session, webhooks.WebhookEvent.EVENT_ON_SALE,
                           webhooks.event_data(event.id, event.status, event.available))
    await session.flush()
    inventory.record_availability(session, event)
    return event


async def open_due_sales(session: AsyncSession, *, now: datetime | None = None) -> list[int]:
    """SCHEDULED events whose sales start has come go ON_SALE. One conditional UPDATE: of any
    number of instances running this at once, exactly one opens each event."""
    opened = (await session.execute(
        update(Event)
        .where(Event.status == EventStatus.SCHEDULED, Event.sales_start_at <= (now or utcnow()))
        .values(status=EventStatus.ON_SALE, version=Event.version + 1)
        .returning(Event.id, Event.available, Event.version, Event.status)
        .execution_options(synchronize_session=False))).all()
    for state in opened:
        inventory.record_availability(session, state)
    return [state.id for state in opened]


async def get_event(session: AsyncSession, event_id: int, *, include_drafts: bool) -> Event | None:
    event = await session.get(Event, event_id)
    if event is None or (event.status == EventStatus.DRAFT and not include_drafts):
        return None
    return event


# --- search and pagination ---------------------------------------------------------------

@dataclass(frozen=True)
class EventFilter:
    search: str | None = None
    category: str | None = None
    city: str | None = None
    starts_after: datetime | None = None
    starts_before: datetime | None = None
    on_sale_only: bool = False


@dataclass(frozen=True)
class Page:
    items: list[Event]
    cursors: list[str]
    total_count: int
    has_next_page: bool


def _encode_cursor(event: Event) -> str:
    return base64.urlsafe_b64encode(f"{event.starts_at.isoformat()}|{event.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    """A cursor is the client's text: anything that is not exactly what _encode_cursor makes
    (an aware time that converts to UTC, a valid id) is refused, never handed to the database."""
    refused = invalid_input("after", "Not a cursor from this list")
    try:
        starts_at, _, event_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        when = datetime.fromisoformat(starts_at)
        if when.utcoffset() is None:
            raise refused
        return when.astimezone(UTC), parse_id(event_id, "after")
    except (ValueError, OverflowError, binascii.Error, UnicodeError, DomainError):
        raise refused from None


def _filtered(query: Select[Any], flt: EventFilter, *, include_drafts: bool, dialect: str) -> Select[Any]:
    if not include_drafts:
        query = query.where(Event.status != EventStatus.DRAFT)
    if flt.on_sale_only:
        query = query.where(Event.status == EventStatus.ON_SALE)
    if flt.category:
        query = query.where(func.lower(Event.category) == flt.category.strip().lower())
    if flt.city:
        query = query.where(func.lower(Venue.city) == flt.city.strip().lower())
    if flt.starts_after:
        query = query.where(Event.starts_at >= _aware("startsAfter", flt.starts_after))
    if flt.starts_before:
        query = query.where(Event.starts_at < _aware("startsBefore", flt.starts_before))
    if flt.search and flt.search.strip():
        text = _text("search", flt.search, max_length=200)
        assert text is not None
        like = f"%{text.lower()}%"
        venue_match = func.lower(Venue.name).like(like)
        if dialect == "postgresql":
            document = func.to_tsvector("simple", Event.name + " " + func.coalesce(Event.description, ""))
            query = query.where(or_(document.op("@@")(func.plainto_tsquery("simple", text)), venue_match))
        else:  # SQLite: a plain substring match stands in for full-text search
            query = query.where(or_(func.lower(Event.name).like(like),
                                    func.lower(func.coalesce(Event.description, "")).like(like),
                                    venue_match))
    return query


async def list_events(
    session: AsyncSession, *, flt: EventFilter, first: int, after: str | None, include_drafts: bool
) -> Page:
    """Events ordered by start time, as a cursor-paginated page."""
    _int_in("first", first, 0, MAX_PAGE_SIZE)
    dialect = session.get_bind().dialect.name
    base = select(Event).join(Venue, Venue.id == Event.venue_id)
    filtered = _filtered(base, flt, include_drafts=include_drafts, dialect=dialect)
    total = await session.scalar(select(func.count()).select_from(filtered.subquery()))
    page_query = filtered
    if after:
        starts_at, event_id = _decode_cursor(after)
        page_query = page_query.where(
            or_(Event.starts_at > starts_at, (Event.starts_at == starts_at) & (Event.id > event_id)))
    rows = list((await session.scalars(
        page_query.order_by(Event.starts_at, Event.id).limit(first + 1))).all())
    items = rows[:first]
    return Page(items=items, cursors=[_encode_cursor(e) for e in items],
                total_count=total or 0, has_next_page=len(rows) > first)


async def seat_page(session: AsyncSession, *, event_id: int, section: str | None, first: int,
                    after: int | None, now: datetime) -> list[tuple[Seat, str]]:
    """Up to `first` seats of an event in best-available order (seat id), after seat `after`,
    each with its status as buyers see it."""
    _int_in("first", first, 0, SEATS_PAGE_SIZE)
    query = select(Seat, inventory.effective_seat_status(now)).where(Seat.event_id == event_id)
    if section is not None:
        query = query.where(Seat.section == section)
    if after is not None:
        query = query.where(Seat.id > after)
    rows = await session.execute(query.order_by(Seat.id).limit(first))
    return [(seat, status) for seat, status in rows.all()]
