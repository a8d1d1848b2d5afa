"""Types every domain shares: errors as data, pagination."""

from __future__ import annotations

from typing import Generic, TypeVar

import strawberry

from app.errors import DomainError
from app.errors import ErrorCode as DomainErrorCode

ErrorCode = strawberry.enum(DomainErrorCode, name="ErrorCode")


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
    def of(cls, nodes: list[tuple[str, Node]], *, total_count: int, has_next_page: bool) -> Connection[Node]:
        """A page from (cursor, node) pairs."""
        edges = [Edge(cursor=cursor, node=node) for cursor, node in nodes]
        return cls(edges=edges, total_count=total_count, page_info=PageInfo(
            has_next_page=has_next_page, end_cursor=edges[-1].cursor if edges else None))
