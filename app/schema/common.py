"""Types every domain shares: errors as data, pagination."""

from __future__ import annotations

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
