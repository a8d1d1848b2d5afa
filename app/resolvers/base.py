"""The one place where a mutation's unit of work is run and its errors mapped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import strawberry
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.errors import DomainError, ErrorCode
from app.models import User
from app.resolvers.context import Context
from app.schema.common import UserError
from app.services import outbox
from app.services.ratelimit import Limit, enforce

Payload = TypeVar("Payload")


async def run_mutation(
    info: strawberry.Info[Context, Any],
    payload_type: Callable[..., Payload],
    work: Callable[[AsyncSession], Awaitable[Payload]],
    *,
    limits: Sequence[Limit] = (),
    general_limit: bool = True,
) -> Payload:
    """Run `work` in one transaction, once the caller is within the general mutation limit
    (unless `general_limit` is off: a mutation with a budget of its own in `limits`) and
    `limits`, all counted in one round trip. On success commit, then publish what it recorded.
    A `DomainError` becomes the payload's `errors` (rolled back unless it asks to keep its
    changes); anything else rolls back and surfaces as a masked server error."""
    services = info.context.services
    async with services.sessionmaker() as session:
        try:
            general = [(f"mutation:{info.context.caller_key}", services.settings.mutation_rate_limit_per_minute)]
            await enforce(services.limiter, [*(general if general_limit else []), *limits])
            payload = await work(session)
            await session.commit()
        except DomainError as error:
            metrics.OPERATIONS.labels(info.field_name, error.code.value).inc()
            if error.keep_changes:
                await session.commit()
                await services.broker.publish_all(outbox.take(session))
            else:
                await session.rollback()
            return payload_type(errors=[UserError.from_domain(error)])
        except IntegrityError:
            await session.rollback()
            # A valid token of a deleted account: its rows cannot reference the user. Asked only
            # after such a failure, so the hot path pays no look-up for this rare case.
            identity = info.context.identity
            if identity is None or await session.get(User, identity.user_id) is not None:
                raise
            metrics.OPERATIONS.labels(info.field_name, ErrorCode.UNAUTHENTICATED.value).inc()
            return payload_type(errors=[UserError.from_domain(DomainError(
                ErrorCode.UNAUTHENTICATED, "This account no longer exists: sign in again"))])
    metrics.OPERATIONS.labels(info.field_name, "ok").inc()
    await services.broker.publish_all(outbox.take(session))
    return payload
