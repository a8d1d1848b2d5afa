"""Catalogue types: venues, events, seat maps and seats."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import strawberry
from graphql import GraphQLError

from app import models
from app.errors import parse_id
from app.models import utcnow
from app.schema.common import MAX_INT, BigInt, UserError
from app.schema.queue import WaitingRoom, WaitingRoomInput
from app.services import catalogue, inventory, queue


@strawberry.enum
class EventStatus(StrEnum):
    DRAFT = "DRAFT"
    SCHEDULED = "SCHEDULED"
    ON_SALE = "ON_SALE"
    SOLD_OUT = "SOLD_OUT"
    CANCELLED = "CANCELLED"


@strawberry.enum
class SeatStatus(StrEnum):
    AVAILABLE = "AVAILABLE"
    HELD = "HELD"
    BOOKED = "BOOKED"


@strawberry.type
class Venue:
    id: strawberry.ID
    name: str
    address: str
    city: str
    country: str
    capacity: int
    timezone: str = strawberry.field(description="IANA name; tickets show the event's time in it")

    @classmethod
    def from_model(cls, venue: models.Venue) -> Venue:
        return cls(id=strawberry.ID(str(venue.id)), name=venue.name, address=venue.address,
                   city=venue.city, country=venue.country, capacity=venue.capacity, timezone=venue.timezone)


@strawberry.type
class SeatRow:
    label: str
    seats: int


@strawberry.type
class Section:
    name: str
    price_cents: int
    rows: list[SeatRow]

    @classmethod
    def from_stored(cls, section: dict[str, Any]) -> Section:
        return cls(name=section["name"], price_cents=section["priceCents"],
                   rows=[SeatRow(label=r["label"], seats=r["seats"]) for r in section["rows"]])


@strawberry.type
class Seat:
    id: strawberry.ID
    section: str
    row: str
    number: int
    label: str
    status: SeatStatus
    price_cents: int

    @classmethod
    def from_model(cls, seat: models.Seat, status: str) -> Seat:
        return cls(id=strawberry.ID(str(seat.id)), section=seat.section, row=seat.row, number=seat.number,
                   label=seat.label, status=SeatStatus(status), price_cents=seat.price_cents)


@strawberry.type
class Event:
    id: strawberry.ID
    name: str
    description: str | None
    category: str
    starts_at: datetime
    ends_at: datetime
    capacity: int
    version: int
    price_cents: int
    currency: str
    max_tickets_per_booking: int
    max_tickets_per_user: int = strawberry.field(
        description="What one buyer may hold and have bought of this event at once, across bookings")
    sales_start_at: datetime | None = strawberry.field(
        description="When sales open: before it a published event is SCHEDULED")
    model: strawberry.Private[models.Event]

    @classmethod
    def from_model(cls, event: models.Event) -> Event:
        return cls(id=strawberry.ID(str(event.id)), name=event.name, description=event.description,
                   category=event.category, starts_at=event.starts_at, ends_at=event.ends_at,
                   capacity=event.capacity, version=event.version, price_cents=event.price_cents,
                   currency=event.currency, max_tickets_per_booking=event.max_tickets_per_booking,
                   max_tickets_per_user=event.max_tickets_per_user, sales_start_at=event.sales_start_at,
                   model=event)

    @strawberry.field(description="Set for high-demand sales: only admitted buyers may reserve.")
    async def waiting_room(self, info: strawberry.Info) -> WaitingRoom | None:
        if not self.model.waiting_room:
            return None
        async with info.context.read_session() as session:
            room = await queue.get_room(session, self.model.id)
            if room is None:
                return None
            waiting, admitted = await queue.room_counts(session, self.model.id)
        return WaitingRoom.from_model(room, waiting, admitted)

    @strawberry.field
    async def venue(self, info: strawberry.Info) -> Venue:
        return Venue.from_model(await info.context.loaders.venue.load(self.model.venue_id))

    @strawberry.field(description="Places a buyer can take right now: holds past their expiry count "
                                  "as free, except the places the waitlist is owed.")
    async def available_seats(self, info: strawberry.Info) -> int:
        model = self.model
        return await info.context.loaders.public_places.load(
            inventory.EventCounter(model.id, model.available, model.version, model.status))

    @strawberry.field
    async def status(self, info: strawberry.Info) -> EventStatus:
        return EventStatus(inventory.status_as_seen(self.model.status, await self.available_seats(info)))

    @strawberry.field(description="Sections of a reserved-seating event; null for general admission.")
    def seat_map(self) -> list[Section] | None:
        if self.model.seat_map is None:
            return None
        return [Section.from_stored(section) for section in self.model.seat_map]

    @strawberry.field(description="Seats of a reserved-seating event, in best-available order: at most "
                                  f"`first` (up to {catalogue.SEATS_PAGE_SIZE}) after the seat `after`. "
                                  "A page shorter than `first` is the last one.")
    async def seats(self, info: strawberry.Info, section: str | None = None,
                    first: int = catalogue.SEATS_PAGE_SIZE, after: strawberry.ID | None = None) -> list[Seat]:
        if self.model.seat_map is None:
            return []
        after_id = parse_id(after, "after") if after is not None else None
        async with info.context.read_session() as session:
            rows = await catalogue.seat_page(session, event_id=self.model.id, section=section, first=first,
                                             after=after_id, now=utcnow())
        return [Seat.from_model(seat, status) for seat, status in rows]


@strawberry.input
class EventFilter:
    search: str | None = None
    category: str | None = None
    city: str | None = None
    starts_after: datetime | None = None
    starts_before: datetime | None = None
    on_sale_only: bool = False


@strawberry.input
class VenueInput:
    name: str
    address: str
    city: str
    country: str
    capacity: int
    timezone: str = strawberry.field(default="UTC", description="IANA name, e.g. Europe/Lisbon")


@strawberry.input
class SeatRowInput:
    label: str
    seats: int


@strawberry.input
class SeatSectionInput:
    name: str
    price_cents: int
    rows: list[SeatRowInput]


@strawberry.input
class SeatMapInput:
    sections: list[SeatSectionInput]


@strawberry.input
class EventInput:
    venue_id: strawberry.ID
    name: str
    category: str
    starts_at: datetime
    ends_at: datetime
    description: str | None = None
    currency: str = "USD"
    max_tickets_per_booking: int = 10
    max_tickets_per_user: int | None = strawberry.field(
        default=None, description="Places one buyer may hold and have bought at once; default maxTicketsPerBooking")
    capacity: int | None = strawberry.field(default=None, description="General admission: places on sale")
    price_cents: int | None = strawberry.field(default=None, description="General admission: price of a place")
    seat_map: SeatMapInput | None = strawberry.field(default=None, description="Reserved seating")
    sales_start_at: datetime | None = strawberry.field(
        default=None, description="Published before this time, the event is SCHEDULED; then ON_SALE by itself")
    waiting_room: WaitingRoomInput | None = strawberry.field(
        default=None, description="Admit buyers from a queue at a rate (see setWaitingRoom)")


@strawberry.input
class EventUpdateInput:
    name: str | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    category: str | None = strawberry.UNSET
    starts_at: datetime | None = strawberry.UNSET
    ends_at: datetime | None = strawberry.UNSET
    max_tickets_per_booking: int | None = strawberry.UNSET
    max_tickets_per_user: int | None = strawberry.UNSET
    price_cents: int | None = strawberry.UNSET
    sales_start_at: datetime | None = strawberry.UNSET


@strawberry.type
class VenuePayload:
    venue: Venue | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class EventPayload:
    event: Event | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type(description="Admin reporting for one event.")
class EventSales:
    event_id: strawberry.ID
    capacity: int
    places_sold: int = strawberry.field(description="Places in CONFIRMED bookings")
    places_held: int = strawberry.field(description="Places in PENDING holds that have not lapsed")
    places_free: int
    revenue: BigInt = strawberry.field(
        description="Totals of CONFIRMED bookings (refunds excluded), in minor units: 64-bit safe")
    currency: str
    holds_created: int = strawberry.field(description="Every reservation ever made, waitlist offers included")
    holds_confirmed: int = strawberry.field(description="Reservations that were paid (even if cancelled since)")
    conversion_rate: float = strawberry.field(description="holdsConfirmed / holdsCreated")
    cancellations: int
    expired_holds: int
    waitlist_length: int = strawberry.field(description="Entries still WAITING")
    checked_in: int = strawberry.field(description="Tickets scanned in at the door")

    @strawberry.field(deprecation_reason="GraphQL Int is 32-bit: use revenue, which always fits")
    def revenue_cents(self) -> int:
        """`revenue` while it fits in an Int; past 2^31 - 1 a clear error instead of a masked fault."""
        if self.revenue > MAX_INT:
            raise GraphQLError("revenueCents is above what a GraphQL Int holds: read revenue instead",
                               extensions={"code": "INT_OVERFLOW"})
        return int(self.revenue)
