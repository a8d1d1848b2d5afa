"""Demo data for the embedded mode: two venues, general-admission events and one seated event."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Event, utcnow
from app.services import catalogue


async def seed_demo(session: AsyncSession) -> bool:
    """Create the demo catalogue, on sale, unless there are events already. True if it did."""
    if await session.scalar(select(func.count()).select_from(Event)):
        return False
    soon = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=14)
    hall = await catalogue.create_venue(session, name="Riverside Hall", address="1 Quay Street",
                                        city="Lisbon", country="Portugal", capacity=1200)
    club = await catalogue.create_venue(session, name="The Cellar", address="22 Market Lane",
                                        city="Porto", country="Portugal", capacity=300)
    events = [
        await catalogue.create_event(
            session, venue_id=hall.id, name="Midnight Orchestra Live",
            description="A night of film scores under the stars.", category="concert",
            starts_at=soon, ends_at=soon + timedelta(hours=3), currency="EUR",
            max_tickets_per_booking=10, capacity=None, price_cents=None,
            seat_map=[
                catalogue.Section(name="Stalls", price_cents=6500,
                                  rows=[catalogue.SeatRow(label=label, seats=12) for label in "ABCDEF"]),
                catalogue.Section(name="Balcony", price_cents=4000,
                                  rows=[catalogue.SeatRow(label=label, seats=10) for label in "GH"]),
            ]),
        await catalogue.create_event(
            session, venue_id=club.id, name="Indie Rooftop Sessions",
            description="Three bands, one rooftop, general admission.", category="concert",
            starts_at=soon + timedelta(days=2), ends_at=soon + timedelta(days=2, hours=4),
            currency="EUR", max_tickets_per_booking=6, capacity=250, price_cents=2500, seat_map=None),
        await catalogue.create_event(
            session, venue_id=hall.id, name="Python Web Conference",
            description="Talks on async Python, GraphQL and databases.", category="conference",
            starts_at=soon + timedelta(days=7), ends_at=soon + timedelta(days=8),
            currency="EUR", max_tickets_per_booking=4, capacity=800, price_cents=19900, seat_map=None),
        await catalogue.create_event(
            session, venue_id=club.id, name="Stand-up Comedy Night",
            description="Late show, limited places.", category="comedy",
            starts_at=soon + timedelta(days=3), ends_at=soon + timedelta(days=3, hours=2),
            currency="EUR", max_tickets_per_booking=4, capacity=40, price_cents=1800, seat_map=None),
    ]
    for event in events:
        await catalogue.publish_event(session, event_id=event.id)
    return True
