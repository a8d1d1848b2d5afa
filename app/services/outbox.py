"""The outbox of a unit of work: what changed, to be published only after the commit.

Services record messages on the session; whoever owns the transaction publishes them
once it has committed and drops them on rollback (`app/resolvers/base.py`, the sweeper).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

Message = tuple[str, dict[str, Any]]


def availability_channel(event_id: int) -> str:
    return f"event:{event_id}:availability"


def bookings_channel(user_id: int) -> str:
    return f"user:{user_id}:bookings"


def record(session: AsyncSession, channel: str, message: dict[str, Any]) -> None:
    session.info.setdefault("outbox", []).append((channel, message))


def take(session: AsyncSession) -> list[Message]:
    """Remove and return the recorded messages (call after commit; discard on rollback)."""
    return session.info.pop("outbox", [])


def checkins_channel(event_id: int) -> str:
    return f"event:{event_id}:checkins"
