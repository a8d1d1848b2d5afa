"""SQLAlchemy models: the tables. Import from here so every table is registered."""

from app.models.accounts import RefreshToken, Role, User
from app.models.base import Base, utcnow
from app.models.bookings import (
    Booking,
    BookingStatus,
    IdempotencyKey,
    Payment,
    PaymentKind,
    PaymentStatus,
    Ticket,
    TicketStatus,
)
from app.models.catalogue import Event, EventStatus, Seat, SeatStatus, Venue
from app.models.checkin import CheckInScan, TicketKey, TicketKeyStatus
from app.models.partners import ApiKey, ApiScope, DeliveryStatus, WebhookDelivery, WebhookEndpoint
from app.models.queue import QueueStatus, QueueTicket, WaitingRoom
from app.models.waitlist import WaitlistEntry, WaitlistStatus

__all__ = [
    "ApiKey", "ApiScope", "Base", "Booking", "BookingStatus", "CheckInScan", "DeliveryStatus", "Event", "EventStatus",
    "IdempotencyKey", "Payment", "PaymentKind", "PaymentStatus", "QueueStatus", "QueueTicket", "RefreshToken",
    "Role", "Seat", "SeatStatus", "Ticket", "TicketKey", "TicketKeyStatus", "TicketStatus", "User", "Venue",
    "WaitingRoom", "WaitlistEntry", "WaitlistStatus", "WebhookDelivery", "WebhookEndpoint", "utcnow",
]
