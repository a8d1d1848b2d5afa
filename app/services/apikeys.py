"""Partners' API keys: `bme_<prefix>_<secret>`, shown once, stored as a SHA-256 of the whole key.

A plain SHA-256 is enough here (passwords need argon2's slowness, keys do not): the secret is
256 random bits, so no guess list or brute force can find it from its hash, and a fast hash
lets every request be checked against PostgreSQL. The prefix (random, not secret) finds the
row; the hash is compared in constant time. Each key acts through a service account of its
own (role USER, no usable password) that owns what the key books, plus its scopes; a key is
never an admin. Keys are looked up per request, so a revocation holds on every instance from
its commit on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, ErrorCode, chosen_from, invalid_input, not_found
from app.models import ApiKey, ApiScope, Role, User, utcnow
from app.services.accounts import Identity, KeyGrant

KEY_PREFIX = "bme_"
MAX_NAME_LENGTH = 200
MAX_RATE_LIMIT = 100_000
# last_used_at is written at most this often: a busy key must not write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# A service account cannot sign in: "!" is no argon2 hash, so every login attempt is refused.
NO_PASSWORD = "!"


def is_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_secret() -> tuple[str, str]:
    """(prefix, whole key): the prefix is hex, so the first "_" after it ends it."""
    prefix = secrets.token_hex(6)
    return prefix, f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


async def create_key(session: AsyncSession, *, name: str, scopes: Sequence[str], expires_at: datetime | None,
                     rate_limit_per_minute: int | None, default_rate_limit: int, created_by: int,
                     now: datetime | None = None) -> tuple[ApiKey, str]:
    """A new key and its secret (the only time the secret exists outside the caller's hands)."""
    now = now or utcnow()
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise invalid_input("name", f"name must be 1 to {MAX_NAME_LENGTH} characters")
    checked = chosen_from("scopes", scopes, ApiScope.ALL, "scopes")
    if expires_at is not None and expires_at <= now:
        raise invalid_input("expiresAt", "expiresAt must be in the future")
    rate = default_rate_limit if rate_limit_per_minute is None else rate_limit_per_minute
    if not 1 <= rate <= MAX_RATE_LIMIT:
        raise invalid_input("rateLimitPerMinute", f"rateLimitPerMinute must be 1 to {MAX_RATE_LIMIT}")
    prefix, secret = _new_secret()
    account = User(email=f"apikey-{prefix}@partners.invalid", name=name, password_hash=NO_PASSWORD,
                   role=Role.USER, created_at=now)
    session.add(account)
    await session.flush()
    key = ApiKey(name=name, prefix=prefix, secret_hash=_hash(secret), scopes=checked, user_id=account.id,
                 created_by=created_by, rate_limit_per_minute=rate, created_at=now, expires_at=expires_at)
    session.add(key)
    await session.flush()
    return key, secret


async def _key_for_update(session: AsyncSession, key_id: int) -> ApiKey:
    key = await session.scalar(select(ApiKey).where(ApiKey.id == key_id).with_for_update())
    if key is None:
        raise not_found("API key")
    return key


async def rotate_key(session: AsyncSession, *, key_id: int) -> tuple[ApiKey, str]:
    """A new secret for the same key (same scopes, same account and bookings); the old secret
    stops working at once."""
    key = await _key_for_update(session, key_id)
    if key.revoked_at is not None:
        raise DomainError(ErrorCode.INVALID_STATE, "This key is revoked")
    key.prefix, secret = _new_secret()
    key.secret_hash = _hash(secret)
    await session.flush()
    return key, secret


async def revoke_key(session: AsyncSession, *, key_id: int, now: datetime | None = None) -> ApiKey:
    key = await _key_for_update(session, key_id)
    if key.revoked_at is None:
        key.revoked_at = now or utcnow()
        await session.flush()
    return key


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.scalars(select(ApiKey).order_by(ApiKey.id))).all())


async def authenticate(session: AsyncSession, token: str, now: datetime | None = None) -> Identity:
    """The identity a key proves; UNAUTHENTICATED for unknown, revoked or expired keys."""
    now = now or utcnow()
    refused = DomainError(ErrorCode.UNAUTHENTICATED, "This API key is not valid")
    prefix, separator, _ = token[len(KEY_PREFIX):].partition("_")
    if not separator:
        raise refused
    key = await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None or not hmac.compare_digest(key.secret_hash, _hash(token)):
        raise refused
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise refused
    if key.last_used_at is None or key.last_used_at <= now - LAST_USED_RESOLUTION:
        key.last_used_at = now  # the caller commits
    return Identity(user_id=key.user_id, role=Role.USER,
                    key=KeyGrant(prefix=key.prefix, scopes=frozenset(key.scopes),
                                 rate_limit_per_minute=key.rate_limit_per_minute))
