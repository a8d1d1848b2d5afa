"""Accounts: registration, login, rotating refresh tokens, access tokens.

Passwords are hashed with argon2 (off the event loop: hashing is deliberately slow).
Access tokens are short-lived HS256 JWTs, decoded with the algorithm pinned. Refresh
tokens are random, stored as SHA-256 only, and rotate: each use retires the token and
issues the next one of the same family; presenting a retired token again means it was
stolen or replayed, so the whole family is revoked.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, ErrorCode, invalid_input
from app.models import RefreshToken, Role, User, utcnow
from app.settings import Settings

EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
# Every text the accounts domain takes is bounded before it is hashed or queried.
MAX_EMAIL_LENGTH = 254  # RFC 5321's limit for a path
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256  # argon2 pre-hashes the whole password: its cost grows with the length
MAX_NAME_LENGTH = 200
MAX_REFRESH_TOKEN_LENGTH = 128  # ours are 43 characters: a longer one is none of ours
BAD_CREDENTIALS = "Email or password is incorrect"
ROLES = (Role.USER, Role.ADMIN, Role.STAFF)


@dataclass(frozen=True)
class KeyGrant:
    """What a partner's API key allows (app/services/apikeys.py): its scopes and its own rate."""

    prefix: str
    scopes: frozenset[str]
    rate_limit_per_minute: int


@dataclass(frozen=True)
class Identity:
    """Who is calling, as proven by an access token or an API key (`key` set)."""

    user_id: int
    role: str
    expires_at: datetime | None = None  # the token's; a websocket outlives it (see Context)
    key: KeyGrant | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def can_check_in(self) -> bool:
        return self.role in (Role.ADMIN, Role.STAFF)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class Session:
    user: User
    access_token: str
    refresh_token: str


@lru_cache(maxsize=4)
def _hasher(time_cost: int, memory_cost: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost)


def _password_hasher(settings: Settings) -> PasswordHasher:
    return _hasher(settings.argon2_time_cost, settings.argon2_memory_cost)


def _check_length(field: str, value: str, maximum: int) -> None:
    if len(value) > maximum:
        raise invalid_input(field, f"Too long: at most {maximum} characters")


def _normalise_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH or not EMAIL_PATTERN.match(email):
        raise invalid_input("email", "Enter a valid email address")
    return email


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise invalid_input("password", f"Password must be at least {MIN_PASSWORD_LENGTH} characters")
    _check_length("password", password, MAX_PASSWORD_LENGTH)


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise invalid_input("name", "Name is required")
    if len(name) > MAX_NAME_LENGTH:
        raise invalid_input("name", f"Name must be at most {MAX_NAME_LENGTH} characters")
    return name


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_access_token(user: User, settings: Settings, *, now: datetime | None = None) -> str:
    now = now or utcnow()
    claims = {
        "sub": str(user.id),
        "role": user.role,
        "iat": now,
        "exp": now + timedelta(seconds=settings.access_token_ttl_seconds),
        "typ": "access",
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=settings.jwt_algorithm)


# Tokens already verified, so a client's every request does not pay the signature check and
# claim parsing again (a tenth of a reserve's CPU). Only tokens that verified get in; expiry
# is checked at each use. When full the oldest goes (a dict keeps insertion order): emptying
# it all at once would make every buyer of a big sale pay the check again at the same moment.
_verified: dict[tuple[str, str], Identity] = {}
VERIFIED_TOKENS_KEPT = 10_000


def decode_access_token(token: str, settings: Settings) -> Identity:
    """The identity an access token proves; UNAUTHENTICATED for anything forged or expired."""
    key = (token, settings.jwt_secret)
    identity = _verified.get(key)
    if identity is None:
        identity = _verify_access_token(token, settings)
        if len(_verified) >= VERIFIED_TOKENS_KEPT:
            del _verified[next(iter(_verified))]
        _verified[key] = identity
    elif identity.expired(utcnow()):
        raise DomainError(ErrorCode.UNAUTHENTICATED, "Sign in again: your session is not valid")
    return identity


def _verify_access_token(token: str, settings: Settings) -> Identity:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[settings.jwt_algorithm],  # pinned: "none" and key confusion refused
            options={"require": ["exp", "sub", "typ"]},
        )
        if claims["typ"] != "access" or claims.get("role") not in ROLES:
            raise jwt.InvalidTokenError("not an access token")
        return Identity(user_id=int(claims["sub"]), role=claims["role"],
                        expires_at=datetime.fromtimestamp(claims["exp"], UTC))
    except (jwt.InvalidTokenError, ValueError):
        raise DomainError(ErrorCode.UNAUTHENTICATED, "Sign in again: your session is not valid") from None


