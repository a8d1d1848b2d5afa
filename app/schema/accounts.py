"""Account types."""

from __future__ import annotations

from enum import StrEnum

import strawberry

from app import models
from app.schema.common import UserError


@strawberry.enum
class Role(StrEnum):
    USER = "USER"
    ADMIN = "ADMIN"
    STAFF = "STAFF"


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    name: str
    role: Role

    @classmethod
    def from_model(cls, user: models.User) -> User:
        return cls(id=strawberry.ID(str(user.id)), email=user.email, name=user.name, role=Role(user.role))


@strawberry.input
class RegisterInput:
    email: str
    password: str
    name: str


@strawberry.input
class LoginInput:
    email: str
    password: str


@strawberry.type
class AuthPayload:
    access_token: str | None = None
    refresh_token: str | None = None
    user: User | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class LogoutPayload:
    ok: bool = False
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class UserPayload:
    user: User | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)
