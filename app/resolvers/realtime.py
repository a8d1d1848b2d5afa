"""Subscriptions: live availability per event, and a user's own booking changes."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from functools import partial
from typing import Any

import strawberry

from app import metrics
from app.errors import DomainError, ErrorCode, id_or_none
from app.fanout import direct_sender
from app.models import EventStatus, utcnow
from app.schema.bookings import Booking
from app.schema.realtime import AvailabilityUpdate, BookingUpdate
from app.services import outbox


def since_version(message: dict[str, Any]) -> int:
    # Instances of the previous release (during a rolling deploy) publish without it.
    return int(message.get("sinceVersion", message["version"] - 1))


def availability_span(message: dict[str, Any]) -> tuple[int, int]:
    """What versions an availability message covers, for the broker to keep them in order."""
    return since_version(message), message["version"]


def merge_availability(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """Fold two availability messages a reader has not read yet into one: the newer state,
    with every seat change of both (the later change of a seat wins)."""
    if newer["version"] < older["version"]:
        older, newer = newer, older
    seats = {change["seatId"]: change["status"] for change in older["changedSeats"]}
    seats.update((change["seatId"], change["status"]) for change in newer["changedSeats"])
    return {**newer, "sinceVersion": since_version(older),
            "changedSeats": [{"seatId": s, "status": st} for s, st in seats.items()]}


def merge_booking_updates(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """Keep the latest reason per booking."""
    merged = dict(older.get("batch") or {str(older["bookingId"]): older["reason"]})
    merged[str(newer["bookingId"])] = newer["reason"]
    return {"batch": merged}


async def _snapshot(info: strawberry.Info, event_id: int) -> AvailabilityUpdate:
    message = await info.context.services.availability.load(event_id)
    # A draft is not there for anyone but admins, as with `event(id)`.
    if message is None or (message["status"] == EventStatus.DRAFT and not _is_admin(info)):
        raise DomainError(ErrorCode.NOT_FOUND, "Event not found")
    return AvailabilityUpdate.from_message(message, message["version"], snapshot=True)


def _is_admin(info: strawberry.Info) -> bool:
    identity = info.context.identity
    return identity is not None and identity.is_admin and not identity.expired(utcnow())


@strawberry.type
class RealtimeSubscription:
    @strawberry.subscription(description="A snapshot at once, then every committed change in version order.")
    async def event_availability(self, info: strawberry.Info,
                                 event_id: strawberry.ID) -> AsyncGenerator[AvailabilityUpdate, None]:
        parsed = id_or_none(event_id)
        if parsed is None:
            raise DomainError(ErrorCode.NOT_FOUND, "Event not found")
        broker = info.context.services.broker
        sent = metrics.SUBSCRIPTION_MESSAGES.labels("eventAvailability")
        async with broker.subscribe(outbox.availability_channel(parsed), merge_availability,
                                    availability_span) as inbox:
            update = await _snapshot(info, parsed)
            inbox.start_from(update.version)
            sent.inc()
            yield update  # through strawberry: validation, limits and errors as for any operation
            # The same for every subscriber of the event: on graphql-transport-ws each update
            # is rendered once and sent by us (app/fanout.py); elsewhere it is yielded.
            direct = direct_sender()
            version = update.version
            while True:
                delivery = await inbox.next()
                if delivery is None:  # messages may have been lost: start again from the truth
                    update = await _snapshot(info, parsed)
                    inbox.start_from(update.version)
                elif delivery.message["version"] > version:
                    update = delivery.derive(AvailabilityUpdate, partial(
                        AvailabilityUpdate.from_message, delivery.message, since_version(delivery.message)))
                else:
                    continue  # already covered by the snapshot
                version = update.version
                sent.inc()
                if direct is None:
                    yield update
                else:
                    await direct.send(update, delivery)

    @strawberry.subscription(description="The signed-in user's bookings as they change.")
    async def my_booking_updates(self, info: strawberry.Info) -> AsyncGenerator[BookingUpdate, None]:
        identity = info.context.require_user()
        broker = info.context.services.broker
        async with broker.subscribe(outbox.bookings_channel(identity.user_id), merge_booking_updates) as inbox:
            while True:
                delivery = await inbox.next()
                if delivery is None:
                    continue  # nothing to resend: bookings are re-read with myBookings
                info.context.require_user()  # private updates end with the caller's token
                message = delivery.message
                batch = message.get("batch") or {str(message["bookingId"]): message["reason"]}
                info.context.renew_loaders()  # a websocket lives long: read each message fresh
                for booking_id, reason in batch.items():
                    booking = await info.context.loaders.booking.load(int(booking_id))
                    if booking is not None:
                        metrics.SUBSCRIPTION_MESSAGES.labels("myBookingUpdates").inc()
                        yield BookingUpdate(booking=Booking.from_model(booking), reason=reason)
