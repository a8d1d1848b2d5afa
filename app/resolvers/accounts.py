"""Account queries and mutations."""

from __future__ import annotations

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import parse_id
from app.resolvers.base import run_mutation
from app.schema.accounts import AuthPayload, LoginInput, LogoutPayload, RegisterInput, Role, User, UserPayload
from app.services import accounts


def _signed_in(session: accounts.Session) -> AuthPayload:
    return AuthPayload(access_token=session.access_token, refresh_token=session.refresh_token,
                       user=User.from_model(session.user))


@strawberry.type
class AccountQuery:
    @strawberry.field(description="The signed-in user; null when anonymous or the token is bad.")
    async def me(self, info: strawberry.Info) -> User | None:
        identity = info.context.identity
        if identity is None:
            return None
        user = await info.context.loaders.user.load(identity.user_id)
        return User.from_model(user) if user else None


@strawberry.type
class AccountMutation:
    @strawberry.mutation(description="Create a USER account and sign it in.")
    async def register(self, info: strawberry.Info, input: RegisterInput) -> AuthPayload:
        async def work(session: AsyncSession) -> AuthPayload:
            return _signed_in(await accounts.register(
                session, email=input.email, password=input.password, name=input.name,
                settings=info.context.settings))
        return await run_mutation(info, AuthPayload, work)

    @strawberry.mutation
    async def login(self, info: strawberry.Info, input: LoginInput) -> AuthPayload:
        settings, limiter, address = info.context.settings, info.context.services.limiter, info.context.client_ip
        email = input.email.strip().lower()
        # The address comes first: an email (the caller's choice) cannot make one key look like another.
        known_address = f"login:known:{address}:{email}"

        async def work(session: AsyncSession) -> AuthPayload:
            signed_in = await accounts.login(session, email=email, password=input.password, settings=settings)
            await limiter.remember(known_address, seconds=settings.refresh_token_ttl_seconds)
            return _signed_in(signed_in)
        # Against password guessing: per account from this address, per address across accounts,
        # and a ceiling per account from everywhere, which addresses the account has signed in
        # from (as long as a session lasts) are spared: strangers cannot lock the owner out.
        limits = [(f"login:pair:{address}:{email}", settings.login_rate_limit_per_minute),
                  (f"login:ip:{address}", settings.login_ip_rate_limit_per_minute)]
        if not await limiter.recalls(known_address):
            limits.append((f"login:email:{email}", settings.login_account_rate_limit_per_minute))
        return await run_mutation(info, AuthPayload, work, limits=limits)

    @strawberry.mutation(description="Rotate: the refresh token given dies, a new pair is issued.")
    async def refresh_token(self, info: strawberry.Info, refresh_token: str) -> AuthPayload:
        async def work(session: AsyncSession) -> AuthPayload:
            return _signed_in(await accounts.refresh(
                session, refresh_token=refresh_token, settings=info.context.settings))
        return await run_mutation(info, AuthPayload, work)

    @strawberry.mutation(description="End the session this refresh token belongs to.")
    async def logout(self, info: strawberry.Info, refresh_token: str) -> LogoutPayload:
        async def work(session: AsyncSession) -> LogoutPayload:
            await accounts.logout(session, refresh_token=refresh_token)
            return LogoutPayload(ok=True)
        return await run_mutation(info, LogoutPayload, work)

    @strawberry.mutation(description="Admin only: give a registered user a role (STAFF for the door).")
    async def set_user_role(self, info: strawberry.Info, user_id: strawberry.ID, role: Role) -> UserPayload:
        async def work(session: AsyncSession) -> UserPayload:
            info.context.require_admin()
            return UserPayload(user=User.from_model(await accounts.set_user_role(
                session, user_id=parse_id(user_id, "userId"), role=role.value)))
        return await run_mutation(info, UserPayload, work)
