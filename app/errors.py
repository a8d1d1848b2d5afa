"""Domain errors: the expected failures of every service, each carrying a contract error code.

Services raise them; the GraphQL layer maps them to `UserError` in one place
(`app/resolvers/base.py`). Nothing here knows about GraphQL or HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class ErrorCode(StrEnum):
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    INVALID_INPUT = "INVALID_INPUT"
    EMAIL_TAKEN = "EMAIL_TAKEN"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    INVALID_TOKEN = "INVALID_TOKEN"
    EVENT_NOT_ON_SALE = "EVENT_NOT_ON_SALE"
    SOLD_OUT = "SOLD_OUT"
    NOT_ENOUGH_SEATS = "NOT_ENOUGH_SEATS"
    SEATS_UNAVAILABLE = "SEATS_UNAVAILABLE"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    RESERVATION_EXPIRED = "RESERVATION_EXPIRED"
    INVALID_STATE = "INVALID_STATE"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    RATE_LIMITED = "RATE_LIMITED"
    WAITLIST_NOT_ALLOWED = "WAITLIST_NOT_ALLOWED"
    ALREADY_WAITLISTED = "ALREADY_WAITLISTED"
    QUEUE_REQUIRED = "QUEUE_REQUIRED"
    TICKET_INVALID = "TICKET_INVALID"
    TICKET_REVOKED = "TICKET_REVOKED"


class DomainError(Exception):
    """An expected failure, safe to show to the caller (its message is for end users)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        retry_after_seconds: int | None = None,
        available_seats: int | None = None,
        current_version: int | None = None,
        keep_changes: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_seconds = retry_after_seconds
        self.available_seats = available_seats
        self.current_version = current_version
        # Most failures roll the unit of work back; a few must keep what they did (revoking a
        # stolen refresh token family, say) and still report the failure.
        self.keep_changes = keep_changes


def invalid_input(field: str, message: str) -> DomainError:
    return DomainError(ErrorCode.INVALID_INPUT, message, field=field)


def chosen_from(field: str, given: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """A non-empty choice among `allowed` (scopes, event types, ...), each once, sorted."""
    if not given:
        raise invalid_input(field, f"Give at least one of the {what}")
    unknown = set(given) - set(allowed)
    if unknown:
        raise invalid_input(field, f"Unknown {what}: {', '.join(sorted(unknown))}")
    return sorted(set(given))


def not_found(what: str) -> DomainError:
    return DomainError(ErrorCode.NOT_FOUND, f"{what} not found")


def parse_id(value: str | int, field: str) -> int:
    """Our IDs are opaque strings holding a positive integer; anything else is bad input."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise invalid_input(field, "Not a valid ID") from None
    if number <= 0 or number >= 2**63:
        raise invalid_input(field, "Not a valid ID")
    return number


def id_or_none(value: str | int) -> int | None:
    """For look-ups: a malformed ID finds nothing, like a missing one."""
    try:
        return parse_id(value, "id")
    except DomainError:
        return None