def identity_from_authorization(header: str | None, settings: Settings) -> Identity | None:
    """None for anonymous callers; raises UNAUTHENTICATED for a malformed or bad token."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise DomainError(ErrorCode.UNAUTHENTICATED, "Use an 'Authorization: Bearer <token>' header")
    return decode_access_token(token.strip(), settings)


async def _new_session(
    session: AsyncSession, user: User, settings: Settings, *, family_id: str | None = None
) -> Session:
    refresh_token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        RefreshToken(
            user_id=user.id,
            token_hash=_token_hash(refresh_token),
            family_id=family_id or secrets.token_hex(16),
            expires_at=now + timedelta(seconds=settings.refresh_token_ttl_seconds),
            created_at=now,
        )
    )
    await session.flush()
    return Session(user=user, access_token=issue_access_token(user, settings, now=now),
                   refresh_token=refresh_token)


async def create_user(
    session: AsyncSession, *, email: str, password: str, name: str, role: str, settings: Settings
) -> User:
    email = _normalise_email(email)
    _check_password(password)
    name = _check_name(name)
    password_hash = await asyncio.to_thread(_password_hasher(settings).hash, password)
    user = User(email=email, name=name, password_hash=password_hash, role=role, created_at=utcnow())
    try:
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError:
        raise DomainError(ErrorCode.EMAIL_TAKEN, "An account with this email already exists",
                          field="email") from None
    return user


async def register(
    session: AsyncSession, *, email: str, password: str, name: str, settings: Settings
) -> Session:
    """Create a USER account and sign it in. Admins only come from the CLI."""
    user = await create_user(session, email=email, password=password, name=name,
                             role=Role.USER, settings=settings)
    return await _new_session(session, user, settings)


async def login(session: AsyncSession, *, email: str, password: str, settings: Settings) -> Session:
    _check_length("email", email, MAX_EMAIL_LENGTH)
    _check_length("password", password, MAX_PASSWORD_LENGTH)
    hasher = _password_hasher(settings)
    user = await session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        # Spend the same time as a real check, so timing does not reveal which emails exist.
        await asyncio.to_thread(hasher.hash, password)
        raise DomainError(ErrorCode.INVALID_CREDENTIALS, BAD_CREDENTIALS)
    try:
        await asyncio.to_thread(hasher.verify, user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise DomainError(ErrorCode.INVALID_CREDENTIALS, BAD_CREDENTIALS) from None
    return await _new_session(session, user, settings)


async def _revoke_family(session: AsyncSession, family_id: str) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def refresh(session: AsyncSession, *, refresh_token: str, settings: Settings) -> Session:
    """Rotate a refresh token: the presented one dies, a new one of its family is issued."""
    message = "This session has ended: sign in again"
    invalid = DomainError(ErrorCode.INVALID_TOKEN, message)
    if len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
        raise invalid
    stored = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == _token_hash(refresh_token))
        .with_for_update()
    )
    if stored is None or stored.revoked_at is not None:
        raise invalid
    if stored.used_at is not None:
        # Reuse of a rotated token: someone else holds a copy. End every session of the family,
        # and keep that revocation although the call fails.
        await _revoke_family(session, stored.family_id)
        raise DomainError(ErrorCode.INVALID_TOKEN, message, keep_changes=True)
    if stored.expires_at <= utcnow():
        raise invalid
    stored.used_at = utcnow()
    user = await session.get(User, stored.user_id)
    if user is None:
        raise invalid
    return await _new_session(session, user, settings, family_id=stored.family_id)


async def logout(session: AsyncSession, *, refresh_token: str) -> None:
    """End the session family of this refresh token; unknown tokens are a no-op."""
    if len(refresh_token) > MAX_REFRESH_TOKEN_LENGTH:
        return
    stored = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == _token_hash(refresh_token))
    )
    if stored is not None:
        await _revoke_family(session, stored.family_id)


async def set_user_role(session: AsyncSession, *, user_id: int, role: str) -> User:
    """Make a registered user STAFF (or USER, or ADMIN). Access tokens already issued keep the
    role they were issued with until they expire; the next refresh carries the new one."""
    if role not in ROLES:
        raise invalid_input("role", f"role must be one of {', '.join(ROLES)}")
    user = await session.get(User, user_id, with_for_update=True)
    if user is None:
        raise DomainError(ErrorCode.NOT_FOUND, "User not found", field="userId")
    user.role = role
    await session.flush()
    return user
