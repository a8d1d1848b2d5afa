"""Fast ways to make the things tests need, straight through the services and the database."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Event, Role, User, utcnow
from app.services import catalogue
from app.services.accounts import Identity, issue_access_token
from app.settings import Settings

_numbers = itertools.count(1)
# Users made here cannot log in: tests that log in register through the API.
UNUSABLE_HASH = "!"


async def make_users(sessionmaker: async_sessionmaker[AsyncSession], count: int,
                     role: str = Role.USER) -> list[User]:
    rows = [{"email": f"user{next(_numbers)}@example.com", "name": "Test User",
             "password_hash": UNUSABLE_HASH, "role": role, "created_at": utcnow()} for _ in range(count)]
    async with sessionmaker() as session:
        await session.execute(insert(User), rows)
        users = list((await session.scalars(
            select(User).where(User.email.in_([r["email"] for r in rows])).order_by(User.id))).all())
        await session.commit()
    return users


async def make_user(sessionmaker: async_sessionmaker[AsyncSession], role: str = Role.USER) -> User:
    return (await make_users(sessionmaker, 1, role))[0]


def token_for(user: User, settings: Settings) -> str:
    return issue_access_token(user, settings)


def identity_of(user: User) -> Identity:
    return Identity(user_id=user.id, role=user.role)


SMALL_SEAT_MAP = [
    catalogue.Section(name="Stalls", price_cents=5000,
                      rows=[catalogue.SeatRow(label="A", seats=10), catalogue.SeatRow(label="B", seats=10)]),
    catalogue.Section(name="Balcony", price_cents=3000, rows=[catalogue.SeatRow(label="C", seats=10)]),
]


async def make_event(sessionmaker: async_sessionmaker[AsyncSession], *, capacity: int | None = 100,
                     price_cents: int = 2500, seat_map: list[catalogue.Section] | None = None,
                     publish: bool = True, max_tickets_per_booking: int = 10,
                     max_tickets_per_user: int = catalogue.MAX_CAPACITY, **fields: Any) -> Event:
    """An event; its per-buyer cap is out of the way unless a test sets it."""
    async with sessionmaker() as session:
        venue = await catalogue.create_venue(session, name="Hall", address="1 Street", city="Lisbon",
                                             country="Portugal", capacity=100_000,
                                             timezone=fields.pop("timezone", "UTC"))
        starts_at = fields.pop("starts_at", utcnow() + timedelta(days=30))
        event = await catalogue.create_event(
            session, venue_id=venue.id, name=fields.pop("name", "Concert"),
            description=fields.pop("description", None), category=fields.pop("category", "concert"),
            starts_at=starts_at, ends_at=starts_at + timedelta(hours=3), currency="USD",
            max_tickets_per_booking=max_tickets_per_booking, max_tickets_per_user=max_tickets_per_user,
            capacity=None if seat_map else capacity, price_cents=None if seat_map else price_cents,
            seat_map=seat_map)
        if publish:
            event = await catalogue.publish_event(session, event_id=event.id)
        await session.commit()
    return event
