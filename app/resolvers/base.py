"""The one place where a mutation's unit of work is run and its errors mapped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import strawberry
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
    batched: Callable[[], Awaitable[Payload | None]] | None = None,
) -> Payload:
    """Run `work` in one transaction, once the caller is within the general mutation limit
    (unless `general_limit` is off: a mutation with a budget of its own in `limits`) and
    `limits`, all counted in one round trip. On success commit, then publish what it recorded.
    A `DomainError` becomes the payload's `errors` (rolled back unless it asks to keep its
    changes); anything else rolls back and surfaces as a masked server error.

    `batched`, when given, goes first: work done in a transaction shared with other requests
    (group commit, which commits and publishes by itself), or None where it does not apply.
    Only then is a session opened for `work`: a request served by the batch has no use for
    one (opening and committing an unused session was a tenth of a reserve's CPU)."""
    services = info.context.services
    session: AsyncSession | None = None
    try:
        general = [(f"mutation:{info.context.caller_key}", services.settings.mutation_rate_limit_per_minute)]
        await enforce(services.limiter, [*(general if general_limit else []), *limits])
        payload = await batched() if batched is not None else None
        if payload is None:
            session = services.sessionmaker()
            payload = await work(session)
            await session.commit()
    except DomainError as error:
        metrics.OPERATIONS.labels(info.field_name, error.code.value).inc()
        if session is not None and error.keep_changes:
            await session.commit()
            await services.broker.publish_all(outbox.take(session))
        return payload_type(errors=[UserError.from_domain(error)])
    except IntegrityError:
        # A valid token of a deleted account: its rows cannot reference the user. Asked only
        # after such a failure, so the hot path pays no look-up for this rare case.
        identity = info.context.identity
        if identity is None or not await _account_gone(services.sessionmaker, identity.user_id):
            raise
        metrics.OPERATIONS.labels(info.field_name, ErrorCode.UNAUTHENTICATED.value).inc()
        return payload_type(errors=[UserError.from_domain(DomainError(
            ErrorCode.UNAUTHENTICATED, "This account no longer exists: sign in again"))])
    finally:
        if session is not None:
            await session.close()  # rolls back whatever was not committed
    metrics.OPERATIONS.labels(info.field_name, "ok").inc()
    if session is not None:
        await services.broker.publish_all(outbox.take(session))
    return payload


async def _account_gone(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> bool:
    async with sessionmaker() as session:
        return await session.get(User, user_id) is None
