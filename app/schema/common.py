"""Types every domain shares: errors as data, pagination, the scalars for times and money."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Generic, NewType, TypeVar

import strawberry
from strawberry.exceptions import StrawberryInputCoercionError
from strawberry.schema.types.base_scalars import DateTimeDefinition

from app.errors import DomainError
from app.errors import ErrorCode as DomainErrorCode

ErrorCode = strawberry.enum(DomainErrorCode, name="ErrorCode")

# Times we accept: centuries inside what Python can represent, so that converting to UTC
# or adding any duration to a stored time can never overflow.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _refused(message: str) -> StrawberryInputCoercionError:
    return StrawberryInputCoercionError(message, extensions={"code": DomainErrorCode.INVALID_INPUT.value})


def parse_datetime(value: object) -> datetime:
    """ISO-8601 with a timezone (the contract's DateTime), as an aware UTC datetime."""
    parsed = DateTimeDefinition.parse_value(value)  # type: ignore[misc]
    assert isinstance(parsed, datetime)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _refused(f"DateTime {value!r} needs a timezone, e.g. 2030-05-01T20:00:00Z")
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        parsed = LATEST  # beyond what Python holds in UTC: refused below
    if not EARLIEST <= parsed < LATEST:
        raise _refused(f"DateTime {value!r} is outside {EARLIEST.year}..{LATEST.year - 1}")
    return parsed


# Replaces strawberry's DateTime (same name and wire format), stricter about what it takes.
DATETIME = strawberry.scalar(name="DateTime", description="Date with time (ISO-8601, with a timezone)",
                             serialize=datetime.isoformat, parse_value=parse_datetime)


def _serialize_bigint(value: int) -> str:
    return str(int(value))


MAX_INT = 2**31 - 1  # GraphQL's Int


# GraphQL's Int is 32-bit, and JavaScript numbers lose integers above 2^53: sums of money
# that can exceed 2^31 - 1 travel as a string of digits.
BigInt = NewType("BigInt", int)
BIG_INT = strawberry.scalar(name="BigInt", description="A signed 64-bit integer, sent as a string of digits",
                            serialize=_serialize_bigint)

# For the schema's StrawberryConfig(scalar_map=...).
SCALARS = {datetime: DATETIME, BigInt: BIG_INT}


@strawberry.type
class UserError:
    code: ErrorCode
    message: str
    field: str | None = None
    retry_after_seconds: int | None = None
    available_seats: int | None = None
    current_version: int | None = None

    @classmethod
    def from_domain(cls, error: DomainError) -> UserError:
        return cls(code=error.code, message=error.message, field=error.field,
                   retry_after_seconds=error.retry_after_seconds,
                   available_seats=error.available_seats, current_version=error.current_version)


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None
    # Pages run forward only (first/after): whatever came before `after` is a previous page.
    has_previous_page: bool = False
    start_cursor: str | None = None


Node = TypeVar("Node")


@strawberry.type
class Edge(Generic[Node]):
    """strawberry names it after its node: EventEdge, BookingEdge."""

    cursor: str
    node: Node


@strawberry.type
class Connection(Generic[Node]):
    """A Relay-style page of a growing list: EventConnection, BookingConnection."""

    edges: list[Edge[Node]]
    page_info: PageInfo
    total_count: int

    @classmethod
    def of(cls, nodes: list[tuple[str, Node]], *, total_count: int, has_next_page: bool,
           after: str | None = None) -> Connection[Node]:
        """A page from (cursor, node) pairs, the page after the cursor `after`."""
        edges = [Edge(cursor=cursor, node=node) for cursor, node in nodes]
        return cls(edges=edges, total_count=total_count, page_info=PageInfo(
            has_next_page=has_next_page, end_cursor=edges[-1].cursor if edges else None,
            has_previous_page=after is not None, start_cursor=edges[0].cursor if edges else None))
