"""Ticket codes: JWS compact serialisations (alg EdDSA, Ed25519) naming their key in `kid`,
with the ticket's and the event's ids in the payload. A scanner holding the published public
keys (`public_jwks`, served at /.well-known/ticket-keys) tells a real ticket from a forged
one without a network; the server also refuses codes whose key was retired.

Keys live in `ticket_keys`. The first signature creates one; `rotate_key` makes a new one
sign from then on while the old one keeps verifying; `retire_key` ends a key's tickets.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, ErrorCode, not_found
from app.models import TicketKey, TicketKeyStatus, utcnow

ALGORITHM = "EdDSA"
INVALID = "Not a valid ticket"


@dataclass(frozen=True)
class TicketClaims:
    ticket_id: int
    event_id: int
    kid: str


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _new_key_row(secret: str) -> dict[str, Any]:
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret.encode()) if secret else serialization.NoEncryption())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kid": secrets.token_hex(8), "private_key": pem.decode(), "public_key": _b64url(public),
            "status": TicketKeyStatus.ACTIVE, "created_at": utcnow()}


@lru_cache(maxsize=8)
def _private_key(pem: str, secret: str) -> Ed25519PrivateKey:
    """Decrypting is deliberately slow (a password KDF): once per key and process."""
    key = serialization.load_pem_private_key(pem.encode(), password=secret.encode() if secret else None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


async def _active_key(session: AsyncSession, secret: str) -> TicketKey:
    """The signing key, created on first use. Two first users at once meet on the unique
    index of the ACTIVE key: the second inserts nothing and reads the first's."""
    key = await session.scalar(select(TicketKey).where(TicketKey.status == TicketKeyStatus.ACTIVE))
    if key is not None:
        return key
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    await session.execute(dialect.insert(TicketKey).values(**_new_key_row(secret)).on_conflict_do_nothing())
    key = await session.scalar(select(TicketKey).where(TicketKey.status == TicketKeyStatus.ACTIVE))
    assert key is not None
    return key


async def sign(session: AsyncSession, *, ticket_id: int, event_id: int, secret: str) -> str:
    key = await _active_key(session, secret)
    return jwt.encode({"tid": str(ticket_id), "eid": str(event_id)}, _private_key(key.private_key, secret),
                      algorithm=ALGORITHM, headers={"kid": key.kid})


def looks_signed(code: str) -> bool:
    return code.count(".") == 2


async def verify(session: AsyncSession, code: str) -> TicketClaims:
    """The claims of a code signed by a key that is not retired; TICKET_INVALID otherwise."""
    invalid = DomainError(ErrorCode.TICKET_INVALID, INVALID, field="code")
    try:
        kid = jwt.get_unverified_header(code).get("kid")
    except jwt.InvalidTokenError:
        raise invalid from None
    if not isinstance(kid, str):
        raise invalid
    key = await session.scalar(select(TicketKey).where(TicketKey.kid == kid))
    if key is None or key.status == TicketKeyStatus.RETIRED:
        raise invalid
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(key.public_key + "=="))
    try:
        claims = jwt.decode(code, public, algorithms=[ALGORITHM])
        return TicketClaims(ticket_id=int(claims["tid"]), event_id=int(claims["eid"]), kid=kid)
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
        raise invalid from None


async def public_jwks(session: AsyncSession, *, secret: str) -> dict[str, Any]:
    """The keys scanners verify with: the signing key (made now if there is none yet, so a
    scanner set up before the first sale has it) and rotated keys not yet retired."""
    await _active_key(session, secret)
    keys = await session.scalars(select(TicketKey).where(
        TicketKey.status.in_([TicketKeyStatus.ACTIVE, TicketKeyStatus.ROTATED])).order_by(TicketKey.id))
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": ALGORITHM, "use": "sig", "kid": key.kid,
                      "x": key.public_key} for key in keys]}


async def rotate_key(session: AsyncSession, *, secret: str) -> TicketKey:
    """A new signing key; the previous one keeps verifying the tickets it signed."""
    await session.execute(update(TicketKey).where(TicketKey.status == TicketKeyStatus.ACTIVE)
                          .values(status=TicketKeyStatus.ROTATED))
    key = TicketKey(**_new_key_row(secret))
    session.add(key)
    await session.flush()
    return key


async def retire_key(session: AsyncSession, *, kid: str, now: datetime | None = None) -> TicketKey:
    """Refuse every ticket this key signed from now on (a leaked key). The signing key
    cannot be retired: rotate first."""
    key = await session.scalar(select(TicketKey).where(TicketKey.kid == kid).with_for_update())
    if key is None:
        raise not_found("Ticket key")
    if key.status == TicketKeyStatus.ACTIVE:
        raise DomainError(ErrorCode.INVALID_STATE, "This key signs new tickets: rotate it first")
    key.status = TicketKeyStatus.RETIRED
    key.retired_at = now or utcnow()
    await session.flush()
    return key
