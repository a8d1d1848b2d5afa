"""Query.node: any Node again from its globalId, as the caller may see it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import strawberry

from app.errors import id_or_none
from app.resolvers.bookings import find_booking
from app.resolvers.catalogue import find_event, find_venue
from app.schema.catalogue import Seat
from app.schema.relay import Node, from_global_id


async def find_seat(info: strawberry.Info, id: str) -> Seat | None:
    """A seat of an event the caller may see (a draft's seats are the admins' too)."""
    seat_id = id_or_none(id)
    found = await info.context.loaders.seat.load(seat_id) if seat_id is not None else None
    if found is None or await find_event(info, str(found[0].event_id)) is None:
        return None
    return Seat.from_model(*found)


FINDERS: dict[str, Callable[[strawberry.Info, str], Awaitable[Node | None]]] = {
    "Event": find_event, "Venue": find_venue, "Booking": find_booking, "Seat": find_seat}


@strawberry.type
class RelayQuery:
    @strawberry.field(description="The object with this globalId, or null when there is none the caller may see.")
    async def node(self, info: strawberry.Info, id: strawberry.ID) -> Node | None:
        parsed = from_global_id(id)
        finder = FINDERS.get(parsed[0]) if parsed else None
        return await finder(info, parsed[1]) if finder and parsed else None
