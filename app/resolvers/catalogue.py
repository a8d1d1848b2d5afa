"""Catalogue queries (everyone) and mutations (admins)."""

from __future__ import annotations

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import id_or_none, parse_id
from app.models import ApiScope
from app.resolvers.base import run_mutation
from app.schema.catalogue import (
    Event,
    EventFilter,
    EventInput,
    EventPayload,
    EventSales,
    EventUpdateInput,
    Venue,
    VenueInput,
    VenuePayload,
)
from app.schema.common import Connection
from app.services import bookings, catalogue, queue, reports


@strawberry.type
class CatalogueQuery:
    @strawberry.field
    async def event(self, info: strawberry.Info, id: strawberry.ID) -> Event | None:
        info.context.check_scope(ApiScope.CATALOGUE_READ)
        event_id = id_or_none(id)
        if event_id is None:
            return None
        identity = info.context.identity
        async with info.context.read_session() as session:
            event = await catalogue.get_event(session, event_id,
                                              include_drafts=bool(identity and identity.is_admin))
        return Event.from_model(event) if event else None

    @strawberry.field(description="Events by start time. Drafts are listed to admins only.")
    async def events(self, info: strawberry.Info, filter: EventFilter | None = None,
                     first: int = 20, after: str | None = None) -> Connection[Event]:
        info.context.check_scope(ApiScope.CATALOGUE_READ)
        flt = filter or EventFilter()
        identity = info.context.identity
        async with info.context.read_session() as session:
            page = await catalogue.list_events(
                session,
                flt=catalogue.EventFilter(**vars(flt)),
                first=first, after=after, include_drafts=bool(identity and identity.is_admin))
        return Connection.of([(cursor, Event.from_model(event))
                              for cursor, event in zip(page.cursors, page.items, strict=True)],
                             total_count=page.total_count, has_next_page=page.has_next_page)

    @strawberry.field(description="Admin only: places sold, held and free, revenue, conversion.")
    async def event_sales(self, info: strawberry.Info, event_id: strawberry.ID) -> EventSales:
        info.context.require_admin()
        async with info.context.read_session() as session:
            sales = await reports.event_sales(session, event_id=parse_id(event_id, "eventId"))
        return EventSales(
            event_id=strawberry.ID(str(sales.event_id)), capacity=sales.capacity, places_sold=sales.places_sold,
            places_held=sales.places_held, places_free=sales.places_free, revenue=sales.revenue_cents,
            currency=sales.currency, holds_created=sales.holds_created, holds_confirmed=sales.holds_confirmed,
            conversion_rate=sales.conversion_rate, cancellations=sales.cancellations,
            expired_holds=sales.expired_holds, waitlist_length=sales.waitlist_length, checked_in=sales.checked_in)

    @strawberry.field
    async def venue(self, info: strawberry.Info, id: strawberry.ID) -> Venue | None:
        info.context.check_scope(ApiScope.CATALOGUE_READ)
        venue_id = id_or_none(id)
        if venue_id is None:
            return None
        venue = await info.context.loaders.venue.load(venue_id)
        return Venue.from_model(venue) if venue else None


@strawberry.type
class CatalogueMutation:
    @strawberry.mutation(description="Admin only.")
    async def create_venue(self, info: strawberry.Info, input: VenueInput) -> VenuePayload:
        async def work(session: AsyncSession) -> VenuePayload:
            info.context.require_admin()
            venue = await catalogue.create_venue(
                session, name=input.name, address=input.address, city=input.city,
                country=input.country, capacity=input.capacity, timezone=input.timezone)
            return VenuePayload(venue=Venue.from_model(venue))
        return await run_mutation(info, VenuePayload, work)

    @strawberry.mutation(description="Admin only. Creates a DRAFT: give capacity and priceCents, or seatMap.")
    async def create_event(self, info: strawberry.Info, input: EventInput) -> EventPayload:
        async def work(session: AsyncSession) -> EventPayload:
            info.context.require_admin()
            seat_map = None
            if input.seat_map is not None:
                seat_map = [catalogue.Section(name=s.name, price_cents=s.price_cents,
                                              rows=[catalogue.SeatRow(label=r.label, seats=r.seats)
                                                    for r in s.rows])
                            for s in input.seat_map.sections]
            event = await catalogue.create_event(
                session, venue_id=parse_id(input.venue_id, "venueId"), name=input.name,
                description=input.description, category=input.category, starts_at=input.starts_at,
                ends_at=input.ends_at, currency=input.currency,
                max_tickets_per_booking=input.max_tickets_per_booking,
                max_tickets_per_user=input.max_tickets_per_user, capacity=input.capacity,
                price_cents=input.price_cents, seat_map=seat_map, sales_start_at=input.sales_start_at)
            if input.waiting_room is not None:
                event = await queue.set_waiting_room(session, event_id=event.id, config=input.waiting_room.config())
            return EventPayload(event=Event.from_model(event))
        return await run_mutation(info, EventPayload, work)

    @strawberry.mutation(description="Admin only. expectedVersion: VERSION_CONFLICT if the event moved on.")
    async def update_event(self, info: strawberry.Info, id: strawberry.ID, input: EventUpdateInput,
                           expected_version: int | None = None) -> EventPayload:
        async def work(session: AsyncSession) -> EventPayload:
            info.context.require_admin()
            changes = {name: value for name, value in vars(input).items() if value is not strawberry.UNSET}
            event = await catalogue.update_event(session, event_id=parse_id(id, "id"),
                                                 expected_version=expected_version, changes=changes)
            return EventPayload(event=Event.from_model(event))
        return await run_mutation(info, EventPayload, work)

    @strawberry.mutation(description="Admin only. DRAFT -> ON_SALE (SCHEDULED until a future salesStartAt).")
    async def publish_event(self, info: strawberry.Info, id: strawberry.ID) -> EventPayload:
        async def work(session: AsyncSession) -> EventPayload:
            info.context.require_admin()
            return EventPayload(event=Event.from_model(
                await catalogue.publish_event(session, event_id=parse_id(id, "id"))))
        return await run_mutation(info, EventPayload, work)

    @strawberry.mutation(description="Admin only. Voids every hold and booking; paid ones are refunded.")
    async def cancel_event(self, info: strawberry.Info, id: strawberry.ID) -> EventPayload:
        async def work(session: AsyncSession) -> EventPayload:
            info.context.require_admin()
            return EventPayload(event=Event.from_model(await bookings.cancel_event(
                session, event_id=parse_id(id, "id"), gateway=info.context.services.gateway)))
        return await run_mutation(info, EventPayload, work)
