"""Partner queries and mutations: API keys (admins) and webhooks (admins, or keys with
WEBHOOKS_MANAGE, each owning its own)."""

from __future__ import annotations

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import parse_id
from app.models import ApiScope as Scope
from app.resolvers.base import run_mutation
from app.schema.partners import ApiKey, ApiKeyInput, ApiKeyPayload, Webhook, WebhookInput, WebhookPayload
from app.services import apikeys, webhooks


@strawberry.type
class PartnerQuery:
    @strawberry.field(description="Admin only: every API key (never its secret).")
    async def api_keys(self, info: strawberry.Info) -> list[ApiKey]:
        info.context.require_admin()
        async with info.context.read_session() as session:
            return [ApiKey.from_model(key) for key in await apikeys.list_keys(session)]

    @strawberry.field(description="Admins see every webhook; a key with WEBHOOKS_MANAGE its own.")
    async def webhooks(self, info: strawberry.Info) -> list[Webhook]:
        caller = info.context.require_admin_or_scope(Scope.WEBHOOKS_MANAGE)
        async with info.context.read_session() as session:
            return [Webhook.from_model(endpoint) for endpoint in await webhooks.list_endpoints(session, caller=caller)]


@strawberry.type
class PartnerMutation:
    @strawberry.mutation(description="Admin only. The secret is in this answer and nowhere else, ever.")
    async def create_api_key(self, info: strawberry.Info, input: ApiKeyInput) -> ApiKeyPayload:
        async def work(session: AsyncSession) -> ApiKeyPayload:
            admin = info.context.require_admin()
            key, secret = await apikeys.create_key(
                session, name=input.name, scopes=[scope.value for scope in input.scopes], expires_at=input.expires_at,
                rate_limit_per_minute=input.rate_limit_per_minute,
                default_rate_limit=info.context.settings.api_key_rate_limit_per_minute, created_by=admin.user_id)
            return ApiKeyPayload(api_key=ApiKey.from_model(key), secret=secret)
        return await run_mutation(info, ApiKeyPayload, work)

    @strawberry.mutation(description="Admin only: a new secret for the key; the old one stops working now.")
    async def rotate_api_key(self, info: strawberry.Info, id: strawberry.ID) -> ApiKeyPayload:
        async def work(session: AsyncSession) -> ApiKeyPayload:
            info.context.require_admin()
            key, secret = await apikeys.rotate_key(session, key_id=parse_id(id, "id"))
            return ApiKeyPayload(api_key=ApiKey.from_model(key), secret=secret)
        return await run_mutation(info, ApiKeyPayload, work)

    @strawberry.mutation(description="Admin only: the key is refused from now on, on every instance.")
    async def revoke_api_key(self, info: strawberry.Info, id: strawberry.ID) -> ApiKeyPayload:
        async def work(session: AsyncSession) -> ApiKeyPayload:
            info.context.require_admin()
            key = await apikeys.revoke_key(session, key_id=parse_id(id, "id"))
            return ApiKeyPayload(api_key=ApiKey.from_model(key))
        return await run_mutation(info, ApiKeyPayload, work)

    @strawberry.mutation(description="Admins, or keys with WEBHOOKS_MANAGE. The signing secret is in this "
                                     "answer and nowhere else, ever.")
    async def create_webhook(self, info: strawberry.Info, input: WebhookInput) -> WebhookPayload:
        async def work(session: AsyncSession) -> WebhookPayload:
            caller = info.context.require_admin_or_scope(Scope.WEBHOOKS_MANAGE)
            endpoint, secret = await webhooks.create_endpoint(
                session, owner_id=caller.user_id, url=input.url, events=[event.value for event in input.events],
                description=input.description, allow_private=info.context.settings.webhook_allow_private_targets)
            return WebhookPayload(webhook=Webhook.from_model(endpoint), secret=secret)
        return await run_mutation(info, WebhookPayload, work)

    @strawberry.mutation
    async def delete_webhook(self, info: strawberry.Info, id: strawberry.ID) -> WebhookPayload:
        async def work(session: AsyncSession) -> WebhookPayload:
            caller = info.context.require_admin_or_scope(Scope.WEBHOOKS_MANAGE)
            endpoint = await webhooks.delete_endpoint(session, caller=caller, endpoint_id=parse_id(id, "id"))
            return WebhookPayload(webhook=Webhook.from_model(endpoint))
        return await run_mutation(info, WebhookPayload, work)

    @strawberry.mutation(description="A new signing secret, in this answer only. Until overlapSeconds (at most 7 "
                                     "days) from now deliveries carry the previous secret's signature too.")
    async def rotate_webhook_secret(self, info: strawberry.Info, id: strawberry.ID,
                                    overlap_seconds: int = 86400) -> WebhookPayload:
        async def work(session: AsyncSession) -> WebhookPayload:
            caller = info.context.require_admin_or_scope(Scope.WEBHOOKS_MANAGE)
            endpoint, secret = await webhooks.rotate_secret(session, caller=caller, endpoint_id=parse_id(id, "id"),
                                                            overlap_seconds=overlap_seconds)
            return WebhookPayload(webhook=Webhook.from_model(endpoint), secret=secret)
        return await run_mutation(info, WebhookPayload, work)

    @strawberry.mutation(description="Send one delivery again (same webhook-id and body).")
    async def resend_webhook_delivery(self, info: strawberry.Info, id: strawberry.ID) -> WebhookPayload:
        async def work(session: AsyncSession) -> WebhookPayload:
            caller = info.context.require_admin_or_scope(Scope.WEBHOOKS_MANAGE)
            endpoint = await webhooks.resend(session, caller=caller, delivery_id=parse_id(id, "id"))
            return WebhookPayload(webhook=Webhook.from_model(endpoint))
        return await run_mutation(info, WebhookPayload, work)
